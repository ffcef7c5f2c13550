"""An API key a provider echoes back never reaches an error message, in any form (issue 21,
finding 6): a gateway that JSON-escapes `/` as `\\/` got a key past the old scrubber, and a
message cut at its length limit kept 16 of the key's 24 characters.

A leak here is any piece of the key of `MIN_PIECE` (8) characters or more, looked for in the
text after undoing every encoding the scrubber knows."""

from __future__ import annotations

import html
import json
from urllib.parse import quote, unquote

import pytest
from aiohttp import web

from llm_worker.adapters.errors import ProviderError
from llm_worker.adapters.scrub import MASK, MIN_PIECE, scrub, scrub_bytes
from llm_worker.adapters.secrets import Secret
from tests.unit.test_adapter_contract import PROFILES, Profile, serve

KEY = 'sk-proj/Ab+9xQz_7Lm2-Ke4W&v8R"tY3h'


def _json_inner(text: str) -> str:
    return json.dumps(text)[1:-1]


def _unicode_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _entities(text: str) -> str:
    return "".join(f"&#{ord(c)};" if i % 2 else f"&#x{ord(c):X};" for i, c in enumerate(text))


def _plain(text: str) -> str:
    """`text` with every encoding undone (JSON escapes, %XX, HTML entities)."""
    out = text
    for _ in range(2):
        try:
            out = json.loads(f'"{out}"')
        except json.JSONDecodeError:
            out = out.replace("\\/", "/")
        out = html.unescape(unquote(out))
    return out


def _leaked(text: str, key: str = KEY) -> list[str]:
    plain = _plain(text)
    return [
        key[i : i + MIN_PIECE]
        for i in range(len(key) - MIN_PIECE + 1)
        if key[i : i + MIN_PIECE] in plain or key[i : i + MIN_PIECE] in text
    ]


ECHOES = {
    "verbatim": f"Incorrect API key provided: {KEY}.",
    "json-escaped slash": "key " + KEY.replace("/", "\\/") + " rejected",
    "json string": f'{{"error": "bad key {_json_inner(KEY)}"}}',
    "all \\u escapes": f"key={_unicode_escaped(KEY)}",
    "upper-case \\u": f"key={_unicode_escaped(KEY).upper().replace(chr(92) + 'U', chr(92) + 'u')}",
    "mixed escapes": "k="
    + "".join(
        _unicode_escaped(c) if i % 3 == 0 else _json_inner(c).replace("/", "\\/")
        for i, c in enumerate(KEY)
    ),
    "url-encoded": f"https://gw.example/auth?key={quote(KEY, safe='')}&x=1",
    "url-encoded lower-case": f"key={quote(KEY, safe='').lower()}",
    "url-encoded partly": f"key={KEY.replace('/', '%2F').replace('+', '%2b')}",
    "html entities": f"<p>key {_entities(KEY)}</p>",
    "html named": f"<p>key {html.escape(KEY)}</p>",
    "twice": f"{KEY} and again {KEY.replace('/', '%2F')}",
    "prefix at a cut": "x" * 150 + " key=" + KEY[:16],
    "escaped prefix at a cut": "x" * 150 + " key=" + KEY[:16].replace("/", "\\/"),
    "suffix after a cut": KEY[-12:] + " was rejected",
    "middle piece": "..." + KEY[5:20] + "...",
    "json-escaped prefix in a cut JSON body": '{"error":{"message":"key ' + _json_inner(KEY)[:20],
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_scrub_takes_out_every_form_and_every_piece(echo: str) -> None:
    assert _leaked(echo), "the table's echo must hold the key"
    out = scrub(echo, KEY)
    assert _leaked(out) == [], out
    assert MASK in out


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_no_cut_after_scrubbing_brings_a_piece_back(echo: str) -> None:
    out = scrub(echo, KEY)
    for cut in range(len(out) + 1):
        assert _leaked(out[:cut]) == []


def test_text_around_the_key_is_kept() -> None:
    assert scrub(f"bad key {KEY}, see docs", KEY) == "bad key ***, see docs"
    assert scrub("key sk-proj\\/Ab+9 x", KEY) == "key *** x"  # a 9-character piece, escaped
    assert scrub("nothing to see, 100% fine & well", KEY) == "nothing to see, 100% fine & well"
    assert scrub("sk-pro", KEY) == "sk-pro"  # shorter than a piece: a common prefix stays
    assert scrub("", KEY) == "" and scrub("text", None) == "text" and scrub("text", "") == "text"


def test_a_key_shorter_than_a_piece_is_taken_out_whole() -> None:
    assert scrub("key=abc/d was bad", "abc/d") == "key=*** was bad"
    assert scrub("key=abc\\/d", "abc/d") == "key=***"
    assert scrub("key=abc", "abc/d") == "key=abc"


WHOLE_FORMS = [
    v for k, v in ECHOES.items() if "cut" not in k and "suffix" not in k and "middle" not in k
]


@pytest.mark.parametrize("echo", WHOLE_FORMS)
def test_scrub_bytes_takes_out_the_whole_key_in_any_form(echo: str) -> None:
    out = scrub_bytes(echo.encode(), KEY).decode()
    assert _leaked(out) == [], out


def test_scrub_bytes_is_linear_on_a_large_body() -> None:
    body = (b"a" * 1023 + b"\\") * 4096 + f"\\u0073{KEY[1:]}".encode()
    out = scrub_bytes(body, KEY)
    assert out.endswith(b"***") and len(out) == 4096 * 1024 + 3


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
async def test_an_escaped_key_echoed_in_a_long_error_does_not_leak(profile: Profile) -> None:
    """The reproduction: a gateway that escapes `/` as `\\/` echoes the key at the end of a
    message longer than the excerpt, so the adapter's cut falls inside the key."""
    key = "sk-live/0123456789abcdefXYZ/9876"

    async def echo(request: web.Request) -> web.StreamResponse:
        sent = request.headers.get(profile.key_header, "").removeprefix(profile.key_prefix)
        body = json.dumps(profile.error(401, "x" * 185 + f" key={sent} was rejected"))
        escaped = body.replace("/", "\\/")
        headers = {profile.request_id_header: "req-" + sent.replace("/", "%2F")}
        return web.Response(
            text=escaped, status=401, content_type="application/json", headers=headers
        )

    async with serve(profile) as up:
        up.reply = echo
        with pytest.raises(ProviderError) as info:
            await up.call(api_key=Secret("k", key))
    exc = info.value
    assert up.received, "the server was called"
    for text in (str(exc), repr(exc), exc.message, str(exc.request_id), repr(exc.args)):
        assert _leaked(text, key) == [], text


def test_a_response_id_or_model_echoing_the_key_stays_off_the_span() -> None:
    from llm_worker.adapters.base import ProviderResult, Target
    from llm_worker.worker.ops.genai import result_attributes

    target = Target(
        provider="openai", endpoint="http://h/v1", model="m", endpoint_name="primary:openai",
        api_key=Secret("k", KEY),
    )  # fmt: skip
    result = ProviderResult(
        text="hi",
        finish_reason="stop",
        response_id="resp-" + KEY.replace("/", "\\/"),
        response_model="gpt-" + KEY[:12],
    )
    attrs = result_attributes(target, result, None, content=False)
    assert "gen_ai.response.id" not in attrs and "gen_ai.response.model" not in attrs
    clean = ProviderResult(
        text="hi", finish_reason="stop", response_id="resp-1", response_model="m"
    )
    attrs = result_attributes(target, clean, None, content=False)
    assert attrs["gen_ai.response.id"] == "resp-1" and attrs["gen_ai.response.model"] == "m"
