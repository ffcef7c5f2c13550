"""What a completion carries for structured work (`Pipeline` with a scripted caller): the parsed
`json` and `tool_calls`, the usage of cached, cache-write and reasoning tokens priced at the
row's own rates, the raw text of an `invalid_output`, and a row's `canned_response`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderResult, ToolCall
from llm_worker.adapters.errors import InvalidOutput, ProviderError, ServerError
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import CallFailed, CallResult
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import Completion
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pipeline
from llm_worker.worker.records import InputRecord

PRICED = ModelRow(
    model_id="priced",
    provider="fake",
    endpoint="http://x/v1",
    upstream_model="u",
    input_cost_per_1k=3.0,
    output_cost_per_1k=15.0,
    cached_input_cost_per_1k=0.3,
    cache_write_cost_per_1k=3.75,
)
PLAIN = ModelRow(
    model_id="plain",
    provider="fake",
    endpoint="http://x/v1",
    upstream_model="u",
    input_cost_per_1k=1.0,
    output_cost_per_1k=2.0,
)
CANNED = ModelRow(
    model_id="canned",
    provider="fake",
    endpoint="http://x/v1",
    upstream_model="u",
    canned_response="Sorry, we cannot answer right now.",
)
ROWS = {r.model_id: r for r in (PRICED, PLAIN, CANNED)}


class Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(ROWS, model_id)


class Caller:
    def __init__(self, result: ProviderResult | ProviderError, json_value: Any = None) -> None:
        self.result = result
        self.json_value = json_value

    async def call(self, candidates: list[Candidate], request: Any, **kw: Any) -> CallResult:
        if isinstance(self.result, ProviderError):
            raise CallFailed(self.result, 2, candidates[0])
        return CallResult(
            result=self.result,
            candidate=candidates[0],
            attempts=1,
            latency_ms=1.0,
            json=self.json_value,
        )


async def _complete(model: str, caller: Caller, metrics: Metrics | None = None) -> Completion:
    pipeline = Pipeline(
        load_settings({}),
        Registry(),
        caller,  # type: ignore[arg-type]
        metrics or Metrics(),
        wall_clock=lambda: 1000.0,
    )
    value = json.dumps({"id": "a", "model": model, "prompt": "hi", "dedup": False}).encode()
    out = await pipeline.process(InputRecord(topic="in", partition=0, offset=1, value=value))
    assert out.completion is not None
    wire = json.loads(out.value or b"{}")
    assert wire["id"] == "a"  # what goes on the topic is the completion
    return out.completion


async def test_an_answer_carries_its_json_tool_calls_and_token_detail() -> None:
    result = ProviderResult(
        text='{"label": "spam"}',
        finish_reason="stop",
        input_tokens=10_000,
        output_tokens=500,
        cached_input_tokens=8_000,
        cache_write_tokens=1_000,
        reasoning_tokens=200,
        tool_calls=(ToolCall("c1", "weather", {"city": "Oslo"}),),
    )
    comp = await _complete("priced", Caller(result, json_value={"label": "spam"}))
    assert comp.status == "ok" and comp.json == {"label": "spam"}
    assert comp.tool_calls is not None and comp.tool_calls[0].arguments == {"city": "Oslo"}
    assert comp.tool_calls[0].name == "weather" and comp.tool_calls[0].id == "c1"
    u = comp.usage
    assert u is not None
    assert (u.cached_input_tokens, u.cache_write_tokens, u.reasoning_tokens) == (8000, 1000, 200)
    # by hand: 1,000 plain input at 3.0, 8,000 cached at 0.3, 1,000 written at 3.75, 500 out at 15
    by_hand = (1000 * 3.0 + 8000 * 0.3 + 1000 * 3.75 + 500 * 15.0) / 1000
    assert u.cost_usd == pytest.approx(by_hand) and by_hand == pytest.approx(16.65)


async def test_cached_input_without_its_own_price_is_billed_once_at_the_input_price() -> None:
    result = ProviderResult(
        text="x", finish_reason="stop", input_tokens=1000, output_tokens=0, cached_input_tokens=600
    )
    comp = await _complete("plain", Caller(result))
    assert comp.usage is not None and comp.usage.cost_usd == pytest.approx(1.0)
    assert comp.json is None and comp.tool_calls is None


async def test_invalid_output_is_an_error_that_keeps_the_raw_text() -> None:
    err = InvalidOutput("the answer is not JSON", raw="label: spam", provider="fake", model="u")
    comp = await _complete("plain", Caller(err))
    assert comp.status == "error" and comp.error is not None
    assert comp.error.type == "invalid_output" and comp.text == "label: spam"
    assert comp.canned is False


async def test_a_row_with_a_canned_response_answers_it_when_every_candidate_failed() -> None:
    metrics = Metrics()
    comp = await _complete("canned", Caller(ServerError("upstream broke", status=503)), metrics)
    assert comp.status == "ok" and comp.canned is True
    assert comp.text == "Sorry, we cannot answer right now."
    assert comp.error is not None and comp.error.type == "server_error"  # the cause, kept
    counted = metrics.registry.get_sample_value(
        "llm_worker_canned_responses_total", {"model": "canned"}
    )
    assert counted == 1


async def test_without_a_canned_response_a_failure_stays_an_error() -> None:
    comp = await _complete("plain", Caller(ServerError("upstream broke", status=503)))
    assert comp.status == "error" and comp.canned is False and comp.text is None


async def _complete_asking(model: str, caller: Caller, **ask: Any) -> Completion:
    pipeline = Pipeline(
        load_settings({}),
        Registry(),
        caller,  # type: ignore[arg-type]
        Metrics(),
        wall_clock=lambda: 1000.0,
    )
    doc = {"id": "a", "model": model, "prompt": "hi", "dedup": False, **ask}
    rec = InputRecord(topic="in", partition=0, offset=1, value=json.dumps(doc).encode())
    out = await pipeline.process(rec)
    assert out.completion is not None
    return out.completion


async def test_a_canned_reply_that_does_not_satisfy_the_response_format_is_not_ok() -> None:
    """A prompt asking JSON is never `ok` with free text, not even a canned reply."""
    fmt = {"type": "json_object"}
    comp = await _complete_asking(
        "canned", Caller(ServerError("upstream broke", status=503)), response_format=fmt
    )
    assert comp.status == "error" and comp.canned is False
    assert comp.error is not None and comp.error.type == "server_error"


async def test_a_canned_json_reply_answers_a_json_prompt_parsed() -> None:
    ROWS["canned-json"] = ModelRow(
        model_id="canned-json",
        provider="fake",
        endpoint="http://x/v1",
        upstream_model="u",
        canned_response='{"label": "unknown"}',
    )
    try:
        comp = await _complete_asking(
            "canned-json",
            Caller(ServerError("upstream broke", status=503)),
            response_format={"type": "json_object"},
        )
    finally:
        del ROWS["canned-json"]
    assert comp.status == "ok" and comp.canned is True and comp.json == {"label": "unknown"}
