"""`Pipeline` on its own: the edges the component tests do not reach (what an error or a dead
letter carries when the input is odd; `process`, the one-call form)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderResult
from llm_worker.adapters.errors import ProviderError, ServerError
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import CallFailed, CallResult
from llm_worker.worker.config import load_settings
from llm_worker.worker.dedup import DedupWindow
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pending, Pipeline
from llm_worker.worker.records import InputRecord, Outcome

ROWS = {
    "m1": ModelRow(model_id="m1", provider="fake", endpoint="http://x/v1", upstream_model="u"),
    "fb": ModelRow(
        model_id="fb",
        provider="fake",
        endpoint="http://x/v1",
        upstream_model="u",
        fallback_provider="fake",
        fallback_endpoint="http://y/v1",
        fallback_model="u",
    ),
    "off": ModelRow(
        model_id="off", provider="fake", endpoint="http://x/v1", upstream_model="u", enabled=False
    ),
}


class Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(ROWS, model_id)


class Caller:
    """Answers every call at once with the prompt's text; records the tenant of each call."""

    def __init__(self, *, error: ProviderError | None = None) -> None:
        self.tenants: list[str | None] = []
        self.error = error  # when set: every call fails with it
        self.by_fallback = False  # answer with the last candidate

    async def call(self, candidates: list[Candidate], request: Any, **kw: Any) -> CallResult:
        self.tenants.append(kw["tenant"])
        if self.error is not None:
            raise CallFailed(self.error, 1, candidates[0])
        text = request.prompt or ""
        result = ProviderResult(text=text, finish_reason="stop", input_tokens=1, output_tokens=1)
        cand = candidates[-1] if self.by_fallback else candidates[0]
        return CallResult(result=result, candidate=cand, attempts=1, latency_ms=1.0)


def _pipeline(
    caller: Caller | None = None,
    metrics: Metrics | None = None,
    max_message_bytes: int = 100,
    **kw: Any,
) -> Pipeline:
    settings = load_settings({"LLM_WORKER_MAX_MESSAGE_BYTES": str(max_message_bytes)})
    return Pipeline(
        settings,
        Registry(),
        caller or Caller(),  # type: ignore[arg-type]
        metrics or Metrics(),
        wall_clock=lambda: 1000.0,
        **kw,
    )


def _rec(value: bytes, **kw: Any) -> InputRecord:
    return InputRecord(topic="in", partition=2, offset=7, value=value, **kw)


async def test_process_answers_a_prompt_and_dead_letters_garbage() -> None:
    p = _pipeline()
    ok = await p.process(_rec(json.dumps({"id": "a", "model": "m1", "prompt": "hi"}).encode()))
    assert ok.completion is not None and ok.completion.text == "hi"
    dead = await p.process(_rec(b"{nope"))
    assert dead.completion is None and dead.dlq_reason == "invalid_json"


def test_an_error_completion_carries_the_queue_time() -> None:
    prompt = {"id": "a", "model": "zz", "prompt": "x", "metadata": {"k": "v"}}
    rec = _rec(json.dumps(prompt).encode(), timestamp_ms=999_000)
    out = _pipeline().begin(rec)
    assert isinstance(out, Outcome)
    completion = out.completion
    assert completion is not None and completion.error is not None
    assert completion.queue_ms == 1000.0 and completion.error.retryable is False
    assert (completion.id, completion.model, completion.metadata) == ("a", "zz", {"k": "v"})
    assert completion.error.type == "unknown_model"
    assert out.model_label == "unknown"  # any string can be an unknown model: not a label


def test_a_registry_error_of_a_known_row_is_labelled_with_its_model() -> None:
    out = _pipeline().begin(_rec(json.dumps({"id": "a", "model": "off", "prompt": "x"}).encode()))
    assert isinstance(out, Outcome)
    assert out.completion is not None and out.completion.error is not None
    assert out.completion.error.type == "model_disabled" and out.model_label == "off"


async def test_outcomes_carry_their_model_label_and_start_time() -> None:
    """Both the answer that called and the one the dedup window answered: the metrics count
    them per model and time them from the moment the record was begun."""
    now = [50.0]
    p = _pipeline(dedup=DedupWindow(window_s=60), clock=lambda: now[0])
    value = json.dumps({"id": "a", "model": "m1", "prompt": "hi"}).encode()
    first = p.begin(_rec(value))
    assert isinstance(first, Pending)
    now[0] = 51.0
    called = await p.finish(first)
    assert called.completion is not None and not called.completion.deduplicated
    assert (called.model_label, called.started) == ("m1", 50.0)
    stored = p.begin(_rec(value))
    assert isinstance(stored, Outcome) and stored.completion is not None
    assert stored.completion.deduplicated
    assert (stored.model_label, stored.started) == ("m1", 51.0)


def test_a_dead_letter_error_header_is_cut_and_always_encodable() -> None:
    p = _pipeline()
    long = p.dead_letter(_rec(b"x"), "invalid_json", "e" * 5000)
    assert dict(long.headers or [])["llm_worker.error"] == b"e" * 1000
    odd = p.dead_letter(_rec(b"x"), "invalid_json", "bad \ud800 char")  # a lone surrogate
    assert dict(odd.headers or [])["llm_worker.error"] == b"bad ? char"


def test_internal_error_answers_any_readable_prompt_whatever_its_size() -> None:
    """The limits were checked already; an internal error must still be an answer."""
    big = {"id": "b", "model": "m1", "prompt": "x" * 500, "metadata": {"k": "v" * 500}}
    out = _pipeline().internal_error(_rec(json.dumps(big).encode()), RuntimeError("bug"))
    c = out.completion
    assert c is not None and c.error is not None
    assert (c.id, c.model, c.error.type) == ("b", "m1", "internal_error")
    assert c.metadata == {"k": "v" * 500}


def test_internal_error_of_an_unreadable_record_is_a_dead_letter() -> None:
    out = _pipeline().internal_error(_rec(b"\x00garbage"), KeyError("x"))
    headers = dict(out.headers or [])
    assert out.completion is None and out.dlq_reason == "internal_error"
    assert out.value == b"\x00garbage" and out.topic == "llm_prompts.dlq"
    assert headers["llm_worker.reason"] == b"internal_error"
    assert headers["llm_worker.error"] == b"internal error: KeyError"
    assert headers["llm_worker.source"] == b"in/2/7"


@pytest.mark.parametrize(
    "extra",
    [{"key": b"k" * 50}, {"headers": [("h", b"v" * 41)]}],  # a header: name, value and 8
    ids=["key", "header"],
)
def test_the_records_key_and_headers_count_toward_the_size_limit(extra: dict[str, Any]) -> None:
    value = json.dumps({"id": "a", "model": "m1", "prompt": "x" * 20}).encode()
    assert len(value) < 100  # the value alone fits LLM_WORKER_MAX_MESSAGE_BYTES
    out = _pipeline().begin(_rec(value, **extra))
    assert isinstance(out, Outcome)
    c = out.completion
    assert c is not None and c.error is not None and c.error.type == "payload_too_large"
    assert c.error.message == (
        f"record is {len(value) + 50} bytes ({len(value)} value, 50 key and headers);"
        " the limit is 100"
    )


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
async def test_the_prompts_tenant_reaches_the_call(dedup: bool) -> None:
    """The tenant's rate limits apply to its calls, deduplicated or not."""
    caller = Caller()
    p = _pipeline(caller, dedup=DedupWindow(window_s=60) if dedup else None)
    prompt = {"id": "a", "model": "m1", "prompt": "hi", "tenant": "acme"}
    out = await p.process(_rec(json.dumps(prompt).encode()))
    assert out.completion is not None and out.completion.text == "hi"
    assert caller.tenants == ["acme"]


async def test_only_an_answer_from_a_fallback_that_called_counts_as_a_fallback() -> None:
    caller, metrics = Caller(), Metrics()
    p = _pipeline(caller, metrics, dedup=DedupWindow(window_s=60))

    def fallbacks() -> float:
        value = metrics.registry.get_sample_value("llm_worker_fallbacks_total", {"model": "fb"})
        return value or 0.0

    def rec(text: str) -> InputRecord:
        return _rec(json.dumps({"id": text, "model": "fb", "prompt": text}).encode())

    caller.by_fallback = True
    solo = await p.process(rec("solo"))
    assert solo.completion is not None and solo.completion.fallback_used
    assert fallbacks() == 1.0
    first, second = p.begin(rec("same")), p.begin(rec("same"))
    assert isinstance(first, Pending) and isinstance(second, Pending)
    outs = [await p.finish(first), await p.finish(second)]  # the second shares the first's
    assert [o.completion.fallback_used for o in outs if o.completion] == [True, True]
    assert fallbacks() == 2.0  # the one that called
    caller.by_fallback = False
    primary = await p.process(rec("other"))
    assert primary.completion is not None and not primary.completion.fallback_used
    assert fallbacks() == 2.0


async def test_a_failed_call_is_labelled_with_its_model() -> None:
    p = _pipeline(Caller(error=ServerError("down", provider="fake", model="u", status=503)))
    out = await p.process(_rec(json.dumps({"id": "a", "model": "m1", "prompt": "x"}).encode()))
    assert out.completion is not None and out.completion.error is not None
    assert out.completion.error.type == "server_error" and out.model_label == "m1"


@pytest.mark.parametrize("sent_ms", [1_000_000, 1_000_500], ids=["now", "ahead"])
def test_a_record_sent_now_or_stamped_ahead_waited_no_time(sent_ms: int) -> None:
    value = json.dumps({"id": "a", "model": "zz", "prompt": "x"}).encode()
    out = _pipeline().begin(_rec(value, timestamp_ms=sent_ms))  # the wall clock says 1,000 s
    assert isinstance(out, Outcome) and out.completion is not None
    assert out.completion.queue_ms == 0.0


@pytest.mark.parametrize(
    ("fields", "etype"),
    [
        ({"temperature": 5}, "validation_error"),
        ({"prompt": "y" * 890_000}, "payload_too_large"),
    ],
)
def test_an_error_completion_never_carries_metadata_over_the_limit(
    fields: dict[str, Any], etype: str
) -> None:
    """Issue 21, finding 7: 100 KB of metadata came back on a validation error, 890 KB on
    `payload_too_large`, against the 16 KB LLM_WORKER_MAX_METADATA_BYTES."""
    doc = {"id": "a", "model": "m1", "prompt": "x", "metadata": {"k": "v" * 100_000}, **fields}
    out = _pipeline(max_message_bytes=500_000).begin(_rec(json.dumps(doc).encode()))
    assert isinstance(out, Outcome)
    c = out.completion
    assert c is not None and c.error is not None and c.error.type == etype
    assert c.id == "a" and c.metadata is None
    assert len(out.value) < 2000
    assert "`metadata` (100008 bytes) was not echoed: the limit is 16384" in c.error.message


def test_a_lone_surrogate_in_a_prompt_with_an_id_gets_an_error_completion() -> None:
    """Issue 21, finding 10: `json.dumps` writes "\\ud800" for a lone surrogate; the record
    went to the dead-letter topic although its id could be read."""
    raw = json.dumps({"id": "x", "model": "m1", "prompt": "\ud800"}).encode()
    assert b"\\ud800" in raw
    out = _pipeline(max_message_bytes=10_000).begin(_rec(raw))
    assert isinstance(out, Outcome) and out.completion is not None
    sent = json.loads(out.value.decode("utf-8"))
    assert (sent["id"], sent["status"], sent["error"]["type"]) == ("x", "error", "validation_error")
    assert "`$.prompt`" in sent["error"]["message"]


def test_internal_error_of_an_invalid_but_readable_record_is_an_error_completion() -> None:
    raw = json.dumps({"id": "r", "model": "m1", "prompt": "\ud800", "metadata": {"k": 1}})
    out = _pipeline().internal_error(_rec(raw.encode()), RuntimeError("bug"))
    c = out.completion
    assert c is not None and c.error is not None
    assert (c.id, c.error.type, c.metadata) == ("r", "internal_error", {"k": 1})
