"""The one retry loop: try each candidate (primary, then fallbacks) with bounded retries.

Per request: the router orders the candidates by the row's (or the global) objective; an
endpoint whose circuit breaker is open is skipped; before every attempt the rate limiter waits
until the endpoint, the model and the tenant all have capacity (waiting, never dropping);
retries honour `Retry-After` and back off with jitter; the whole loop is bounded by the
request's deadline. Adapters never retry on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import msgspec
from aiohttp import ClientSession
from prometheus_client import Counter, Histogram

from adapters import get_adapter
from adapters.base import Adapter, ProviderRequest, ProviderResult, Target
from adapters.errors import (
    AuthError,
    BadRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    RetryableError,
)
from adapters.retry import next_delay
from adapters.secrets import MissingSecret, SecretStore
from adapters.sessions import SessionPool
from registry.resolve import Candidate

from ..ops.looplag import LoopLag
from ..ops.metrics import Metrics
from .breaker import BreakerBoard
from .observer import CallObserver
from .ratelimit import RateLimiter
from .routing import Router, endpoint_key, health_key

__all__ = ["CallFailed", "CallObserver", "CallResult", "Caller", "CircuitOpen", "estimate_tokens"]


LAG_UNTRUSTED_SHARE = 0.5
"""A call long enough to trip the latency breaker during which the event loop ran late for
this share of its time or more measured the worker's own congestion more than the provider:
its latency is not judged. (Short calls are: they make the baseline and cannot trip it.)"""


class CircuitOpen(RetryableError):
    """Every candidate's circuit breaker is open: failing fast instead of calling."""

    type = "circuit_open"


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    result: ProviderResult
    candidate: Candidate
    attempts: int
    latency_ms: float


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
        chars = sum(len(m.content) for m in request.messages)
    else:
        chars = len(request.prompt or "")
    out = request.max_tokens or cap or 256
    if cap is not None:
        out = min(out, cap)
    return chars // 4 + 1 + out


class Caller:
    def __init__(
        self,
        sessions: SessionPool,
        secrets: SecretStore,
        metrics: Metrics,
        *,
        max_attempts: int,
        router: Router | None = None,
        breakers: BreakerBoard | None = None,
        limiter: RateLimiter | None = None,
        loop_lag: LoopLag | None = None,
        wait_when_open: bool = False,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
    ) -> None:
        self.observer = observer
        self._sessions = sessions
        self._secrets = secrets
        self._metrics = metrics
        self._max_attempts = max_attempts
        self.breakers = breakers if breakers is not None else BreakerBoard()
        self.router = router if router is not None else Router(breakers=self.breakers)
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._lag = loop_lag
        self.wait_when_open = wait_when_open
        """When every candidate's breaker is open: wait (up to the deadline) for the first
        half-open probe instead of failing fast with `circuit_open`."""
        self.circuit_waiting = 0
        """Requests waiting for a breaker right now."""
        self._circuit_changed: asyncio.Event | None = None
        self.breakers.subscribe(self._on_circuit_change)
        self._clock = clock
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
        )

    def _prepare(self, cand: Candidate) -> tuple[Target, Adapter, ClientSession]:
        """What calling `cand` needs; a terminal error (the next candidate is tried) when its
        registry row cannot be called: unknown provider, missing secret, malformed endpoint."""
        try:
            adapter = get_adapter(cand.provider)
        except KeyError:
            raise BadRequest(
                f"unknown provider {cand.provider!r} in the registry",
                provider=cand.provider,
                model=cand.upstream_model,
            ) from None
        target = self._target(cand)
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
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        *,
        deadline: float,
        tenant: str | None = None,
    ) -> CallResult:
        while True:
            outcome = await self._try_candidates(candidates, request, deadline, tenant)
            if isinstance(outcome, CallResult):
                return outcome
            if not (self.wait_when_open and outcome.attempts == 0) or not isinstance(
                outcome.error, CircuitOpen
            ):
                raise outcome
            # every candidate's breaker is open: wait for the first one to take a probe
            if not await self._wait_for_circuit(candidates, deadline):
                raise outcome

    async def _wait_for_circuit(self, candidates: Sequence[Candidate], deadline: float) -> bool:
        """Sleep until a candidate's breaker may let a request through, a breaker changes
        state, or the deadline; False if the deadline came first."""
        now = self._clock()
        if now >= deadline:
            return False
        soonest = min(self.breakers.retry_at(health_key(c)) for c in candidates)
        changed = self._circuit_changed
        if changed is None:
            changed = self._circuit_changed = asyncio.Event()
        self.circuit_waiting += 1
        try:
            async with asyncio.timeout(max(min(soonest, deadline) - now, 0.0)):
                await changed.wait()
        except TimeoutError:
            pass
        finally:
            self.circuit_waiting -= 1
        return self._clock() < deadline

    def _on_circuit_change(self, name: str, old: str, new: str, reason: str) -> None:
        changed, self._circuit_changed = self._circuit_changed, None
        if changed is not None:
            changed.set()  # wake every waiter; each looks at the breakers again

    async def _try_candidates(
        self,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        deadline: float,
        tenant: str | None,
    ) -> CallResult | CallFailed:
        """One pass over the candidates: a result, or the failure to raise."""
        attempts = 0
        last: ProviderError | None = None
        last_cand: Candidate | None = None
        m = self._metrics
        obs = self.observer
        objective = candidates[0].row.routing_objective if candidates else None
        limited = None
        if len(candidates) > 1:

            def limited(c: Candidate) -> bool:
                row = c.row
                return not self.limiter.has_capacity(
                    endpoint=endpoint_key(c),
                    model_id=row.model_id,
                    rpm=row.rpm_limit,
                    tpm=row.tpm_limit,
                    tenant=tenant,
                    tokens=estimate_tokens(request, row.max_tokens),
                )

        for cand in self.router.order(candidates, objective, limited):
            name = cand.endpoint_name
            health = health_key(cand)
            if not self.breakers.allow(health):
                last = last or CircuitOpen(
                    f"circuit open for {name}", provider=cand.provider, model=cand.upstream_model
                )
                m.provider_calls.labels(cand.provider, name, "circuit_open").inc()
                if obs is not None:
                    obs.event("circuit_open", cand)
                continue
            last_cand = cand
            try:
                target, adapter, session = self._prepare(cand)
            except ProviderError as exc:
                last = exc
                m.provider_calls.labels(cand.provider, name, exc.type).inc()
                continue
            row = cand.row
            limit_key = endpoint_key(cand)
            tokens = estimate_tokens(request, row.max_tokens)
            for attempt in range(1, self._max_attempts + 1):
                # Waiting for capacity never fails a request; the deadline bounds the time
                # spent calling, so it moves by however long the limiter held this one back.
                waited = await self.limiter.acquire(
                    endpoint=limit_key,
                    model_id=row.model_id,
                    rpm=row.rpm_limit,
                    tpm=row.tpm_limit,
                    tenant=tenant,
                    tokens=tokens,
                )
                deadline += waited
                if obs is not None and waited > 0:
                    obs.event("ratelimit_wait", cand, wait_s=waited)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return CallFailed(
                        last or ProviderTimeout("request deadline passed before an answer"),
                        attempts,
                        last_cand,
                    )
                handle = None
                if obs is not None:
                    handle = obs.attempt_started(
                        cand, target, request, attempt, last if attempts else None
                    )
                attempts += 1
                t0 = self._clock()
                lag0 = self._lag.mark() if self._lag is not None else 0.0
                try:
                    if remaining < target.timeout_ms / 1000:
                        async with asyncio.timeout(remaining):
                            result = await adapter.complete(session, target, request)
                    else:  # the adapter's own per-row timeout ends the attempt first
                        result = await adapter.complete(session, target, request)
                except ProviderError as exc:
                    last = exc
                    if obs is not None:
                        obs.attempt_finished(handle, error=exc)
                    m.provider_calls.labels(cand.provider, name, exc.type).inc()
                    if exc.retryable:  # endpoint health; a bad request says nothing about it
                        self.router.record(health, False, self._clock() - t0)
                    if isinstance(exc, RateLimited) and exc.retry_after:
                        self.limiter.penalize(limit_key, exc.retry_after)
                except TimeoutError:
                    last = ProviderTimeout(
                        "request deadline passed", provider=cand.provider, model=cand.upstream_model
                    )
                    if obs is not None:
                        obs.attempt_finished(handle, error=last)
                    m.provider_calls.labels(cand.provider, name, last.type).inc()
                    self.router.record(health, False, self._clock() - t0)
                    return CallFailed(last, attempts, cand)
                else:
                    elapsed = self._clock() - t0
                    if obs is not None:
                        obs.attempt_finished(handle, result=result)
                    ok, latency = self._ok_metrics(cand)
                    ok.inc()
                    latency.observe(elapsed)
                    # the endpoint's health sees only its own share: time our loop was too
                    # busy to read the answer is not the provider being slow. And when the
                    # loop was late for most of the call, it was saturated, which inflates
                    # latency beyond what the lag shows: keep that call from the anomaly check
                    lag = self._lag.since(lag0) if self._lag is not None else 0.0
                    # routing compares endpoints on the raw time (a stall delays all alike);
                    # the breaker judges health on the provider's share (see LoopLag)
                    self.router.stats.record(health, True, elapsed)
                    self.breakers.record(
                        health,
                        True,
                        max(elapsed - lag, 0.0),
                        judge_latency=lag < LAG_UNTRUSTED_SHARE * elapsed
                        or elapsed < self.breakers.config.latency_min_increase_s,
                    )
                    used = result.input_tokens + result.output_tokens
                    if used > tokens:
                        self.limiter.charge(
                            endpoint=limit_key,
                            model_id=row.model_id,
                            tenant=tenant,
                            tokens=used - tokens,
                        )
                    return CallResult(
                        result=result, candidate=cand, attempts=attempts, latency_ms=elapsed * 1000
                    )
                if not last.retryable or attempt == self._max_attempts:
                    break
                if not self.breakers.allow(health):
                    break  # this endpoint just tripped its breaker: move on
                delay = next_delay(last, attempt, remaining=deadline - self._clock())
                if delay is None:
                    break
                await asyncio.sleep(delay)
        if last is None:
            return CallFailed(BadRequest("no candidate to call"), attempts, last_cand)
        return CallFailed(last, attempts, last_cand)
