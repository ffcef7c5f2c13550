"""Flow control: which partitions are paused, and why.

A partition is paused at `max_per_partition` messages in flight and resumed at half of that.
When the worker is full of requests waiting for capacity (rate limits, breakers), every
partition is *held* (paused) so the loop can keep polling; held partitions are resumed once
there is room again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

__all__ = ["FlowControl"]

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
        self._per = max_per_partition
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
        per = self._per
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
