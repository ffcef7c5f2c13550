"""What a call ends with: a `CallResult`, or a `CallFailed` carrying the provider error."""

from __future__ import annotations

from typing import Any

import msgspec

from llm_worker.adapters.base import ProviderRequest, ProviderResult
from llm_worker.adapters.errors import ProviderError, ProviderTimeout, RetryableError
from llm_worker.registry.resolve import Candidate

__all__ = [
    "CallFailed",
    "CallResult",
    "CircuitOpen",
    "DeadlineExceeded",
    "estimate_tokens",
    "expired",
    "past_prompt_deadline",
]


class CircuitOpen(RetryableError):
    """Every candidate's circuit breaker is open: no call could be made."""

    type = "circuit_open"

    @classmethod
    def of(cls, cand: Candidate) -> CircuitOpen:
        return cls(
            f"circuit open for {cand.endpoint_name}",
            provider=cand.provider,
            model=cand.upstream_model,
        )


class DeadlineExceeded(ProviderError):
    """The prompt's own deadline (`deadline`, `ttl_ms`, `LLM_WORKER_DEFAULT_TTL_MS`) ended the
    request, or had passed before it began. Not retryable: the answer is no longer wanted."""

    type = "deadline_exceeded"


def past_prompt_deadline(
    err: ProviderError | None, attempts: int, held_s: float
) -> DeadlineExceeded:
    """The error a request ends with when its prompt's deadline ended it: how far it got, and
    what the provider said last (`err`), if anything."""
    why = f"the prompt's deadline passed after {attempts} attempts and {held_s:.1f}s held"
    if err is None:
        return DeadlineExceeded(why)
    return DeadlineExceeded(
        f"{why}; the last error: {err.type}: {err.message}",
        provider=err.provider,
        model=err.model,
        status=err.status,
        request_id=err.request_id,
    )


# gc=False: not walked by the collector (see ToolCall in adapters/base.py)
class CallResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    result: ProviderResult
    candidate: Candidate
    attempts: int
    latency_ms: float
    json: Any = None  # the answer parsed, when the prompt asked JSON (`calling.output`)


class CallFailed(Exception):
    """Every candidate failed; `error` is the last provider error (its class is kept).

    `shared`: this request did not call; it got the error of an identical request (dedup).
    """

    def __init__(
        self,
        error: ProviderError,
        attempts: int,
        candidate: Candidate | None,
        *,
        shared: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.candidate = candidate
        self.shared = shared


def estimate_tokens(request: ProviderRequest, cap: int | None) -> int:
    """Tokens a request may use, for the tpm buckets: ~4 characters a token plus max_tokens."""
    if request.messages is not None:
        chars = sum(len(m.text) for m in request.messages)
    else:
        chars = len(request.prompt or "")
    out = request.max_tokens or cap or 256
    if cap is not None:
        out = min(out, cap)
    return chars // 4 + 1 + out


def expired(
    last_call_error: ProviderError | None,
    last: ProviderError | None,
    attempts: int,
    held_s: float,
) -> ProviderError:
    """The error a request ends with at its deadline, saying so: what the provider said last
    (the breaker opened because of such errors), else why the last pass failed
    (`circuit_open`), else a timeout."""
    err = last_call_error or last or ProviderTimeout("request deadline passed before an answer")
    circuit = ", circuit open" if isinstance(last, CircuitOpen) and err is not last else ""
    return type(err)(
        f"{err.message}; request deadline passed after {attempts} attempts"
        f" and {held_s:.1f}s held{circuit}",
        provider=err.provider,
        model=err.model,
        status=err.status,
        request_id=err.request_id,
    )
