"""What the retry loop (`calling.caller.Caller`) reports about its attempts: counted as
`llm_worker_retries_total{reason}` always, and turned into spans and events when tracing is on.

`Caller` calls this at the points of its loop where something happens: an attempt starts or
ends, a candidate is skipped because its circuit breaker is open, the rate limiter made a
request wait. With tracing off each call is a method call and a `None` check.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import ProviderError
from llm_worker.registry.resolve import Candidate

from .metrics import Metrics
from .tracing import Tracing

__all__ = ["AttemptObserver"]


class _Attempt:
    __slots__ = ("span", "target")

    def __init__(self, span: Any, target: Target) -> None:
        self.span = span
        self.target = target


class AttemptObserver:
    def __init__(self, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self._retries = metrics.retries
        self._children: dict[str, Counter] = {}
        self._tracing = tracing

    def attempt_started(
        self,
        cand: Candidate,
        target: Target,
        request: ProviderRequest,
        attempt: int,
        retry_of: ProviderError | None,
    ) -> Any:
        """An attempt at `cand` (its `attempt`-th); `retry_of`: the failure of the request's
        previous attempt, if any. Returns the handle for `attempt_finished`."""
        if retry_of is not None:
            child = self._children.get(retry_of.type)
            if child is None:
                child = self._children[retry_of.type] = self._retries.labels(retry_of.type)
            child.inc()
        tracing = self._tracing
        if tracing is None:
            return None
        span = tracing.attempt_started(cand, target, request, attempt, retry_of)
        return None if span is None else _Attempt(span, target)

    def attempt_finished(
        self,
        handle: Any,
        result: ProviderResult | None = None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        if handle is not None and self._tracing is not None:
            self._tracing.attempt_finished(handle.span, handle.target, result, error, cancelled)

    def event(self, name: str, cand: Candidate, **attrs: Any) -> None:
        """`circuit_open` (a candidate skipped), `ratelimit_wait` (`wait_s`), `held`
        (`reason`, `wait_s`: a retry backoff or a wait for a half-open probe)."""
        if self._tracing is not None:
            self._tracing.event(f"llm_worker.{name}", cand, attrs)
