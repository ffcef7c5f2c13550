"""The seam through which the retry loop tells what it does (spans, retry metrics).

`Caller` calls an observer, if it has one: where an attempt starts and ends (`attempt.py`),
where a candidate is skipped because its circuit breaker is open (`event("circuit_open")`) and
where the rate limiter held a request back (`event("ratelimit_wait", wait_s=...)`), and where
a hold ended (`event("held", reason="retry_backoff" | "circuit_open", wait_s=...)`). The
implementation lives in `worker.ops.attempts`.
"""

from __future__ import annotations

from typing import Any, Protocol

from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import ProviderError
from llm_worker.registry.resolve import Candidate

__all__ = ["CallObserver"]


class CallObserver(Protocol):
    def attempt_started(
        self,
        cand: Candidate,
        target: Target,
        request: ProviderRequest,
        attempt: int,
        retry_of: ProviderError | None,
    ) -> Any:
        """The `attempt`-th attempt at `cand` starts; `retry_of` is the failure of the
        request's previous attempt (None for its first). Returns a handle."""

    def attempt_finished(
        self,
        handle: Any,
        result: ProviderResult | None = None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        """The attempt of `handle` ended: with `result`, with `error`, or `cancelled`."""

    def event(self, name: str, cand: Candidate, **attrs: Any) -> None: ...
