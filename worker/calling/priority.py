"""Request priority where requests wait: `high`, `normal`, `low`, with aging.

A prompt's `priority` (else its registry row's, else `normal`) orders the requests the worker
has taken wherever they wait for capacity: a rate-limit bucket's line (`ratelimit.py`) and an
endpoint's concurrency slots (`concurrency.py`). A waiter of higher priority is served before
lower ones; within a priority, first come, first served.

Anti-starvation (aging): a waiter's effective priority rises one level per `aging_s` seconds
it has waited (`LLM_WORKER_PRIORITY_AGING_S`), up to `high`; among equal effective
priorities the one that waited longest goes first. So a `low` waiter ranks as `normal` after
`aging_s` and as `high` after twice that, when it goes ahead of every `high` that came after
it: however many `high` requests keep coming, it waits at most about `2 * aging_s` plus the
time to serve the `high` ones already waiting then.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = [
    "AGING_S",
    "HIGH",
    "LOW",
    "NAMES",
    "NORMAL",
    "RANKS",
    "Lanes",
    "rank",
]

HIGH, NORMAL, LOW = 0, 1, 2
"""Ranks: a lower number goes first."""
NAMES = ("high", "normal", "low")
"""The names, by rank."""
AGING_S = 30.0
"""The default: a waiter rises one level per this many seconds waited."""

RANKS = {name: i for i, name in enumerate(NAMES)}
"""Ranks by name."""

T = TypeVar("T")


def rank(name: str | None) -> int:
    """The rank of a priority's name (None: `normal`). Raises KeyError for another name."""
    return NORMAL if name is None else RANKS[name]


class Lanes(Generic[T]):
    """Waiters in three first-come first-served lanes, one per priority. `pop` takes the
    waiter whose effective priority (its rank less one per `aging_s` waited) is the highest,
    the longest waiting among equals. Every operation looks at three lane heads at most: the
    oldest of a lane is also the one aged most."""

    __slots__ = ("_aging", "_lanes", "n")

    def __init__(self, aging_s: float = AGING_S) -> None:
        if not aging_s > 0:
            raise ValueError(f"aging_s must be > 0, got {aging_s}")
        self._aging = aging_s
        self._lanes: tuple[collections.deque[tuple[float, T]], ...] = (
            collections.deque(),
            collections.deque(),
            collections.deque(),
        )
        self.n = 0
        """Waiters in all lanes."""

    def __len__(self) -> int:
        return self.n

    def push(self, item: T, prio: int, now: float) -> tuple[float, T]:
        """Add `item` of rank `prio` waiting since `now`; the entry `remove` takes."""
        entry = (now, item)
        self._lanes[prio].append(entry)
        self.n += 1
        return entry

    def remove(self, entry: tuple[float, T], prio: int) -> bool:
        """Take out a waiter that gave up; False if it was no longer there."""
        try:
            self._lanes[prio].remove(entry)
        except ValueError:
            return False
        self.n -= 1
        return True

    def pop(self, now: float) -> T:
        """The next waiter to serve (IndexError when none)."""
        best: collections.deque[tuple[float, T]] | None = None
        best_key = (0, 0.0)
        for prio, lane in enumerate(self._lanes):
            if lane:
                since = lane[0][0]
                key = (max(HIGH, prio - int((now - since) / self._aging)), since)
                if best is None or key < best_key:
                    best, best_key = lane, key
        if best is None:
            raise IndexError("no waiter")
        self.n -= 1
        return best.popleft()[1]

    def keep(self, wanted: Callable[[T], bool]) -> list[T]:
        """Take out every waiter `wanted` refuses; they are returned."""
        gone: list[T] = []
        for lane in self._lanes:
            stay = [e for e in lane if wanted(e[1])]
            gone += [e[1] for e in lane if not wanted(e[1])]
            lane.clear()
            lane.extend(stay)
        self.n -= len(gone)
        return gone

    def counts(self) -> tuple[int, int, int]:
        """Waiters per rank: high, normal, low."""
        a, b, c = self._lanes
        return len(a), len(b), len(c)
