"""Flow control: which partitions are paused, and why.

A partition is paused at `max_per_partition` messages in flight and resumed at half of that.
When the worker is full of requests waiting for capacity (rate limits, breakers), every
partition is *held* (paused) so the loop can keep polling; held partitions are resumed once
there is room again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["MIN_PER_PARTITION", "FlowControl", "InFlightLimits", "Room"]

MIN_PER_PARTITION = 32
"""The least a partition (or a memory budget) may have in flight."""

Key = tuple[str, int]
PauseFn = Callable[[list[Key]], Awaitable[None]]


class FlowControl:
    def __init__(
        self,
        *,
        pause: PauseFn,
        resume: PauseFn,
        max_per_partition: int,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self._pause = pause
        self._resume = resume
        self.per = max_per_partition
        """The per-partition bound; the consume loop moves it with the adaptive limit."""
        self._on_change = on_change or (lambda _n: None)
        self.paused: set[Key] = set()
        self.held: set[Key] = set()

    async def apply(
        self,
        owned: Iterable[Key],
        in_flight: Callable[[str, int], int],
        *,
        crowded: bool,
    ) -> None:
        """Pause a partition at `max_per_partition`; resume it at half of that.

        Decided from the current counts on each pass, so a partition whose work finished
        before the pause took effect is resumed on the next pass rather than left paused.
        `crowded`: the worker is still mostly full, so held partitions stay held.
        """
        per = self.per
        paused = self.paused
        pause = [k for k in owned if k not in paused and in_flight(*k) >= per]
        resume = [k for k in paused if in_flight(*k) <= per // 2]
        if self.held:  # paused while full of waiting work: resume once there is room
            if crowded:
                resume = [k for k in resume if k not in self.held]
            else:
                self.held.clear()
        if pause:
            await self._pause(pause)
            paused.update(pause)
        if resume:
            await self._resume(resume)
            paused.difference_update(resume)
        if pause or resume:
            self._on_change(len(paused))

    async def hold_all(self, owned: Iterable[Key]) -> None:
        parts = [k for k in owned if k not in self.paused]
        if parts:
            await self._pause(parts)
            self.paused.update(parts)
            self.held.update(parts)
            self._on_change(len(self.paused))

    def forget(self, keys: Iterable[Key]) -> None:
        """Partitions no longer ours."""
        for k in keys:
            self.paused.discard(k)
            self.held.discard(k)
        self._on_change(len(self.paused))


RECHECK_S = 0.05
"""How often a wait for room looks at the limit again (it grows without any work ending)."""


class Room:
    """Room in a full worker: `within(t)` waits up to `t` for in-flight work to drop to 3/4 of
    the limit (room for a batch, not one record at a time), `wake()` is called as work ends.
    The limit can also grow while nothing ends (an endpoint's adaptive limit, before its first
    answer): the wait asks `refresh()` for the limit now every `RECHECK_S`."""

    def __init__(
        self,
        limit: Callable[[], int],
        in_flight: Callable[[], int],
        refresh: Callable[[], int] | None = None,
    ) -> None:
        self._limit = limit
        self._in_flight = in_flight
        self._refresh = refresh or limit
        self._event = asyncio.Event()

    def wake(self) -> None:
        if self._in_flight() <= self._limit() * 3 // 4:
            self._event.set()

    def open(self) -> None:
        """Wake every waiter now (stopping)."""
        self._event.set()

    async def within(self, timeout: float) -> bool:
        """True if there is room now or comes within `timeout`."""
        self._event.clear()
        if self._in_flight() < self._limit():
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(min(left, RECHECK_S)):
                    await self._event.wait()
                break
            except TimeoutError:
                if self._in_flight() < self._refresh():
                    return True
        return self._in_flight() < self._limit()


class InFlightLimits:
    """How many messages may be in flight now: the endpoints' adaptive limits (the `target`),
    within the configured cap and a memory budget (bytes, from an average of record sizes). An
    automatic per-partition bound (`per_partition` 0) follows: twice a fair share."""

    def __init__(
        self, *, cap: int, target: Callable[[], int], per_partition: int, bytes_budget: int
    ) -> None:
        self._cap = cap
        self._target = target
        self._per_partition = per_partition
        self._budget = bytes_budget
        self.avg_bytes = 1024.0

    def seen(self, size: int) -> None:
        self.avg_bytes += (size - self.avg_bytes) * 0.01

    def ceiling(self) -> int:
        """The most messages in flight whatever the endpoints' limits: the cap, within the
        memory budget."""
        if self._budget:
            return min(self._cap, max(MIN_PER_PARTITION, int(self._budget / self.avg_bytes)))
        return self._cap

    def now(self, owned: int, flow: FlowControl) -> int:
        limit = min(self.ceiling(), self._target())
        if not self._per_partition:
            flow.per = max(MIN_PER_PARTITION, -(-2 * limit // max(owned, 1)))
        return limit
