import json
from pathlib import Path

import msgspec
import pytest

from worker.messages import (
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
    [("prompt.schema.json", prompt_schema), ("completion.schema.json", completion_schema)],
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
