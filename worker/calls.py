"""The one retry loop: try each candidate (primary, then fallbacks) with bounded retries.

Retries honour `Retry-After` and back off with jitter; the whole loop is bounded by the
request's deadline. Adapters never retry on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import msgspec
from prometheus_client import Counter, Histogram

from adapters import get_adapter
from adapters.base import ProviderRequest, ProviderResult, Target
from adapters.errors import AuthError, BadRequest, ProviderError, ProviderTimeout
from adapters.retry import next_delay
from adapters.secrets import MissingSecret, SecretStore
from adapters.sessions import SessionPool
from registry.resolve import Candidate

from .telemetry import Metrics

__all__ = ["CallFailed", "CallResult", "Caller"]


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    result: ProviderResult
    candidate: Candidate
    attempts: int
    latency_ms: float


class CallFailed(Exception):
    """Every candidate failed; `error` is the last provider error (its class is kept)."""

    def __init__(self, error: ProviderError, attempts: int, candidate: Candidate | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.candidate = candidate


class Caller:
    def __init__(
        self,
        sessions: SessionPool,
        secrets: SecretStore,
        metrics: Metrics,
        *,
        max_attempts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._metrics = metrics
        self._max_attempts = max_attempts
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

    async def call(
        self, candidates: Sequence[Candidate], request: ProviderRequest, *, deadline: float
    ) -> CallResult:
        attempts = 0
        last: ProviderError | None = None
        last_cand: Candidate | None = None
        m = self._metrics
        for cand in candidates:
            last_cand = cand
            try:
                target = self._target(cand)
                adapter = get_adapter(cand.provider)
            except AuthError as exc:
                last = exc
                continue
            except KeyError:
                last = BadRequest(
                    f"unknown provider {cand.provider!r} in the registry",
                    provider=cand.provider,
                    model=cand.upstream_model,
                )
                continue
            session = self._sessions.get(adapter.endpoint_for(target))
            for attempt in range(1, self._max_attempts + 1):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise CallFailed(
                        last or ProviderTimeout("request deadline passed before an answer"),
                        attempts,
                        last_cand,
                    )
                attempts += 1
                t0 = self._clock()
                try:
                    if remaining < target.timeout_ms / 1000:
                        async with asyncio.timeout(remaining):
                            result = await adapter.complete(session, target, request)
                    else:  # the adapter's own per-row timeout ends the attempt first
                        result = await adapter.complete(session, target, request)
                except ProviderError as exc:
                    last = exc
                    m.provider_calls.labels(cand.provider, cand.endpoint_name, exc.type).inc()
                except TimeoutError:
                    last = ProviderTimeout(
                        "request deadline passed", provider=cand.provider, model=cand.upstream_model
                    )
                    m.provider_calls.labels(cand.provider, cand.endpoint_name, last.type).inc()
                    raise CallFailed(last, attempts, cand) from None
                else:
                    elapsed = self._clock() - t0
                    ok, latency = self._ok_metrics(cand)
                    ok.inc()
                    latency.observe(elapsed)
                    return CallResult(
                        result=result, candidate=cand, attempts=attempts, latency_ms=elapsed * 1000
                    )
                if not last.retryable or attempt == self._max_attempts:
                    break
                delay = next_delay(last, attempt, remaining=deadline - self._clock())
                if delay is None:
                    break
                await asyncio.sleep(delay)
        assert last is not None, "resolve() never returns an empty candidate list"
        raise CallFailed(last, attempts, last_cand)
