"""Adaptive concurrency: how many calls each endpoint gets at once, learned, not configured.

An LLM endpoint's latency is mostly its own (0.5 to 20 s whatever we do), so the right number of
calls in flight is Little's law: the rate the backlog needs times that latency, up to what the
endpoint can serve. Nobody knows either in advance, and both move. So each endpoint's limit is
found by probing, in windows of at least `WINDOW_S` and 1.5 call latencies (a growth shows in
the throughput only once the calls it added have finished), with `MIN_SAMPLES` calls or more:

- **grow** (times `SLOW_START_GROWTH` until the first step back, and again once latency has
  doubled since, else `GROWTH`): the window was *saturated* (calls waited for a slot, or every
  slot was busy), no overload was seen, and the last growth paid: the endpoint's throughput
  (calls in flight over their latency) rose by `PAYOFF` or more. A provider whose latency does
  not depend on our load keeps paying, so the limit climbs until the backlog is served; one
  that only queues our calls stops paying. Latency that rose far more than a growth explains
  is the provider slowing down by itself: the search starts again from there.
- **step back** (to `PLATEAU_BACKOFF` times the limit before the growth): the growth did not
  raise throughput (the provider queues our calls: more concurrency only adds latency). The
  next growth is tried after `RETRY_S`.
- **back off** (to `OVERLOAD_BACKOFF` times the calls in flight when it happened): the
  endpoint said it is overloaded (429, 503/529, a timeout, a refused connection); at most once
  per window.

Before an endpoint's first answer there is no window to judge: its latency is unknown, and a
2 s provider would wait two seconds per doubling while a backlog piles up. So once no call has
answered for `BLIND_AFTER_S` (a slow provider: a fast one has answered by then, and its windows
start at once), and only in slow start with no overload seen, a waiting backlog doubles the
limit every `PROBE_S`, up to `BLIND_LIMIT`: the first latency of a slow provider is spent
finding thousands of slots, not 128. What stops it is what stops any growth: the first answer (the
windows take over and judge the growth by its payoff), or an overload (a 429 comes back in
milliseconds, long before a slow answer would).

Limits stay within [`MIN_LIMIT`, the worker's `LLM_WORKER_MAX_IN_FLIGHT`]. A request waiting
for a slot is held (in flight, not failed); the consume loop takes new records only while the
sum of the endpoints' limits (plus a margin) has room, within a memory budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .priority import AGING_S, NORMAL, Lanes

__all__ = ["AdaptiveLimit", "ConcurrencyLimits", "EndpointConcurrency"]

WINDOW_S = 1.0
MIN_SAMPLES = 10
GROWTH = 1.25
SLOW_START_GROWTH = 2.0
"""Until an endpoint first plateaus or overloads, its limit doubles per window (TCP's slow
start): a 2 s provider needs thousands of calls in flight, found in a few windows."""
PAYOFF = 1.1
PLATEAU_BACKOFF = 0.9
OVERLOAD_BACKOFF = 0.7
RETRY_S = 10.0
EXTERNAL_SLOWDOWN = 1.5
RESTART_LATENCY = 2.0
"""Latency this many times what it was when the limit settled restarts the slow start."""
MIN_LIMIT = 4
START_LIMIT = 128
"""The first limit of an endpoint: what a fixed worker used to allow in all."""
BLIND_AFTER_S = 0.75
"""No answer this long after an endpoint's first call: it is slow, and a backlog ..."""
PROBE_S = 0.15
"""... doubles its limit this often until the first answer ..."""
BLIND_LIMIT = 4096
"""... up to this: a 2 s provider's first latency buys 4,096 calls in flight (2,000/s)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConcurrency:
    """One endpoint's concurrency now (`limit`, calls `in_use`, requests `waiting` for a slot)
    and how often its limit moved, by why: `grow`, `plateau`, `overload`."""

    limit: float
    in_use: int
    waiting: int
    grow: int
    plateau: int
    overload: int
    waiting_by: tuple[int, int, int] = (0, 0, 0)
    """`waiting` by priority: high, normal, low."""


class AdaptiveLimit:
    """The concurrency limit of one endpoint (no I/O; `clock` is injected)."""

    def __init__(
        self,
        *,
        cap: int,
        clock: Callable[[], float] = time.monotonic,
        aging_s: float = AGING_S,
    ) -> None:
        self.cap = max(cap, MIN_LIMIT)
        self.limit = float(min(START_LIMIT, self.cap))
        self.in_use = 0
        # waiters by priority (`priority.py`: higher first, aging against starvation)
        self._queue: Lanes[asyncio.Future[None]] = Lanes(aging_s)
        self.waited_s = 0.0
        self.changes: dict[str, int] = {"grow": 0, "plateau": 0, "overload": 0}
        self._clock = clock
        self._start = clock()
        self._done = 0
        self._saturated = False
        self._overload: int | None = None  # calls in flight when the first overload came
        self._grew_from: float | None = None  # throughput before the last growth
        self._grew_limit_from = self.limit  # and the limit
        self._grew_latency = 0.0  # and the latency
        self._retry_at = 0.0
        self._latency = 0.0  # EWMA of answered calls' latency (s)
        self._slow_start = True
        self._settled_latency = 0.0
        self._lat_sum = 0.0  # this window's answered calls: their latencies, summed
        self._busy_sum = 0.0  # and the calls in flight when each ended, summed
        self._probed_at = self._start  # the last doubling before the first answer
        self._probe: asyncio.TimerHandle | None = None  # the next one, while requests wait

    @property
    def slots(self) -> int:
        return max(MIN_LIMIT, math.floor(self.limit))

    def try_acquire(self) -> bool:
        """Take a slot if one is free now (and nobody is waiting for one)."""
        if self.in_use < self.slots and not self._queue.n:
            self.in_use += 1
            if self.in_use >= self.slots:
                self._saturated = True
            return True
        self._saturated = True
        if self._blind_growth():
            self._hand_over()
            if self.in_use < self.slots and not self._queue.n:
                self.in_use += 1
                return True
        return False

    @property
    def _blind(self) -> bool:
        """No answer yet, nothing said to slow down, room to grow: the time to probe."""
        return (
            not self._latency
            and self._slow_start
            and self._overload is None
            and self.limit < min(self.cap, BLIND_LIMIT)
        )

    def _blind_growth(self) -> bool:
        """Before the first answer: double the limit if `PROBE_S` passed since the last time."""
        if not self._blind:
            return False
        now = self._clock()
        if now - self._start < BLIND_AFTER_S or now - self._probed_at < PROBE_S:
            return False
        self._probed_at = now
        self._grew_from = None  # no throughput known to judge this growth by
        self._set(min(self.cap, BLIND_LIMIT, self.limit * SLOW_START_GROWTH), "grow")
        return True

    def _probe_tick(self) -> None:
        """The timer while requests wait before the first answer (none arrive to try)."""
        self._probe = None
        if self._blind_growth():
            self._hand_over()
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._probe is None and self._queue.n and self._blind:
            loop = asyncio.get_running_loop()
            due = max(self._probed_at + PROBE_S, self._start + BLIND_AFTER_S)
            delay = max(0.0, due - self._clock())
            self._probe = loop.call_later(delay, self._probe_tick)

    async def acquire(self, timeout: float | None = None, priority: int = NORMAL) -> float:
        """Wait for a slot (higher `priority` rank first, then first come, first served, with
        aging: `priority.py`); returns how long it waited (s). Raises `TimeoutError`, holding
        no slot, when none came within `timeout` seconds."""
        if self.try_acquire():
            return 0.0
        t0 = self._clock()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self._queue.push(fut, priority, t0)
        self._schedule_probe()
        try:
            async with asyncio.timeout(timeout):
                await fut  # `_hand_over` counted the slot as ours
        except (asyncio.CancelledError, TimeoutError):
            if fut.done() and not fut.cancelled():
                self.in_use -= 1  # handed over just as we gave up: give it back
                self._hand_over()
            else:
                fut.cancel()
                self._queue.remove(entry, priority)  # no longer waiting: not counted
            raise
        waited = self._clock() - t0
        self.waited_s += waited
        return waited

    @property
    def waiting(self) -> int:
        return self._queue.n

    def waiting_by_priority(self) -> tuple[int, int, int]:
        """Requests waiting for a slot now: high, normal, low."""
        return self._queue.counts()

    def release(self, *, ok: bool, overloaded: bool = False, latency_s: float = 0.0) -> None:
        """A call ended: `ok` when it answered, `overloaded` when the endpoint said so."""
        self.in_use -= 1
        if ok:
            self._done += 1
            self._latency += (latency_s - self._latency) * (0.1 if self._latency else 1.0)
            self._lat_sum += latency_s
            self._busy_sum += self.in_use + 1
        if overloaded and self._overload is None:
            self._overload = self.in_use + 1
        self._maybe_adjust()
        self._hand_over()

    def _hand_over(self) -> None:
        queue = self._queue
        while queue.n and self.in_use < self.slots:
            fut = queue.pop(self._clock())
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    def _maybe_adjust(self) -> None:
        now = self._clock()
        span = now - self._start
        if span < max(WINDOW_S, 1.5 * self._latency) or (
            self._done < MIN_SAMPLES and self._overload is None
        ):
            return
        # throughput by Little's law (calls in flight over their latency): steadier than a
        # count of completions while the limit moves, and flat when the provider only queues
        rate = self._busy_sum / self._lat_sum if self._lat_sum > 0 else self._done / span
        window_latency = self._lat_sum / self._done if self._done else self._latency
        # latency up by far more than the growth could cause: the provider slowed down by
        # itself, so this window says nothing about the growth (and the search starts again)
        external = window_latency > EXTERNAL_SLOWDOWN * self._grew_latency * (
            self.limit / self._grew_limit_from
        )
        if self._overload is not None:
            self._set(max(MIN_LIMIT, self._overload * OVERLOAD_BACKOFF), "overload")
            self._settle(now)
        elif external and self._grew_from is not None:
            self._grew_from, self._slow_start, self._retry_at = None, True, now
        elif self._grew_from is not None and self._saturated and rate < self._grew_from * PAYOFF:
            self._set(max(MIN_LIMIT, self._grew_limit_from * PLATEAU_BACKOFF), "plateau")
            self._settle(now)
        else:
            if not self._slow_start and self._latency > RESTART_LATENCY * self._settled_latency:
                self._slow_start, self._retry_at = True, now  # the provider slowed: search again
            if self._saturated and now >= self._retry_at and self.limit < self.cap:
                growth = SLOW_START_GROWTH if self._slow_start else GROWTH
                self._grew_from, self._grew_limit_from = rate, self.limit
                self._grew_latency = window_latency
                self._set(min(self.cap, self.limit * growth), "grow")
            else:
                self._grew_from = None  # not saturated: nothing to learn from this window
        self._start, self._done, self._saturated, self._overload = now, 0, False, None
        self._lat_sum = self._busy_sum = 0.0

    def _settle(self, now: float) -> None:
        self._grew_from, self._retry_at, self._slow_start = None, now + RETRY_S, False
        self._settled_latency = self._latency

    def _set(self, limit: float, why: str) -> None:
        self.limit = limit
        self.changes[why] += 1


class ConcurrencyLimits:
    """Every endpoint's `AdaptiveLimit`, by health key; at most `max_endpoints` kept."""

    def __init__(
        self,
        *,
        cap: int,
        max_endpoints: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        aging_s: float = AGING_S,
    ) -> None:
        self.cap = cap
        self._max = max_endpoints
        self._clock = clock
        self._aging = aging_s
        self.by_endpoint: dict[str, AdaptiveLimit] = {}
        self._forgotten_wait_s = 0.0

    def get(self, key: str) -> AdaptiveLimit:
        lim = self.by_endpoint.get(key)
        if lim is None:
            if len(self.by_endpoint) >= self._max:  # forget an idle one (oldest first)
                for old, candidate in list(self.by_endpoint.items()):
                    if not candidate.in_use and not candidate.waiting:
                        self._forgotten_wait_s += candidate.waited_s
                        del self.by_endpoint[old]
                        break
            lim = self.by_endpoint[key] = AdaptiveLimit(
                cap=self.cap, clock=self._clock, aging_s=self._aging
            )
        return lim

    @property
    def waiting(self) -> int:
        return sum(lim.waiting for lim in self.by_endpoint.values())

    def waiting_by_priority(self) -> tuple[int, int, int]:
        """Requests waiting for a slot at any endpoint now: high, normal, low."""
        high = normal = low = 0
        for lim in self.by_endpoint.values():
            if lim.waiting:
                h, n, lo = lim.waiting_by_priority()
                high, normal, low = high + h, normal + n, low + lo
        return high, normal, low

    def forget(self, keep: set[str]) -> None:
        """Drop the idle limits of endpoints not in `keep`."""
        for key, lim in list(self.by_endpoint.items()):
            if key not in keep and not lim.in_use and not lim.waiting:
                self._forgotten_wait_s += lim.waited_s
                del self.by_endpoint[key]

    @property
    def waited_s(self) -> float:
        """Seconds requests spent waiting for a slot, in all."""
        return self._forgotten_wait_s + sum(lim.waited_s for lim in self.by_endpoint.values())

    def total(self) -> int:
        """The sum of the limits of endpoints in use or waited for (what intake should feed)."""
        busy = [lim.slots for lim in self.by_endpoint.values() if lim.in_use or lim.waiting]
        return sum(busy) if busy else START_LIMIT

    def stats(self) -> dict[str, EndpointConcurrency]:
        return {
            key: EndpointConcurrency(
                limit=lim.slots,
                in_use=lim.in_use,
                waiting=lim.waiting,
                grow=lim.changes["grow"],
                plateau=lim.changes["plateau"],
                overload=lim.changes["overload"],
                waiting_by=lim.waiting_by_priority(),
            )
            for key, lim in self.by_endpoint.items()
        }
