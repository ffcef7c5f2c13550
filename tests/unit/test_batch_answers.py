"""What a collected batch request becomes (`worker.batch.answers`): a completion on the batch
lane priced at the row's batch prices (half its online prices when it has none), an
`invalid_output` error when the answer fails what the prompt asked, and for an errored or
expired request what the row's `batch_on_error` says: the prompt again for a live call, or
an error completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderResult
from llm_worker.adapters.batch import BatchResult
from llm_worker.adapters.errors import ContextLengthExceeded, ProviderTimeout
from llm_worker.registry.batches import Job, StoredRequest
from llm_worker.registry.models import ModelRow
from llm_worker.worker.batch.answers import answer, expired_completion
from llm_worker.worker.config import load_settings

SETTINGS = load_settings({})

PROMPT: dict[str, Any] = {
    "id": "p1",
    "model": "m1",
    "prompt": "hi",
    "lane": "batch",
    "metadata": {"k": "v"},
    "max_tokens": 64,
}

JOB = Job(
    id=3,
    job_key="k-3",
    group_key="m1|openai|https://api.openai.com/v1|gpt-x",
    model_id="m1",
    provider="openai",
    endpoint="https://api.openai.com/v1",
    upstream_model="gpt-x",
    state="collected",
    batch_id="batch_abc",
    provider_state="completed",
    requests=1,
    succeeded=1,
    errored=0,
    error=None,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    collected_at=datetime(2026, 1, 1, 1, tzinfo=UTC),
)


def _row(**kw: Any) -> ModelRow:
    base: dict[str, Any] = {
        "model_id": "m1",
        "provider": "openai",
        "endpoint": "https://api.openai.com/v1",
        "upstream_model": "gpt-x",
        "input_cost_per_1k": 0.002,
        "output_cost_per_1k": 0.006,
        "lane": "batch",
    }
    return ModelRow(**(base | kw))


def _stored(prompt: dict[str, Any] = PROMPT) -> StoredRequest:
    return StoredRequest(
        id=11,
        source="llm_prompts/0/42",
        model_id="m1",
        prompt_id=prompt["id"],
        record=json.dumps(prompt).encode(),
        record_key=b"key-1",
        state="submitted",
    )


def _ok(text: str = "hello") -> BatchResult:
    res = ProviderResult(
        text=text, finish_reason="stop", input_tokens=1000, output_tokens=500, request_id="r"
    )
    return BatchResult(custom_id="11", result=res)


def _completion(value: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(value)
    return out


def test_an_answer_is_a_batch_completion_at_the_rows_batch_prices() -> None:
    row = _row(batch_input_cost_per_1k=0.0004, batch_output_cost_per_1k=0.0016)
    value, topic = answer(SETTINGS, _stored(), _ok(), JOB, row)
    assert topic == SETTINGS.completions_topic
    c = _completion(value)
    assert (c["id"], c["model"], c["status"], c["text"]) == ("p1", "m1", "ok", "hello")
    assert (c["lane"], c["batch_id"]) == ("batch", "batch_abc")
    assert (c["provider"], c["upstream_model"]) == ("openai", "gpt-x")
    assert c["metadata"] == {"k": "v"}
    # 1000 input tokens at 0.0004/1k + 500 output tokens at 0.0016/1k = 0.0004 + 0.0008
    assert c["usage"]["input_tokens"] == 1000 and c["usage"]["output_tokens"] == 500
    assert c["usage"]["cost_usd"] == pytest.approx(0.0012)


def test_a_row_without_batch_prices_pays_half_its_online_prices() -> None:
    value, _ = answer(SETTINGS, _stored(), _ok(), JOB, _row())
    # online: 1000 * 0.002/1k + 500 * 0.006/1k = 0.002 + 0.003 = 0.005; half: 0.0025
    assert _completion(value)["usage"]["cost_usd"] == pytest.approx(0.0025)


def test_one_batch_price_set_the_other_half_the_online_price() -> None:
    value, _ = answer(SETTINGS, _stored(), _ok(), JOB, _row(batch_input_cost_per_1k=0.0))
    # input free, output at 0.006/2 = 0.003/1k: 500 * 0.003/1k = 0.0015
    assert _completion(value)["usage"]["cost_usd"] == pytest.approx(0.0015)


def test_text_where_json_was_asked_is_invalid_output() -> None:
    prompt = PROMPT | {"response_format": {"type": "json_object"}}
    value, topic = answer(SETTINGS, _stored(prompt), _ok("not json at all"), JOB, _row())
    c = _completion(value)
    assert topic == SETTINGS.completions_topic
    assert c["status"] == "error" and c["error"]["type"] == "invalid_output"
    assert c["error"]["retryable"] is False and c.get("json") is None
    assert (c["lane"], c["batch_id"]) == ("batch", "batch_abc")


def test_json_where_json_was_asked_is_parsed() -> None:
    prompt = PROMPT | {"response_format": {"type": "json_object"}}
    value, _ = answer(SETTINGS, _stored(prompt), _ok('{"a": 1}'), JOB, _row())
    c = _completion(value)
    assert c["status"] == "ok" and c["json"] == {"a": 1}


ERRORED = BatchResult(custom_id="11", error=ContextLengthExceeded("too long", status=400))
EXPIRED = BatchResult(custom_id="11", expired=True)


@pytest.mark.parametrize("on_error", ["online", None])
@pytest.mark.parametrize("outcome", [ERRORED, EXPIRED, None], ids=["errored", "expired", "missing"])
def test_an_unanswered_request_goes_back_to_the_prompts_topic_for_a_live_call(
    on_error: str | None, outcome: BatchResult | None
) -> None:
    value, topic = answer(SETTINGS, _stored(), outcome, JOB, _row(batch_on_error=on_error))
    assert topic == SETTINGS.prompts_topic
    assert json.loads(value) == PROMPT | {"lane": "online"}  # everything else as it was


def test_a_prompt_that_did_not_name_a_lane_goes_back_saying_online() -> None:
    """A row with `lane = batch` sent it there: without `lane: online` it would loop."""
    prompt = {k: v for k, v in PROMPT.items() if k != "lane"}
    value, topic = answer(SETTINGS, _stored(prompt), None, JOB, _row())
    assert topic == SETTINGS.prompts_topic
    assert json.loads(value) == prompt | {"lane": "online"}


def test_a_missing_request_with_on_error_error_is_batch_expired() -> None:
    value, topic = answer(SETTINGS, _stored(), None, JOB, _row(batch_on_error="error"))
    assert topic == SETTINGS.completions_topic
    c = _completion(value)
    assert c["status"] == "error" and c["error"]["type"] == "batch_expired"
    assert "batch_abc" in c["error"]["message"] and c["error"]["retryable"] is False
    assert (c["lane"], c["batch_id"], c["metadata"]) == ("batch", "batch_abc", {"k": "v"})


def test_an_expired_request_with_on_error_error_is_batch_expired() -> None:
    value, _ = answer(SETTINGS, _stored(), EXPIRED, JOB, _row(batch_on_error="error"))
    assert _completion(value)["error"]["type"] == "batch_expired"


def test_an_errored_request_with_on_error_error_names_its_error_class() -> None:
    value, topic = answer(SETTINGS, _stored(), ERRORED, JOB, _row(batch_on_error="error"))
    assert topic == SETTINGS.completions_topic
    c = _completion(value)
    assert c["status"] == "error" and c["error"]["type"] == "context_length_exceeded"
    assert "too long" in c["error"]["message"]
    assert (c["lane"], c["batch_id"], c["provider"]) == ("batch", "batch_abc", "openai")


def test_an_errored_requests_type_is_the_one_a_live_call_would_give() -> None:
    """The error completion says the error's `type` as the online lane does (`timeout`, not
    the class name `ProviderTimeout` in snake case)."""
    timed_out = BatchResult(custom_id="11", error=ProviderTimeout("no answer in time"))
    value, _ = answer(SETTINGS, _stored(), timed_out, JOB, _row(batch_on_error="error"))
    assert _completion(value)["error"]["type"] == "timeout"


def test_a_request_past_its_deadline_is_deadline_exceeded_with_no_attempt() -> None:
    c = _completion(expired_completion(SETTINGS, _stored()))
    assert c["status"] == "error" and c["error"]["type"] == "deadline_exceeded"
    assert c["error"]["retryable"] is False and "waited for a batch job" in c["error"]["message"]
    assert c["attempts"] == 0 and c["lane"] == "batch" and c["batch_id"] is None
    assert c["id"] == PROMPT["id"] and c["model"] == PROMPT["model"]
