"""An Anthropic batch answer to a JSON prompt arrives as the message came: the JSON inside the
forced tool's call. The batch lane settles it as a live call does (`adapters.anthropic.settled`):
the completion carries the JSON, not a tool call the prompt never offered."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from llm_worker.adapters.base import ProviderResult, ToolCall
from llm_worker.adapters.batch import BatchResult
from llm_worker.registry.batches import Job, StoredRequest
from llm_worker.registry.models import ModelRow
from llm_worker.worker.batch.answers import answer
from llm_worker.worker.config import load_settings

PROMPT = {
    "id": "j1",
    "model": "claude",
    "prompt": "give me a city",
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "city",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            },
        },
    },
}


def _job(provider: str) -> Job:
    return Job(
        id=1,
        job_key="k",
        group_key="g",
        model_id="claude",
        provider=provider,
        endpoint="",
        upstream_model="claude-x",
        state="submitted",
        batch_id="msgbatch_1",
        provider_state="ended",
        requests=1,
        succeeded=1,
        errored=0,
        error=None,
        created_at=datetime.now(UTC),
        submitted_at=None,
        collected_at=None,
    )


def _stored() -> StoredRequest:
    return StoredRequest(
        id=7,
        source="t/0/7",
        model_id="claude",
        prompt_id="j1",
        record=msgspec.json.encode(PROMPT),
        record_key=None,
        state="submitted",
    )


def test_the_forced_tools_json_becomes_the_completions_json() -> None:
    res = ProviderResult(
        text="",
        finish_reason="tool_calls",
        input_tokens=10,
        output_tokens=5,
        tool_calls=(ToolCall(id="t1", name="city", arguments={"name": "Oslo"}),),
    )
    row = ModelRow(model_id="claude", provider="anthropic", endpoint="", upstream_model="x")
    outcome = BatchResult(custom_id="req-7", result=res)
    value, topic = answer(load_settings({}), _stored(), outcome, _job("anthropic"), row)
    comp = msgspec.json.decode(value)
    assert topic == load_settings({}).completions_topic
    assert comp["status"] == "ok", comp
    assert comp["json"] == {"name": "Oslo"}
    assert comp["tool_calls"] is None
    assert comp["finish_reason"] == "stop"
    # the same result from another provider is taken as it is: a tool call nobody offered
    value, _ = answer(load_settings({}), _stored(), outcome, _job("openai"), row)
    assert msgspec.json.decode(value)["status"] == "error"
