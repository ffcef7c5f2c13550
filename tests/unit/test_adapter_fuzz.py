"""Provider answers, fuzzed through the real HTTP client (issue 21, findings 2 and 4): every
adapter, aiohttp, and a local server that writes whatever bytes the case asks for on the socket
(sizes around the cap, a huge Content-Length, chunked bodies with no length, a gzip bomb, JSON
nested 200,000 deep, invalid UTF-8, UTF-16, lone surrogates, bodies cut mid-JSON or mid-transfer,
wrong shapes, statuses and headers, the key or the endpoint's password echoed back escaped).

Whatever comes back, `complete()` returns a result or raises the adapters' error root with the
class the taxonomy gives: a 2xx that is not an answer is a retryable `server_error`, an answer
over the cap a retryable `response_too_large`, a transfer cut short a `connection_error`, an
error status its own class. Nothing else escapes (a `RecursionError` or a `ValueError` used to,
and became an `internal_error` with no retry and no fallback)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_worker.adapters.base import Message, ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import (
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    ResponseTooLarge,
    ServerError,
    error_for_status,
)
from llm_worker.adapters.secrets import Secret
from tests.unit.test_adapter_contract import API_KEY, MODEL, PROFILES, Profile

CAP = 64 * 1024
PROMPT = ProviderRequest(prompt="tell me", max_tokens=10)
OK = "ok"
RETRYABLE = "retryable"  # any retryable class: how aiohttp reports broken HTTP varies
Parts = list[bytes]


def http(
    status: int,
    body: bytes,
    *,
    length: int | str | None = "auto",
    chunked: bool = False,
    cut: int | None = None,
    headers: tuple[str, ...] = (),
) -> Parts:
    """A response as it goes on the wire. `length`: the Content-Length sent ("auto": the body's,
    None: none, read until the connection closes); `cut`: close after this many body bytes."""
    head = [f"HTTP/1.1 {status} Status", "Content-Type: application/json", "Connection: close"]
    head += headers
    if chunked:
        head.append("Transfer-Encoding: chunked")
        step = 16 * 1024
        wire = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
            for i in range(0, len(body), step)
        )
        wire += b"0\r\n\r\n"
    else:
        if length is not None:
            head.append(f"Content-Length: {len(body) if length == 'auto' else length}")
        wire = body
    if cut is not None:
        wire = wire[:cut]
    return [("\r\n".join(head) + "\r\n\r\n").encode(), wire]


class Wire:
    """The provider: reads one request per connection, writes the scripted bytes, closes."""

    def __init__(self) -> None:
        self.parts: Parts = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(found.group(1)) if found else 0)
            for part in self.parts:
                writer.write(part)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def target(self, profile: Profile, **overrides: Any) -> Target:
        fields: dict[str, Any] = {
            "provider": profile.provider,
            "endpoint": profile.endpoint(f"http://127.0.0.1:{self.port}"),
            "model": MODEL,
            "endpoint_name": "m/primary",
            "api_key": Secret("fuzz-key", API_KEY),
            "timeout_ms": 5_000,
            "max_response_bytes": CAP,
        }
        return Target(**(fields | overrides))

    async def attempt(
        self, profile: Profile, parts: Parts, **target: Any
    ) -> ProviderResult | ProviderError:
        """One call; the adapters' error root is returned, anything else escapes the test."""
        self.parts = parts
        async with aiohttp.ClientSession() as session:
            try:
                return await profile.adapter.complete(
                    session, self.target(profile, **target), PROMPT
                )
            except ProviderError as exc:
                return exc


@contextlib.asynccontextmanager
async def wire() -> AsyncIterator[Wire]:
    w = Wire()
    server = await asyncio.start_server(w._serve, "127.0.0.1", 0)
    w.port = server.sockets[0].getsockname()[1]
    try:
        yield w
    finally:
        server.close()
        await server.wait_closed()


def answer(profile: Profile, text: str = "Hi") -> bytes:
    return json.dumps(profile.success(text, profile.finish["stop"], (3, 2))).encode()


def sized(profile: Profile, size: int) -> bytes:
    """A valid answer of exactly `size` bytes (its text padded with x)."""
    pad = size - len(answer(profile, ""))
    body = answer(profile, "x" * pad)
    assert len(body) == size
    return body


def nested(profile: Profile, depth: int) -> bytes:
    """A valid answer with an extra field holding `depth` nested arrays."""
    return b'{"extra": ' + b"[" * depth + b"]" * depth + b", " + answer(profile)[1:]


def with_text(profile: Profile, raw: bytes) -> bytes:
    """A valid answer whose text is `raw`, exactly as written between the quotes."""
    return answer(profile, "TEXT-HERE").replace(b"TEXT-HERE", raw)


@cache
def gzip_bomb() -> bytes:
    return gzip.compress(b" " * (40 * 1024 * 1024), compresslevel=9)


DEEP = b"[" * 30_000 + b"]" * 30_000  # within the cap
Case = Callable[[Profile], Parts]
CASES: dict[str, tuple[Case, Any]] = {
    # sizes
    "exactly the cap": (lambda p: http(200, sized(p, CAP)), OK),
    "one byte over the cap": (lambda p: http(200, sized(p, CAP + 1)), ResponseTooLarge),
    "over the cap, chunked": (
        lambda p: http(200, sized(p, CAP + 1), chunked=True),
        ResponseTooLarge,
    ),
    "under the cap, chunked": (lambda p: http(200, sized(p, CAP - 1), chunked=True), OK),
    "over the cap, no length": (
        lambda p: http(200, sized(p, 3 * CAP), length=None),
        ResponseTooLarge,
    ),
    "a huge Content-Length": (lambda p: http(200, b'{"choices', length=10**12), ResponseTooLarge),
    "a gzip bomb": (
        lambda p: http(200, gzip_bomb(), headers=("Content-Encoding: gzip",)),
        ResponseTooLarge,
    ),
    "a 500 over the cap": (lambda p: http(500, b"x" * (3 * CAP)), ServerError),
    "a 400 over the cap, no length": (
        lambda p: http(400, b"x" * (3 * CAP), length=None),
        BadRequest,
    ),
    # depth
    "nested 30,000 deep": (lambda p: http(200, DEEP), ServerError),
    "an extra field 100 deep": (lambda p: http(200, nested(p, 100)), OK),
    "an extra field 200 deep": (lambda p: http(200, nested(p, 200)), ServerError),
    "an extra field 5,000 deep": (lambda p: http(200, nested(p, 5_000)), ServerError),
    "a 400 nested 30,000 deep": (lambda p: http(400, DEEP), BadRequest),
    "a 503 nested 30,000 deep": (lambda p: http(503, DEEP), ServerError),
    "a 429 error object nested deep": (
        lambda p: http(429, b'{"error": {"message": ' + DEEP + b"}}"),
        error_for_status(429),
    ),
    # encodings
    "invalid UTF-8": (lambda p: http(200, with_text(p, b"\xff\xfe\xc3(")), ServerError),
    "UTF-16 with a BOM": (lambda p: http(200, answer(p).decode().encode("utf-16")), ServerError),
    "a UTF-8 BOM": (lambda p: http(200, b"\xef\xbb\xbf" + answer(p)), OK),
    "a lone surrogate escaped": (lambda p: http(200, with_text(p, rb"a\ud800b")), ServerError),
    "a surrogate pair escaped": (lambda p: http(200, with_text(p, rb"\ud83d\ude00")), OK),
    "an invalid UTF-8 error body": (lambda p: http(400, b'{"error": "\xff\xfe"}'), BadRequest),
    # truncation
    "cut mid-JSON": (lambda p: http(200, answer(p)[:25]), ServerError),
    "empty": (lambda p: http(200, b""), ServerError),
    "closed mid-body": (lambda p: http(200, answer(p), cut=20), ConnectionFailed),
    "closed mid-chunk": (
        lambda p: http(200, sized(p, 40_000), chunked=True, cut=100),
        ConnectionFailed,
    ),
    "closed before the status line": (lambda p: [b"HTTP/1.1 2"], RETRYABLE),
    "not HTTP at all": (lambda p: [b"\x00\x01garbage\r\n\r\n"], RETRYABLE),
    "a bad chunk size": (lambda p: [http(200, b"", chunked=True)[0], b"zz\r\n{}\r\n"], RETRYABLE),
    # shapes
    "a JSON string": (lambda p: http(200, b'"Hi"'), ServerError),
    "a JSON number": (lambda p: http(200, b"1e999999"), ServerError),
    "null": (lambda p: http(200, b"null"), ServerError),
    "a list of answers": (lambda p: http(200, b"[" + answer(p) + b"]"), None),
    "HTML": (lambda p: http(200, b"<html><body>hi</body></html>"), ServerError),
    "an error object with a 200": (
        lambda p: http(200, b'{"error": {"message": "x"}}'),
        ServerError,
    ),
}


def check(got: ProviderResult | ProviderError, want: Any, case: str) -> None:
    seen = f"{case}: {got!r}"[:300]
    if want == OK:
        assert isinstance(got, ProviderResult), seen
    elif want == RETRYABLE:
        assert isinstance(got, ProviderError) and got.retryable, seen
    elif want is None:  # a result or a malformed-answer error, per adapter
        assert isinstance(got, ProviderResult | ServerError), seen
    else:
        cls: type[ProviderError] = want
        assert type(got) is cls, seen
        assert isinstance(got, ProviderError) and got.retryable is cls.retryable
    if isinstance(got, ProviderError):
        assert API_KEY not in str(got)
        assert len(str(got)) < 1000, case


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
async def test_every_answer_is_a_result_or_a_classified_error(profile: Profile) -> None:
    async with wire() as w:
        for case, (reply, want) in CASES.items():
            got = await w.attempt(profile, reply(profile))
            check(got, want, case)
            if want == OK:
                assert isinstance(got, ProviderResult)
                if case == "exactly the cap":
                    assert got.text == "x" * (CAP - len(answer(profile, "")))
                if case == "a surrogate pair escaped":
                    assert got.text == "\U0001f600"


async def test_an_answer_over_the_cap_says_which_setting_to_raise() -> None:
    async with wire() as w:
        got = await w.attempt(PROFILES[0], http(200, b"x" * (CAP + 1)))
    assert isinstance(got, ResponseTooLarge)
    assert got.type == "response_too_large" and got.status == 200
    assert f"larger than {CAP} bytes (LLM_WORKER_MAX_RESPONSE_BYTES)" in got.message


@pytest.mark.parametrize("status", [200, 400, 500])
async def test_an_answer_nested_200_000_deep_is_a_provider_error(status: int) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000  # finding 4: a RecursionError escaped
    async with wire() as w:
        got = await w.attempt(PROFILES[0], http(status, deep), max_response_bytes=2**20)
    assert type(got) is (error_for_status(status) if status != 200 else ServerError)
    if status == 200:
        assert "malformed response: JSON nested deeper than 128 levels" in str(got)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
@pytest.mark.parametrize(
    "request_",
    [
        ProviderRequest(prompt="a \ud800 b"),  # a lone surrogate: not encodable as UTF-8 JSON
        ProviderRequest(messages=(Message("user", "hi \udfff"),)),
    ],
)
async def test_a_request_json_cannot_carry_is_a_bad_request(
    profile: Profile, request_: ProviderRequest
) -> None:
    async with wire() as w, aiohttp.ClientSession() as session:
        with pytest.raises(BadRequest, match="cannot be encoded as JSON"):
            await profile.adapter.complete(session, w.target(profile), request_)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
@pytest.mark.parametrize(
    "endpoint", ["http://[::1/v1", "http://127.0.0.1:99999/v1", "http://127.0.0.1:port/v1"]
)
async def test_an_endpoint_that_does_not_parse_is_a_bad_request(
    profile: Profile, endpoint: str
) -> None:
    async with wire() as w, aiohttp.ClientSession() as session:
        with pytest.raises(BadRequest):
            await profile.adapter.complete(session, w.target(profile, endpoint=endpoint), PROMPT)


# -- generated -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a copy
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> Callable[[Profile], bytes]:
    """A profile's valid answer with one value, anywhere in it, replaced by any JSON."""
    index, value = draw(st.integers(min_value=0)), draw(JSON)

    def body(profile: Profile) -> bytes:
        doc = profile.success("Hi", profile.finish["stop"], (3, 2))
        paths = _paths(doc)
        return json.dumps(_replace(doc, paths[index % len(paths)], value)).encode()

    return body


BODIES = st.one_of(
    mutated(),
    JSON.map(lambda v: lambda p: json.dumps(v).encode()),
    st.binary(max_size=300).map(lambda b: lambda p: b),
)


async def _all_profiles(parts_for: Callable[[Profile], Parts]) -> list[tuple[Profile, Any]]:
    async with wire() as w:
        return [(p, await w.attempt(p, parts_for(p))) for p in PROFILES]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, chunked=st.booleans())
def test_any_2xx_body_is_an_answer_or_a_retryable_malformed_answer(
    body: Callable[[Profile], bytes], chunked: bool
) -> None:
    for profile, got in asyncio.run(_all_profiles(lambda p: http(200, body(p), chunked=chunked))):
        if isinstance(got, ContentFiltered):  # azure's and gemini's refusals arrive as 200s
            assert profile.provider in ("azure_openai", "gemini")
            continue
        assert isinstance(got, ProviderResult | ServerError), (profile.id, got)
        if isinstance(got, ServerError):
            assert got.retryable and "malformed response" in got.message


HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(min_value=300, max_value=599),
    body=BODIES,
    retry_after=HEADER_VALUE,
    request_id=HEADER_VALUE,
)
def test_any_error_status_is_classified_by_its_status(
    status: int, body: Callable[[Profile], bytes], retry_after: str, request_id: str
) -> None:
    if status in (304,):  # no body by definition; aiohttp reads none
        status = 303
    headers = (f"Retry-After: {retry_after}", f"x-request-id: {request_id}")
    for profile, got in asyncio.run(
        _all_profiles(lambda p: http(status, body(p), headers=headers))
    ):
        assert isinstance(got, ProviderError), (profile.id, got)
        retryable = error_for_status(status).retryable or (
            status == 424 and profile.provider == "huggingface"
        )
        assert got.retryable is retryable, (profile.id, status, got)
        assert got.status == status
        assert got.retry_after is None or 0 <= got.retry_after <= 60


URL_PASSWORD = "gw-pass-7d1e9c"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    escapes=st.lists(st.booleans(), min_size=len(API_KEY), max_size=len(API_KEY)),
    status=st.sampled_from([200, 400, 401, 429, 500]),
    where=st.sampled_from(["message", "request_id", "html"]),
)
def test_a_key_or_url_password_echoed_in_any_escape_stays_out_of_the_error(
    escapes: list[bool], status: int, where: str
) -> None:
    """A gateway echoing the key (or the endpoint's password) back, each character JSON-escaped
    or not: the error, its excerpt and its request id keep no piece of either."""
    echoed = "".join(f"\\u{ord(c):04x}" if e else c for c, e in zip(API_KEY, escapes, strict=True))
    text = f"invalid key {echoed} for https://user:{URL_PASSWORD}@gw/v1"
    if where == "html":
        raw = f"<html><body>{text}</body></html>".encode()
        body: Parts = http(status if status != 200 else 502, raw)
    elif where == "request_id":
        body = http(status, b'{"error": {"message": "no"}}', headers=(f"x-request-id: {API_KEY}",))
    else:
        body = http(status, ('{"error": {"message": "' + text + '"}}').encode())

    async def calls() -> list[tuple[Profile, Any, tuple[str, ...]]]:
        """Each profile with the key and the URL's password; where both would be the
        Authorization header, once with each."""
        async with wire() as w:
            out: list[tuple[Profile, Any, tuple[str, ...]]] = []
            for p in PROFILES:
                w.parts = body
                endpoint = p.endpoint(f"http://user:{URL_PASSWORD}@127.0.0.1:{w.port}")
                targets: list[tuple[Target, tuple[str, ...]]] = [
                    (w.target(p, endpoint=endpoint), (API_KEY, URL_PASSWORD))
                ]
                if p.key_header.lower() == "authorization":
                    targets = [
                        (w.target(p), (API_KEY,)),
                        (w.target(p, endpoint=endpoint, api_key=None), (URL_PASSWORD,)),
                    ]
                for target, secrets in targets:
                    async with aiohttp.ClientSession() as session:
                        try:
                            got: Any = await p.adapter.complete(session, target, PROMPT)
                        except ProviderError as exc:
                            got = exc
                    out.append((p, got, secrets))
            return out

    for profile, got, secrets in asyncio.run(calls()):
        assert isinstance(got, ProviderError), (profile.id, got)
        shown = f"{got} {got.request_id}"
        for secret in secrets:
            for piece in (secret[i : i + 8] for i in range(len(secret) - 7)):
                assert piece not in shown, (profile.id, shown)
