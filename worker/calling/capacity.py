"""Capacity: what a request waits for before each call, and where that wait ends.

Before every attempt a request waits for room in its rate-limit buckets (endpoint, model,
tenant: `ratelimit.py`) and then for a concurrency slot at the endpoint (`concurrency.py`).
That time is capacity, not failure: it moves the request's deadline on, so a backlog under a
tight limit waits instead of failing. But every wait ends somewhere: none runs past the
request's *final* deadline, its deadline plus `capacity_wait_s` (`LLM_WORKER_CAPACITY_WAIT_S`).
A request still waiting then ends with `rate_limited` naming the bucket, or `timeout` naming
the endpoint whose slots it waited for; both retryable (the same prompt may go later).

A request that no bucket could ever take is not queued at all: its tokens (prompt plus
`max_tokens`, the latter capped by the row's `max_tokens` and the worker-wide
`LLM_WORKER_MAX_TOKENS_CAP`) exceed a level's whole per-minute limit. That candidate fails
terminally with `bad_request` naming the limit, and a fallback with room may answer instead.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.errors import BadRequest, ProviderError, ProviderTimeout, RateLimited
from llm_worker.registry.resolve import Candidate

from ..config import Settings
from .concurrency import AdaptiveLimit
from .priority import NORMAL
from .ratelimit import Limit, RateLimiter, RateLimitTimeout, RateRequest
from .results import CallFailed, estimate_tokens
from .routing import endpoint_key

__all__ = [
    "CAPACITY_WAIT_S",
    "NoCapacity",
    "capped",
    "fitting",
    "rate_limiter",
    "rate_request",
    "rate_room",
    "slot",
    "token_cap",
    "tokens_for",
]

CAPACITY_WAIT_S = 600.0
"""How much longer than its deadline a request may wait for capacity, in all: long enough for
a backlog under a tight limit, short enough that capacity that never comes ends in an answer."""


def rate_limiter(settings: Settings) -> RateLimiter:
    """The rate limiter the settings describe: endpoint and tenant limits (the model level's
    come with each call, from the registry row)."""
    rpm, tpm = settings.tenant_rpm or None, settings.tenant_tpm or None
    return RateLimiter(
        endpoints={k: Limit(rpm=r, tpm=t) for k, (r, t) in settings.limits("endpoint").items()},
        tenants={k: Limit(rpm=r, tpm=t) for k, (r, t) in settings.limits("tenant").items()},
        default_tenant=Limit(rpm=rpm, tpm=tpm) if rpm or tpm else None,
        aging_s=settings.priority_aging_s,
    )


class NoCapacity(Exception):
    """The final deadline came while the request waited for capacity."""

    def __init__(self, error: type[ProviderError], why: str) -> None:
        super().__init__(why)
        self.error = error
        self.why = why

    def failed(self, cand: Candidate, attempts: int, held_s: float) -> CallFailed:
        """The request's end, saying which wait it was in."""
        err = self.error(
            f"{self.why}; request deadline passed after {attempts} attempts and {held_s:.1f}s held",
            provider=cand.provider,
            model=cand.upstream_model,
        )
        return CallFailed(err, attempts, cand)


def token_cap(row_max_tokens: int | None, worker_cap: int | None) -> int | None:
    """The most `max_tokens` a request may ask of a row: the row's, within the worker-wide
    cap; None when neither caps it."""
    if row_max_tokens is None or (worker_cap is not None and worker_cap < row_max_tokens):
        return worker_cap
    return row_max_tokens


def capped(request: ProviderRequest, max_tokens_cap: int | None) -> ProviderRequest:
    """`request` asking for at most `max_tokens_cap` tokens (what the provider is sent)."""
    asked = request.max_tokens
    if max_tokens_cap is None or asked is None or asked <= max_tokens_cap:
        return request
    return msgspec.structs.replace(request, max_tokens=max_tokens_cap)


def tokens_for(request: ProviderRequest, cand: Candidate, max_tokens_cap: int | None) -> int:
    """The tokens `request` reserves in `cand`'s tpm buckets."""
    return estimate_tokens(request, token_cap(cand.row.max_tokens, max_tokens_cap))


def rate_request(
    cand: Candidate, tenant: str | None, tokens: int, priority: int = NORMAL
) -> RateRequest:
    """What a call of `tokens` at `cand` for `tenant` asks of the rate limits, waiting with
    `priority` (a rank of `priority.py`)."""
    row = cand.row
    return RateRequest(
        endpoint=endpoint_key(cand),
        model_id=row.model_id,
        rpm=row.rpm_limit,
        tpm=row.tpm_limit,
        tenant=tenant,
        tokens=tokens,
        priority=priority,
    )


def fitting(
    limiter: RateLimiter,
    cand: Candidate,
    request: ProviderRequest,
    tenant: str | None,
    max_tokens_cap: int | None,
    priority: int = NORMAL,
) -> RateRequest:
    """What `request` asks of `cand`'s rate limits (its tokens: `tokens_for`), waiting with
    `priority`. Raises `BadRequest` naming the limit when no bucket of `cand` could ever take
    that many."""
    row = cand.row
    tokens = tokens_for(request, cand, max_tokens_cap)
    ask = rate_request(cand, tenant, tokens, priority)
    limit = limiter.too_large(ask)
    if limit is None:
        return ask
    asked = request.max_tokens
    cap = token_cap(row.max_tokens, max_tokens_cap)
    if asked is not None and cap is not None:
        asked = min(asked, cap)
    what = (
        f"max_tokens {asked} (about {tokens} tokens with the prompt)"
        if asked is not None
        else f"the prompt (about {tokens} tokens with max_tokens)"
    )
    raise BadRequest(
        f"{what} exceeds {limit}: it can never be sent within that limit;"
        " lower max_tokens or the prompt, or raise the limit",
        provider=cand.provider,
        model=cand.upstream_model,
    )


async def rate_room(limiter: RateLimiter, ask: RateRequest, final: float) -> float:
    """Wait for room in every bucket `ask` needs, up to `final`; the seconds waited. Raises
    `NoCapacity` (`rate_limited`, naming the bucket) when `final` came first."""
    try:
        return await limiter.acquire(ask, deadline=final)
    except RateLimitTimeout as exc:
        raise NoCapacity(RateLimited, str(exc)) from None


async def slot(
    slots: AdaptiveLimit,
    cand: Candidate,
    final: float,
    clock: Callable[[], float],
    priority: int = NORMAL,
) -> float:
    """Wait for a concurrency slot at `cand`'s endpoint (with `priority`), up to `final`;
    the seconds waited. Raises `NoCapacity` (`timeout`, naming the endpoint) when `final`
    came first."""
    start = clock()
    try:
        return await slots.acquire(timeout=final - start, priority=priority)
    except TimeoutError:
        why = (
            f"no concurrency slot at {cand.endpoint_name} for {clock() - start:.1f}s"
            f" ({slots.in_use} calls in flight)"
        )
        raise NoCapacity(ProviderTimeout, why) from None
