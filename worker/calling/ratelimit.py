"""Token buckets per endpoint, per model and per tenant (requests/minute and tokens/minute).

An empty bucket makes the caller *wait* (backpressure); it never drops or fails a request. Only
the caller's deadline ends a wait (`RateLimitTimeout`, raised when the deadline comes: until
then a raised limit or a replica leaving may still let the request go).

No request takes more than `MAX_RESERVE_S` (a minute) of a bucket's rate, however many tokens
it asks for; `too_large` names a limit a request can never fit in (the caller refuses it).

Each level is a GCRA `TokenBucket` (`buckets.py`).

`RateLimiter.acquire` takes from every level at once when all have capacity (the fast path: no
await, a few microseconds). Otherwise it *reserves* its place only in the strictest bucket, which
makes that bucket first-come first-served (a 4,000-token request is not starved by small ones),
sleeps until then and looks again; other levels are not held meanwhile, so one slow tenant never
blocks an endpoint that others share. A cancelled or timed-out waiter gives its place back.

Places are handed out only a little ahead: a bucket's waiters line up by priority (`high`
first, with aging: `priority.py`) and only the first of the line, its *head*, looks for a
place, taking one once it comes within the bucket's burst plus `PLACE_AHEAD_S`; then the next
in line becomes head. So a `high` request that comes behind a backlog of `low` ones waits for
about a burst's worth of places, not the backlog, while the reserved places keep the bucket
closed to newcomers (a big request still gets its turn).

`penalize` (a provider's 429 with Retry-After) pauses a bucket: nothing goes before the pause
ends, the bucket restarts empty, and places already handed out move back by the pause.

`share` (1/replicas, `share.py`) scales every limit, so N replicas together stay within a
row's limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import msgspec

from .buckets import TokenBucket
from .priority import AGING_S, NORMAL, Lanes
from .share import replica_share

__all__ = [
    "Limit",
    "LimiterSizes",
    "LimiterStats",
    "RateLimitTimeout",
    "RateLimiter",
    "RateRequest",
    "TokenBucket",
    "replica_share",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

PLACE_AHEAD_S = 0.1
"""A bucket's head takes its place once the place comes within the bucket's burst plus this:
the waiters behind it stay in priority order until then."""

MAX_RESERVE_S = 60.0
"""The most one request (or usage charge) takes from a tokens bucket: more would block every
request behind it for longer (31,000 years for a `max_tokens` of 10**15 at 60,000 a minute)."""


class RateLimitTimeout(Exception):
    """The request's deadline came while it waited for rate-limit capacity."""

    def __init__(self, bucket: str, wait_s: float, waited_s: float) -> None:
        super().__init__(
            f"rate limit {bucket} had no capacity for {waited_s:.1f} s"
            f" (it needed {wait_s:.1f} s more)"
        )
        self.bucket = bucket
        self.wait_s = wait_s  # how much longer it would have had to wait
        self.waited_s = waited_s


class Limit(msgspec.Struct, frozen=True, kw_only=True):
    """Configured limits of an endpoint or a tenant; None (or <= 0) means unlimited, as does
    a registry row's NULL/0 `rpm_limit` / `tpm_limit`."""

    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRequest:
    """What one call asks of the rate limits: `tokens` (estimated: prompt plus max_tokens) at
    `endpoint`, for the registry row `model_id` whose own limits are `rpm`/`tpm` (None: none),
    on behalf of `tenant` (None: no tenant level), of `priority` (a rank of `priority.py`:
    0 high, 1 normal, 2 low) where it waits."""

    endpoint: str
    model_id: str
    rpm: int | None = None
    tpm: int | None = None
    tenant: str | None = None
    tokens: int = 1
    priority: int = NORMAL


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterSizes:
    """State the limiter keeps: buckets per endpoint, model and tenant, and pause gates."""

    endpoints: int
    models: int
    tenants: int
    gates: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterStats:
    """Requests waiting now; acquires in all, those that waited, their seconds, deadlines that
    came first, Retry-After pauses; buckets kept; this replica's share of the limits."""

    waiting: int
    acquired: int
    delayed: int
    waited_s: float
    timeouts: int
    penalties: int
    buckets: int
    share: float
    waiting_by: tuple[int, int, int] = (0, 0, 0)
    """`waiting` by priority: high, normal, low."""


class _Level:
    """The buckets of one name at one level (endpoint, model or tenant)."""

    __slots__ = ("limit", "name", "rpm", "tpm")

    def __init__(self, name: str) -> None:
        self.name = name
        self.limit: tuple[int | None, int | None] = (None, None)
        self.rpm: TokenBucket | None = None
        self.tpm: TokenBucket | None = None


class _Line:
    """The waiters of one bucket that hold no place in it yet, but the head: they wait their
    turn in `lanes`, by priority. A bucket has a line while it has a head."""

    __slots__ = ("lanes",)

    def __init__(self, aging_s: float) -> None:
        self.lanes: Lanes[asyncio.Future[None]] = Lanes(aging_s)


class RateLimiter:
    """Waits until the endpoint, the model and the tenant all have capacity.

    - `endpoints`: configured limits per endpoint_name. Every endpoint also has a pause gate
      for `penalize`, limits or not.
    - model level: `rpm`/`tpm` passed per call (the registry row's `rpm_limit`/`tpm_limit`;
      a row update takes effect on the next call).
    - `tenants` / `default_tenant`: per-tenant limits; `tenant=None` skips the level. Each
      tenant gets its own buckets, also with the default limits.
    - `burst_s`: a bucket holds `burst_s` seconds of its rate (at least one unit).
    - `share`: every limit is multiplied by it (`set_share(replicas)`).
    - `max_nap_s`: a waiter looks again at least this often, so a raised limit (a row update,
      fewer replicas) speeds up requests already waiting.
    - `aging_s`: a waiter in a bucket's line rises one priority per `aging_s` waited.
    """

    def __init__(
        self,
        *,
        endpoints: Mapping[str, Limit] | None = None,
        tenants: Mapping[str, Limit] | None = None,
        default_tenant: Limit | None = None,
        burst_s: float = 1.0,
        share: float = 1.0,
        max_buckets: int = 10_000,
        max_nap_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        aging_s: float = AGING_S,
    ) -> None:
        if not burst_s > 0:
            raise ValueError("burst_s must be > 0")
        if not aging_s > 0:
            raise ValueError("aging_s must be > 0")
        self._endpoint_limits = {k: (v.rpm, v.tpm) for k, v in (endpoints or {}).items()}
        self._tenant_limits = {k: (v.rpm, v.tpm) for k, v in (tenants or {}).items()}
        self._default_tenant = (
            None if default_tenant is None else (default_tenant.rpm, default_tenant.tpm)
        )
        self._burst_s = burst_s
        self._share = 1.0
        self._max_buckets = max_buckets
        self._max_nap = max_nap_s
        self._clock = clock
        self._sleep = sleep
        self._endpoints: dict[str, _Level] = {}
        self._models: dict[str, _Level] = {}
        self._tenants: dict[str, _Level] = {}
        self._gates: dict[str, TokenBucket] = {}
        self._lines: dict[TokenBucket, _Line] = {}
        self._aging = aging_s
        self.waiting = 0
        """Acquires sleeping right now (pause partitions when this grows)."""
        self.waiting_by = [0, 0, 0]
        """Of them, by priority rank: high, normal, low."""
        self._acquired = 0
        self._delayed = 0
        self._waited_s = 0.0
        self._timeouts = 0
        self._penalties = 0
        self.set_share(share)

    # -- configuration ---------------------------------------------------------------------
    @property
    def share(self) -> float:
        return self._share

    def set_share(self, share_or_replicas: float) -> None:
        """`set_share(0.5)` or `set_share(2)` (a replica count): each replica gets 1/N."""
        s = float(share_or_replicas)
        if s > 1:
            s = 1.0 / s
        if not 0 < s <= 1:
            raise ValueError(f"share must be in (0, 1] or a replica count >= 1, got {s}")
        self._share = s
        for table in (self._endpoints, self._models, self._tenants):
            for level in table.values():
                self._configure(level, level.limit)

    def _bucket(self, b: TokenBucket | None, per_min: int | None, name: str) -> TokenBucket | None:
        if per_min is None or per_min <= 0:
            return None
        rate = per_min * self._share / 60.0
        burst = max(1.0, rate * self._burst_s)
        if b is None:
            return TokenBucket(rate, burst, self._clock, name=name)
        b.set_rate(rate, burst)
        return b

    def _configure(self, level: _Level, limit: tuple[int | None, int | None]) -> None:
        level.limit = limit
        level.rpm = self._bucket(level.rpm, limit[0], f"{level.name}:rpm")
        level.tpm = self._bucket(level.tpm, limit[1], f"{level.name}:tpm")

    def _level(
        self, table: dict[str, _Level], key: str, limit: tuple[int | None, int | None], kind: str
    ) -> _Level:
        level = table.get(key)
        if level is None:
            if len(table) >= self._max_buckets:
                self._prune(table)
            level = table[key] = _Level(f"{kind}:{key}")
            self._configure(level, limit)
        elif level.limit != limit:
            self._configure(level, limit)
        return level

    def _prune(self, table: dict[str, _Level]) -> None:
        now = self._clock()
        for key in [
            k
            for k, lv in table.items()
            if (lv.rpm is None or lv.rpm.idle(now)) and (lv.tpm is None or lv.tpm.idle(now))
        ]:
            del table[key]

    def forget(self, endpoints: set[str], models: set[str]) -> None:
        """Drop the idle buckets of endpoints and models not in the sets (a full bucket is what
        a new one would be: nothing is lost), and idle tenants' buckets."""
        now = self._clock()
        for table, keep in ((self._endpoints, endpoints), (self._models, models)):
            for key in [k for k in table if k not in keep]:
                lv = table[key]
                if (lv.rpm is None or lv.rpm.idle(now)) and (lv.tpm is None or lv.tpm.idle(now)):
                    del table[key]
        self._prune(self._tenants)
        for key in [k for k, g in self._gates.items() if k not in endpoints and g.idle(now)]:
            del self._gates[key]

    def sizes(self) -> LimiterSizes:
        return LimiterSizes(
            endpoints=len(self._endpoints),
            models=len(self._models),
            tenants=len(self._tenants),
            gates=len(self._gates),
        )

    def _gate(self, endpoint: str) -> TokenBucket:
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = TokenBucket(math.inf, math.inf, self._clock, name=f"endpoint:{endpoint}:pause")
            self._gates[endpoint] = gate
        return gate

    def penalize(self, endpoint: str, seconds: float) -> None:
        """A provider's 429 with Retry-After: nothing goes to `endpoint` for `seconds`."""
        self._penalties += 1
        self._gate(endpoint).penalize(seconds)
        level = self._endpoints.get(endpoint)
        if level is not None:
            for b in (level.rpm, level.tpm):
                if b is not None:
                    b.penalize(seconds)

    # -- the hot path ----------------------------------------------------------------------
    def _needs(self, req: RateRequest) -> list[tuple[TokenBucket, float]]:
        endpoint, tenant, tokens = req.endpoint, req.tenant, float(req.tokens)
        gate = self._gates.get(endpoint) or self._gate(endpoint)
        needs: list[tuple[TokenBucket, float]] = [(gate, 1.0)]
        levels: list[_Level] = []
        lim = self._endpoint_limits.get(endpoint)
        if lim is not None:
            levels.append(self._level(self._endpoints, endpoint, lim, "endpoint"))
        if req.rpm is not None or req.tpm is not None:
            levels.append(self._level(self._models, req.model_id, (req.rpm, req.tpm), "model"))
        if tenant is not None:
            tl = self._tenant_limits.get(tenant, self._default_tenant)
            if tl is not None:
                levels.append(self._level(self._tenants, tenant, tl, "tenant"))
        for level in levels:
            if level.rpm is not None:
                needs.append((level.rpm, 1.0))
            if level.tpm is not None and tokens > 0:
                needs.append((level.tpm, min(tokens, level.tpm.rate * MAX_RESERVE_S)))
        return needs

    def too_large(self, req: RateRequest) -> str | None:
        """The limit `req` can never fit in: a level whose whole per-minute token limit
        (cluster-wide, as configured) is smaller than its tokens, named as an operator wrote
        it; None when every level could serve it."""
        endpoint, tenant, tokens = req.endpoint, req.tenant, req.tokens
        el = self._endpoint_limits.get(endpoint)
        if el is not None and el[1] is not None and 0 < el[1] < tokens:
            return f"the tpm limit {el[1]} of endpoint {endpoint} (LLM_WORKER_ENDPOINT_LIMITS)"
        if req.tpm is not None and 0 < req.tpm < tokens:
            return f"the tpm limit {req.tpm} of registry row {req.model_id!r} (its tpm_limit)"
        tl = None if tenant is None else self._tenant_limits.get(tenant, self._default_tenant)
        if tl is not None and tl[1] is not None and 0 < tl[1] < tokens:
            which = "LIMITS" if tenant in self._tenant_limits else "TPM"
            return f"the tpm limit {tl[1]} of tenant {tenant!r} (LLM_WORKER_TENANT_{which})"
        return None

    def has_capacity(self, req: RateRequest) -> bool:
        """Would `acquire(req)` go at once? Takes nothing."""
        now = self._clock()
        return _free(self._needs(req), now)

    def take_now(self, req: RateRequest) -> bool:
        """Take what `req` needs when every bucket has it now (True); else take nothing. The
        hot path, without the coroutine `acquire` is."""
        needs = self._needs(req)
        now = self._clock()
        if not _free(needs, now):
            return False
        for b, n in needs:
            b.reserve(n, now)
        self._acquired += 1
        return True

    async def acquire(self, req: RateRequest, *, deadline: float | None = None) -> float:
        """Wait until every level has capacity for `req`, take it, and return the seconds
        waited.

        `req.tokens` is the estimated size of the request (prompt + max_tokens) for the tpm
        buckets; each takes at most `MAX_RESERVE_S` of its rate. Raises `RateLimitTimeout`,
        having taken nothing, when `deadline` (a time on the limiter's clock) comes first.
        """
        if self.take_now(req):
            return 0.0
        needs = self._needs(req)
        start = self._clock()
        prio = req.priority
        self.waiting += 1
        self.waiting_by[prio] += 1
        try:
            await self._queue(needs, start, deadline, prio)
        finally:
            self.waiting -= 1
            self.waiting_by[prio] -= 1
        waited = self._clock() - start
        self._acquired += 1
        self._delayed += 1
        self._waited_s += waited
        return waited

    async def _queue(
        self,
        needs: list[tuple[TokenBucket, float]],
        start: float,
        deadline: float | None,
        prio: int,
    ) -> None:
        """Wait until every one of `needs` has capacity, then take it. Raises
        `RateLimitTimeout` when `deadline` comes first; a wait that ends so, or is cancelled,
        gives back the places it held."""
        held: list[tuple[TokenBucket, float, float, float]] = []  # bucket, n, place, mark
        head: tuple[TokenBucket, float] | None = None  # the bucket whose line this one heads
        try:
            while True:
                now = self._clock()
                when, _, why = _soonest(needs, held, now)
                if when <= now:
                    for b, n in needs:
                        b.reserve(n, now)
                    held.clear()
                    return
                if deadline is not None and now >= deadline:
                    self._timeouts += 1
                    raise RateLimitTimeout(why, when - now, now - start)
                if head is None and (head := _strictest(needs, now)) is not None:
                    # line up there, by priority (a pause gate keeps no line)
                    if not await self._turn(head[0], prio, deadline):
                        head = None
                    continue  # time passed in the line: look again
                until = when if head is None else self._take_place(head, held, now)
                if until is None:  # a place taken: the next in line heads it
                    needs = [x for x in needs if head is None or x[0] is not head[0]]
                    head = None
                    continue
                await self._nap(until - now, None if deadline is None else deadline - now)
        except BaseException:  # timed out or cancelled: give the places back
            for b, n, _, mark in held:
                b.refund(n, mark)
            raise
        finally:
            if head is not None:
                self._next(head[0])

    def _take_place(
        self,
        head: tuple[TokenBucket, float],
        held: list[tuple[TokenBucket, float, float, float]],
        now: float,
    ) -> float | None:
        """As the head of a bucket's line: take a place in it if one comes within the burst
        plus `PLACE_AHEAD_S` (None: taken, the next in line heads it), else when to look."""
        b, n = head
        t = b.earliest(n, now)
        ahead = b._tau + PLACE_AHEAD_S
        if t - now > ahead + 1e-6:  # (a nap rounds: never nap for 1e-17 s)
            return t - ahead
        # its place in the line's bucket: first come, first served from here
        held.append((b, n, b.place(t), b.reserve(n, t)))
        self._next(b)
        return None

    async def _turn(self, b: TokenBucket, prio: int, deadline: float | None) -> bool:
        """Wait in `b`'s line until this waiter heads it (True) or `deadline` came (False)."""
        line = self._lines.get(b)
        if line is None:  # nobody heads it: this waiter does
            self._lines[b] = _Line(self._aging)
            return True
        now = self._clock()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = line.lanes.push(fut, prio, now)
        try:
            if deadline is None:
                await fut
            else:
                nap = asyncio.ensure_future(self._sleep(deadline - now))
                try:
                    await asyncio.wait((fut, nap), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    nap.cancel()
        except BaseException:
            if fut.done() and not fut.cancelled():  # made head just as it gave up: pass it on
                self._next(b)
            else:
                fut.cancel()
                line.lanes.remove(entry, prio)
            raise
        if fut.done():
            return True
        fut.cancel()
        line.lanes.remove(entry, prio)
        return False

    def _next(self, b: TokenBucket) -> None:
        """The head of `b`'s line took its place or left: the next in line heads it."""
        line = self._lines.get(b)
        if line is None:
            return
        lanes = line.lanes
        now = self._clock()
        while lanes.n:
            fut = lanes.pop(now)
            if not fut.done():
                fut.set_result(None)
                return
        del self._lines[b]

    async def _nap(self, until_free: float, until_deadline: float | None) -> None:
        """Sleep until capacity should be free, the deadline, or `max_nap_s`, the soonest."""
        nap = min(until_free, self._max_nap)
        if until_deadline is not None:
            nap = min(nap, until_deadline)
        await self._sleep(nap)

    def charge(self, req: RateRequest, used: int) -> None:
        """Debit the tokens `used` beyond `req.tokens`, the estimate (from the provider's
        usage), without waiting: later requests wait for them instead (at most `MAX_RESERVE_S`
        of each bucket's rate: a provider's usage figure is not trusted to block a bucket for
        longer)."""
        tokens = used - req.tokens
        if tokens <= 0:
            return
        now = self._clock()
        for level in (
            self._endpoints.get(req.endpoint),
            self._models.get(req.model_id),
            None if req.tenant is None else self._tenants.get(req.tenant),
        ):
            if level is not None and level.tpm is not None:
                level.tpm.reserve(min(tokens, level.tpm.rate * MAX_RESERVE_S), now)

    def stats(self) -> LimiterStats:
        return LimiterStats(
            waiting=self.waiting,
            acquired=self._acquired,
            delayed=self._delayed,
            waited_s=self._waited_s,
            timeouts=self._timeouts,
            penalties=self._penalties,
            buckets=len(self._endpoints) + len(self._models) + len(self._tenants),
            share=self._share,
            waiting_by=(self.waiting_by[0], self.waiting_by[1], self.waiting_by[2]),
        )


def _free(needs: list[tuple[TokenBucket, float]], now: float) -> bool:
    """Every bucket has room for its share of the request `now`."""
    return all(b.earliest(n, now) <= now for b, n in needs)


def _strictest(
    needs: list[tuple[TokenBucket, float]], now: float
) -> tuple[TokenBucket, float] | None:
    """The rate bucket of `needs` (not a pause gate) with room latest, if it has none now."""
    worst: tuple[TokenBucket, float] | None = None
    latest = now
    for b, n in needs:
        if b._interval:
            t = b.earliest(n, now)
            if t > latest:
                latest, worst = t, (b, n)
    return worst


def _soonest(
    needs: list[tuple[TokenBucket, float]],
    held: list[tuple[TokenBucket, float, float, float]],
    now: float,
) -> tuple[float, tuple[TokenBucket, float] | None, str]:
    """When every bucket has room (`now` if they all do), the bucket of `needs` that holds the
    request back longest (None: one of the places `held`), and its name."""
    when = now
    worst: tuple[TokenBucket, float] | None = None
    why = ""  # the bucket that holds the request back
    for b, n in needs:
        t = b.earliest(n, now)
        if t > when:
            when, worst, why = t, (b, n), b.name
    for b, _, place, _ in held:  # our places, as pauses and rate changes moved them
        t = b.when(place)
        if t > when:
            when, worst, why = t, None, b.name
    return when, worst, why
