import json
from pathlib import Path

import msgspec
import pytest

from llm_worker.worker.chunks import chunk_schema
from llm_worker.worker.messages import (
    Completion,
    Prompt,
    Rejected,
    completion_schema,
    decode_prompt,
    encode,
    prompt_schema,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def dec(raw: bytes, max_bytes: int = 10_000) -> Prompt | Rejected:
    return decode_prompt(raw, max_bytes=max_bytes, max_metadata_bytes=512)


def test_plain_and_chat_prompts_decode() -> None:
    p = dec(b'{"id":"a","model":"m","prompt":"hi","unknown_field":1}')
    assert isinstance(p, Prompt) and p.prompt == "hi" and p.dedup is True
    c = dec(b'{"id":"b","model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.5}')
    assert isinstance(c, Prompt) and c.messages is not None and c.messages[0].content == "x"


@pytest.mark.parametrize(
    ("raw", "reason", "dlq"),
    [
        (b"not json at all", "invalid_json", True),
        (b"", "invalid_json", True),
        (b'{"model":"m","prompt":"x"}', "missing_id", True),
        (b'{"id":"","model":"m","prompt":"x"}', "missing_id", True),
        (b'{"id":"a","model":"m"}', "validation_error", False),
        (
            b'{"id":"a","model":"m","prompt":"x","messages":[{"role":"user","content":"y"}]}',
            "validation_error",
            False,
        ),
        (b'{"id":"a","model":5,"prompt":"x"}', "validation_error", False),
        (b'{"id":"a","model":"m","prompt":"x","max_tokens":"many"}', "validation_error", False),
        (
            b'{"id":"a","model":"m","messages":[{"role":"wizard","content":"y"}]}',
            "validation_error",
            False,
        ),
        (b'{"id":"a","model":"m","messages":[]}', "validation_error", False),
    ],
)
def test_bad_input_is_classified(raw: bytes, reason: str, dlq: bool) -> None:
    r = dec(raw)
    assert isinstance(r, Rejected)
    assert (r.reason, r.dlq) == (reason, dlq)
    if not dlq:
        assert r.request_id == "a"
        assert r.message


def test_validation_message_names_the_field() -> None:
    r = dec(b'{"id":"a","model":"m","prompt":"x","max_tokens":"many"}')
    assert isinstance(r, Rejected) and "max_tokens" in r.message


def test_oversize_with_id_gets_error_completion_and_without_goes_to_dlq() -> None:
    big = json.dumps({"id": "big", "model": "m", "prompt": "x" * 5000}).encode()
    r = dec(big, max_bytes=1000)
    assert isinstance(r, Rejected) and r.reason == "payload_too_large" and not r.dlq
    assert r.request_id == "big"
    r2 = dec(b"[" + b"1," * 1000 + b"1]", max_bytes=1000)
    assert isinstance(r2, Rejected) and r2.dlq and r2.reason == "payload_too_large"


def test_metadata_size_limit() -> None:
    raw = json.dumps(
        {"id": "a", "model": "m", "prompt": "x", "metadata": {"k": "v" * 600}}
    ).encode()
    r = dec(raw)
    assert isinstance(r, Rejected) and "metadata" in r.message


def test_completion_round_trip() -> None:
    c = Completion(id="a", model="m", status="ok", text="t", attempts=1)
    back = msgspec.json.decode(encode(c), type=Completion)
    assert back == c
    assert json.loads(encode(c))["deduplicated"] is False


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("prompt.schema.json", prompt_schema),
        ("completion.schema.json", completion_schema),
        ("chunk.schema.json", chunk_schema),
    ],
)
def test_published_json_schemas_match_the_structs(name: str, build: object) -> None:
    """schemas/*.json are generated from the Structs: regenerate with `make schemas`."""
    on_disk = json.loads((SCHEMAS / name).read_text())
    assert on_disk == build(), f"schemas/{name} is stale: run `make schemas`"  # type: ignore[operator]


def test_json_nested_past_the_decoder_depth_is_dead_lettered_not_raised() -> None:
    raw = (
        b'{"id":"deep","model":"m","prompt":"p","metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    )
    rej = decode_prompt(raw, max_bytes=10**6, max_metadata_bytes=10**6)
    assert isinstance(rej, Rejected) and rej.dlq and "nested too deeply" in rej.message


def test_a_string_that_is_not_utf8_is_rejected_not_raised() -> None:
    raw = b'{"id":"u","model":"m","prompt":"\xff\xfe"}'
    rej = decode_prompt(raw, max_bytes=10**6, max_metadata_bytes=100)
    assert isinstance(rej, Rejected) and rej.reason == "invalid_json" and "UTF-8" in rej.message


# -- what an error echoes is bounded (issue 21, finding 7) ---------------------------------
BIG_METADATA = {"notes": "n" * 100_000}


@pytest.mark.parametrize(
    ("fields", "max_bytes", "reason"),
    [
        ({"temperature": 5}, 10**6, "validation_error"),
        ({"messages": [], "prompt": None}, 10**6, "validation_error"),
        ({"prompt": "x" * 900_000}, 10**6, "payload_too_large"),
    ],
    ids=["invalid-field", "no-messages", "too-large"],
)
def test_an_error_never_echoes_metadata_over_the_limit(
    fields: dict[str, object], max_bytes: int, reason: str
) -> None:
    raw = json.dumps(
        {"id": "a", "model": "m", "prompt": "x", "metadata": BIG_METADATA, **fields}
    ).encode()
    r = decode_prompt(raw, max_bytes=max_bytes, max_metadata_bytes=16_384)
    assert isinstance(r, Rejected) and (r.reason, r.dlq, r.request_id) == (reason, False, "a")
    assert r.metadata is None
    assert "`metadata` (100012 bytes) was not echoed: the limit is 16384" in r.message


def test_an_error_echoes_metadata_within_the_limit() -> None:
    raw = json.dumps(
        {"id": "a", "model": "m", "prompt": "x", "temperature": 5, "metadata": {"k": 1}}
    )
    r = decode_prompt(raw.encode(), max_bytes=10**6, max_metadata_bytes=16_384)
    assert isinstance(r, Rejected) and r.metadata == {"k": 1} and r.model == "m"
    assert r.message == "Expected `float` <= 2.0 - at `$.temperature`"


def test_an_invalid_model_and_a_long_refused_value_are_not_echoed_whole() -> None:
    raw = json.dumps({"id": "a", "model": "m" * 100_000, "prompt": "x"}).encode()
    r = decode_prompt(raw, max_bytes=10**6, max_metadata_bytes=100)
    assert isinstance(r, Rejected) and r.model == "" and "`$.model`" in r.message
    role = json.dumps({"id": "a", "model": "m", "messages": [{"role": "w" * 100_000}]})
    r = decode_prompt(role.encode(), max_bytes=10**6, max_metadata_bytes=100)
    assert isinstance(r, Rejected) and len(r.message) <= 1000
    assert r.message.endswith("- at `$.messages[0].role`")  # the field is still named


# -- text that is JSON but not Unicode (issue 21, finding 10) ------------------------------
@pytest.mark.parametrize(
    ("fields", "path", "model", "metadata"),
    [
        ({"prompt": "\ud800"}, "$.prompt", "m", {"k": 1}),
        ({"prompt": "a\udfffb"}, "$.prompt", "m", {"k": 1}),
        ({"model": "m\ud800"}, "$.model", "", {"k": 1}),
        ({"stop": ["ok", "\udc00"]}, "$.stop[1]", "m", {"k": 1}),
        ({"metadata": {"k": "\ud800"}}, "$.metadata.k", "m", None),
        ({"metadata": {"\ud800": 1}}, '$.metadata["\\ud800"]', "m", None),
        (
            {"messages": [{"role": "user", "content": "\ud83d"}], "prompt": None},
            "$.messages[0].content",
            "m",
            {"k": 1},
        ),
        ({"tenant": "t\ud800"}, "$.tenant", "m", {"k": 1}),
    ],
)
def test_a_lone_surrogate_is_a_validation_error_naming_the_field(
    fields: dict[str, object], path: str, model: str, metadata: object
) -> None:
    """Python's json.dumps writes a lone surrogate as `\\ud800`: valid JSON, not valid text."""
    doc = {"id": "x", "model": "m", "prompt": "p", "metadata": {"k": 1}, **fields}
    doc = {k: v for k, v in doc.items() if v is not None}
    r = decode_prompt(json.dumps(doc).encode(), max_bytes=10**6, max_metadata_bytes=1000)
    assert isinstance(r, Rejected)
    assert (r.reason, r.dlq, r.request_id, r.model) == ("validation_error", False, "x", model)
    assert f"`{path}` holds a lone UTF-16 surrogate" in r.message
    assert r.metadata == metadata
    encode(r.message)  # it can be sent


def test_a_paired_surrogate_escape_is_text_and_an_id_with_a_lone_one_is_no_id() -> None:
    ok = decode_prompt(
        b'{"id":"x","model":"m","prompt":"\\ud83d\\ude00"}', max_bytes=1000, max_metadata_bytes=100
    )
    assert isinstance(ok, Prompt) and ok.prompt == "\U0001f600"
    raw = json.dumps({"id": "x\ud800", "model": "m", "prompt": "p"}).encode()
    r = decode_prompt(raw, max_bytes=1000, max_metadata_bytes=100)
    assert isinstance(r, Rejected) and (r.reason, r.dlq) == ("missing_id", True)
    assert "`$.id` holds a lone UTF-16 surrogate" in r.message


def test_a_lone_surrogate_in_an_oversize_prompt_keeps_its_id() -> None:
    raw = json.dumps({"id": "x", "model": "m", "prompt": "\ud800" + "y" * 2000}).encode()
    r = decode_prompt(raw, max_bytes=1000, max_metadata_bytes=100)
    assert isinstance(r, Rejected) and (r.reason, r.request_id) == ("payload_too_large", "x")


@pytest.mark.parametrize(
    ("raw", "path", "model"),
    [
        (b'{"id":"x","model":"m","prompt":"p","metadata":{"a":"\xff"}}', "$.metadata.a", "m"),
        (b'{"id":"x","model":"m\xff","prompt":"p"}', "$.model", ""),
        (b'{"id":"x","model":"m","prompt":"\xed\xa0\x80"}', "$.prompt", "m"),  # CESU-8
    ],
)
def test_bytes_that_are_not_utf8_beside_a_readable_id_get_an_error_naming_the_field(
    raw: bytes, path: str, model: str
) -> None:
    r = decode_prompt(raw, max_bytes=1000, max_metadata_bytes=100)
    assert isinstance(r, Rejected)
    assert (r.reason, r.dlq, r.request_id, r.model) == ("invalid_json", False, "x", model)
    assert f"`{path}` holds bytes that are not UTF-8" in r.message and r.metadata is None
