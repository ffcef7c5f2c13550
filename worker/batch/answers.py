"""What a batch request's outcome becomes: a completion (`lane: batch`, the job's
`batch_id`, priced at the row's batch prices), or, for a request the provider reports errored
or expired, what the row's `batch_on_error` says: the prompt again on the prompts topic with
`lane: online` (a live call answers it), or an error completion."""

from __future__ import annotations

import msgspec

from llm_worker.adapters.anthropic import settled
from llm_worker.adapters.base import ProviderResult, Target
from llm_worker.adapters.batch import BatchResult
from llm_worker.registry.batches import Job, StoredRequest
from llm_worker.registry.models import ModelRow

from ..calling.output import check_output
from ..config import Settings
from ..messages import (
    Completion,
    ErrorInfo,
    Prompt,
    ToolCallOut,
    Usage,
    decode_prompt,
    encode,
    provider_request,
)

__all__ = ["answer", "batch_cost", "expired_completion"]


def batch_cost(res: ProviderResult, row: ModelRow | None) -> float:
    """USD at the row's batch prices; half its online prices where it has none."""
    if row is None:
        return 0.0
    price_in = row.batch_input_cost_per_1k
    price_out = row.batch_output_cost_per_1k
    if price_in is None:
        price_in = row.input_cost_per_1k / 2
    if price_out is None:
        price_out = row.output_cost_per_1k / 2
    return round((res.input_tokens * price_in + res.output_tokens * price_out) / 1000, 8)


def _target(job: Job, row: ModelRow | None) -> Target:
    return Target(
        provider=job.provider,
        endpoint=job.endpoint,
        model=job.upstream_model,
        endpoint_name=f"{job.model_id}/batch",
        structured_outputs=row.structured_outputs if row is not None else False,
    )


def answer(
    settings: Settings,
    stored: StoredRequest,
    outcome: BatchResult | None,
    job: Job,
    row: ModelRow | None,
) -> tuple[bytes, str]:
    """(the record's value, its topic) for one request of a collected job; `outcome` None: the
    provider returned nothing for it (an expired or cancelled job)."""
    decoded = _prompt(settings, stored)
    res = outcome.result if outcome is not None else None
    if res is not None:
        return encode(_answered(decoded, res, job, row)), settings.completions_topic
    if (row.batch_on_error if row is not None else None) != "error":
        raw = msgspec.json.decode(stored.record)
        raw["lane"] = "online"
        return encode(raw), settings.prompts_topic
    return encode(_unanswered(decoded, outcome, job)), settings.completions_topic


def expired_completion(settings: Settings, stored: StoredRequest) -> bytes:
    """The error completion of a request whose prompt's deadline passed while it waited for a
    job: `deadline_exceeded`, no attempt, never sent to the provider."""
    prompt = _prompt(settings, stored)
    return encode(
        Completion(
            id=prompt.id,
            model=prompt.model,
            status="error",
            metadata=prompt.metadata,
            attempts=0,
            error=ErrorInfo(
                type="deadline_exceeded",
                message="the prompt's deadline passed while it waited for a batch job; it was"
                " not sent (give a later `deadline` or `ttl_ms`, or use lane online)",
                retryable=False,
            ),
            lane="batch",
        )
    )


def _prompt(settings: Settings, stored: StoredRequest) -> Prompt:
    decoded = decode_prompt(
        stored.record,
        max_bytes=max(settings.max_message_bytes, len(stored.record) + 1),
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    assert isinstance(decoded, Prompt), "stored batch requests were valid prompts"
    return decoded


def _unanswered(prompt: Prompt, outcome: BatchResult | None, job: Job) -> Completion:
    """The error completion of a request the batch did not answer (`batch_on_error` error)."""
    if outcome is None or outcome.expired:
        etype, message = "batch_expired", f"batch {job.batch_id} ended before this request ran"
    else:
        err = outcome.error
        etype = err.type if err is not None else "batch_error"  # the online lane's types
        message = str(err) if err is not None else "the batch reported this request failed"
    return Completion(
        id=prompt.id,
        model=prompt.model,
        status="error",
        metadata=prompt.metadata,
        provider=job.provider,
        upstream_model=job.upstream_model,
        attempts=1,
        error=ErrorInfo(type=etype, message=message, retryable=False),
        lane="batch",
        batch_id=job.batch_id,
    )


def _answered(prompt: Prompt, res: ProviderResult, job: Job, row: ModelRow | None) -> Completion:
    """The completion of an answered request, checked against what the prompt asked."""
    request = provider_request(prompt)
    if job.provider == "anthropic":  # a JSON answer may come as the forced tool's call
        res = settled(_target(job, row), request, res)
    value, problem = check_output(request, res)
    usage = Usage(
        input_tokens=res.input_tokens,
        output_tokens=res.output_tokens,
        cached_input_tokens=res.cached_input_tokens,
        cache_write_tokens=res.cache_write_tokens,
        reasoning_tokens=res.reasoning_tokens,
        cost_usd=batch_cost(res, row),
    )
    comp = Completion(
        id=prompt.id,
        model=prompt.model,
        status="ok",
        metadata=prompt.metadata,
        text=res.text,
        json=value,
        tool_calls=[ToolCallOut(c.id, c.name, c.arguments) for c in res.tool_calls] or None,
        finish_reason=res.finish_reason,
        provider=job.provider,
        upstream_model=job.upstream_model,
        endpoint_name=f"{job.model_id}/batch",
        usage=usage,
        attempts=1,
        lane="batch",
        batch_id=job.batch_id,
    )
    if problem is None:
        return comp
    return msgspec.structs.replace(  # the answer fails what the prompt asked: no batch retry
        comp,
        status="error",
        json=None,
        tool_calls=None,
        error=ErrorInfo(type="invalid_output", message=problem, retryable=False),
    )
