"""One provider call: the target, the adapter, the timeout, and what the call tells the
router and the endpoint's health (breaker and latency judge) and the metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import Adapter, OnDelta, ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    UnsupportedFeature,
)
from llm_worker.adapters.http_client import Session
from llm_worker.adapters.secrets import MissingSecret, SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.resolve import Candidate

from ..ops.looplag import LoopLag
from ..ops.metrics import Metrics, observe
from .breaker import BreakerBoard
from .observer import CallObserver
from .routing import Router

__all__ = ["LAG_UNTRUSTED_SHARE", "Attempts", "DeadlineInCall", "Prepared"]

Prepared = tuple[Target, Adapter, Session]
"""What calling a candidate needs: its target, its adapter and the session to its endpoint."""


LAG_UNTRUSTED_SHARE = 0.5
"""A call long enough to be judged slow during which the event loop ran late for this share of
its time or more measured the worker's own congestion more than the provider: its latency is
not judged. (Short calls are: they make the baseline and cannot be judged slow.)"""


class DeadlineInCall(Exception):
    """The request's deadline ended a call in progress; `error` says so."""

    def __init__(self, error: ProviderTimeout) -> None:
        super().__init__(str(error))
        self.error = error


class Attempts:
    def __init__(
        self,
        sessions: SessionPool,
        secrets: SecretStore,
        metrics: Metrics,
        router: Router,
        breakers: BreakerBoard,
        loop_lag: LoopLag | None,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
    ) -> None:
        self.observer = observer
        self._sessions = sessions
        self._secrets = secrets
        self._metrics = metrics
        self.router = router
        self.breakers = breakers
        self._lag = loop_lag
        self._clock = clock
        self.stream_idle_ms = 30_000
        """Milliseconds a provider stream may go without an event (a `Caller` setting)."""
        self.calling: dict[str, int] = {}
        """Calls in flight per health key: the load a new call starts at."""
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def _ok_metrics(self, cand: Candidate) -> tuple[Counter, Histogram]:
        key = (cand.provider, cand.endpoint_name)
        children = self._children.get(key)
        if children is None:
            m = self._metrics
            children = self._children[key] = (
                m.provider_calls.labels(cand.provider, cand.endpoint_name, "ok"),
                m.provider_latency.labels(cand.provider, cand.endpoint_name),
            )
        return children

    def _target(self, cand: Candidate) -> Target:
        row = cand.row
        key = None
        if row.api_key_secret:
            try:
                key = self._secrets.get(row.api_key_secret)
            except MissingSecret as exc:
                raise AuthError(
                    f"API key secret {row.api_key_secret!r} is not available",
                    provider=cand.provider,
                    model=cand.upstream_model,
                ) from exc
        return Target(
            provider=cand.provider,
            endpoint=cand.endpoint,
            model=cand.upstream_model,
            endpoint_name=cand.endpoint_name,
            api_key=key,
            timeout_ms=row.timeout_ms,
            max_tokens=row.max_tokens,
            max_response_bytes=self._sessions.max_response_bytes,
            dialect=row.dialect,
            structured_outputs=row.structured_outputs,
            stream_idle_ms=self.stream_idle_ms,
        )

    def forget_children(self) -> None:
        """After series were removed: look children up again."""
        self._children.clear()

    def prepare(self, cand: Candidate, request: ProviderRequest | None = None) -> Prepared:
        """What calling `cand` needs; a terminal `ProviderError` when it cannot be called
        (an unknown provider, a missing secret, a malformed endpoint) or cannot honour a field
        of `request` (`UnsupportedFeature`, naming the field and the provider)."""
        try:
            adapter = get_adapter(cand.provider)
        except KeyError:
            raise BadRequest(
                f"unknown provider {cand.provider!r} in the registry",
                provider=cand.provider,
                model=cand.upstream_model,
            ) from None
        target = self._target(cand)
        refused = adapter.unsupported(target, request) if request is not None else None
        if refused is not None:
            raise UnsupportedFeature(refused, provider=cand.provider, model=cand.upstream_model)
        try:
            session = self._sessions.get(adapter.endpoint_for(target))
        except ValueError as exc:
            raise BadRequest(
                f"the registry endpoint of {cand.endpoint_name} cannot be called: {exc}",
                provider=cand.provider,
                model=cand.upstream_model,
            ) from None
        return target, adapter, session

    async def call(
        self,
        cand: Candidate,
        health: str,
        prepared: Prepared,
        request: ProviderRequest,
        remaining: float,
        attempt: int = 1,
        retry_of: ProviderError | None = None,
        on_delta: OnDelta | None = None,
    ) -> tuple[ProviderResult, float] | ProviderError:
        """One call: the result and its seconds, or the provider's error. Raises
        `DeadlineInCall` when the request's deadline (`remaining` seconds away) ends it.
        `attempt`: its number at this candidate; `retry_of`: the error of the request's
        previous attempt, if any (both for the observer). `on_delta`: stream the answer, each
        piece to it as it arrives."""
        target, adapter, session = prepared
        obs = self.observer
        handle = None
        if obs is not None:
            handle = obs.attempt_started(cand, target, request, attempt, retry_of)
        load = self.calling.get(health, 0) + 1
        self.calling[health] = load
        t0 = self._clock()
        lag0 = self._lag.mark() if self._lag is not None else 0.0
        try:
            result = await _complete(adapter, session, target, request, remaining, on_delta)
        except ProviderError as exc:
            if obs is not None:
                obs.attempt_finished(handle, error=exc)
            self._failed(cand, health, exc, t0)
            return exc
        except TimeoutError:
            err = ProviderTimeout(
                "request deadline passed during an attempt",
                provider=cand.provider,
                model=cand.upstream_model,
            )
            if obs is not None:
                obs.attempt_finished(handle, error=err)
            self._failed(cand, health, err, t0)
            raise DeadlineInCall(err) from None
        except BaseException:  # cancelled: the attempt's span ends all the same
            if obs is not None:
                obs.attempt_finished(handle, cancelled=True)
            raise
        finally:
            left = self.calling[health] - 1
            if left:
                self.calling[health] = left
            else:
                del self.calling[health]
        elapsed = self._clock() - t0
        if obs is not None:
            obs.attempt_finished(handle, result=result)
        self._succeeded(cand, health, elapsed, lag0, load)
        return result, elapsed

    def _failed(self, cand: Candidate, health: str, err: ProviderError, t0: float) -> None:
        """A call that began at `t0` failed with `err`: counted, and a retryable error (a
        deadline's timeout included) counts against the endpoint's health; a bad request
        says nothing about it."""
        self._metrics.provider_calls.labels(cand.provider, cand.endpoint_name, err.type).inc()
        if err.retryable:
            throttled = isinstance(err, RateLimited | Overloaded)
            self.router.record(health, False, self._clock() - t0, throttled=throttled)

    def _succeeded(
        self, cand: Candidate, health: str, elapsed: float, lag0: float, load: int
    ) -> None:
        """A call answered in `elapsed` seconds (`lag0`: the loop-lag mark at its start,
        `load`: calls in flight at the endpoint with it)."""
        ok, latency = self._ok_metrics(cand)
        ok.inc()
        observe(latency, elapsed)
        # the endpoint's health sees only its own share: time our loop was too busy to read
        # the answer is not the provider being slow. And when the loop was late for most of
        # the call, it was saturated, which inflates latency beyond what the lag shows: keep
        # that call from the latency judgement
        lag = self._lag.since(lag0) if self._lag is not None else 0.0
        # routing and the latency judge see the provider's share (see LoopLag): a stall
        # lands on the endpoint being called, while the one not chosen keeps its older
        # EWMA, so raw times would hand traffic to the slower endpoint after each stall
        share = max(elapsed - lag, 0.0)
        self.router.stats.record(health, True, share)
        self.breakers.record(
            health,
            True,
            share,
            judge_latency=lag < LAG_UNTRUSTED_SHARE * elapsed
            or elapsed < self.breakers.config.latency_min_increase_s,
            load=load,
        )


def _complete(
    adapter: Adapter,
    session: Session,
    target: Target,
    request: ProviderRequest,
    remaining: float,
    on_delta: OnDelta | None = None,
) -> Awaitable[ProviderResult]:
    """The adapter's call, ended by the request's deadline (`remaining` seconds away) when that
    comes before the row's own timeout (which the adapter enforces). A stream has no total
    timeout of its own (only a stall timeout): the deadline always bounds it. (Not a coroutine
    itself: the common call is the adapter's, awaited as it is.)"""
    if on_delta is not None:
        return _within(remaining, adapter.stream(session, target, request, on_delta))
    if remaining < target.timeout_ms / 1000:
        return _within(remaining, adapter.complete(session, target, request))
    return adapter.complete(session, target, request)


async def _within(seconds: float, call: Awaitable[ProviderResult]) -> ProviderResult:
    async with asyncio.timeout(seconds):
        return await call
