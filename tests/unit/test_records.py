"""Shrinking an outcome refused as too large: each step smaller, the last one bounded."""

from __future__ import annotations

import msgspec

from llm_worker.worker.messages import Completion, ErrorInfo
from llm_worker.worker.records import Outcome, record_size, shrink


def _completion_outcome(key: bytes, text: str) -> Outcome:
    comp = Completion(id="r" * 5000, model="m" * 5000, status="ok", text=text, metadata={"a": 1})
    return Outcome(
        topic="out",
        value=msgspec.json.encode(comp),
        key=key,
        headers=[("traceparent", b"00-" + b"1" * 2000)],
        completion=comp,
    )


def test_first_step_keeps_a_small_key_and_says_what_was_too_large() -> None:
    refused = _completion_outcome(b"k1", "x" * 2_000_000)
    out = shrink(refused, 1, 1_000_000)
    assert refused.completion is not None and refused.completion.status == "ok"  # kept as it was
    assert out.key == b"k1" and out.completion is not None
    err = out.completion.error
    assert isinstance(err, ErrorInfo) and err.type == "output_too_large"
    assert "larger than the broker accepts" in err.message and out.completion.text is None
    assert out.headers is None  # 2 KB of headers exceed what a replacement keeps


def test_last_step_is_bounded_whatever_came_in() -> None:
    out = _completion_outcome(b"k" * 900_000, "x")
    out = shrink(shrink(out, 1, 1_000_000), 2, 1_000_000)
    assert out.key is None and out.headers is None
    assert record_size(out.value, out.key, out.headers) < 1024
    comp = msgspec.json.decode(out.value)
    assert comp["id"] == "r" * 128 and "key (900000 bytes) was dropped" in comp["error"]["message"]


def test_dead_letter_steps_keep_the_reason_and_the_original_size() -> None:
    out = Outcome(
        topic="dlq",
        value=b"v" * 900_000,
        key=b"k" * 5000,
        headers=[("h", b"x" * 300_000), ("llm_worker.reason", b"invalid_json")],
        dlq_reason="invalid_json",
    )
    out = shrink(out, 1, 1_000_000)
    first = dict(out.headers or [])
    assert "h" not in first and first["llm_worker.truncated"] == b"900000"
    assert first["llm_worker.key_dropped"] == b"5000" and out.key is None
    assert record_size(out.value, out.key, out.headers) < 1_000_000
    out = shrink(out, 2, 1_000_000)
    last = dict(out.headers or [])
    assert len(out.value) == 1024 and last["llm_worker.truncated"] == b"900000"
    assert (
        last["llm_worker.reason"] == b"invalid_json" and last["llm_worker.key_dropped"] == b"5000"
    )
