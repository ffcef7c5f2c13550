"""Per-partition offset tracking for out-of-order completion.

Messages of a partition start in offset order and finish in any order. The offset that is safe
to commit is one past the end of the first unbroken run of finished offsets: a committed offset
never passes a message that has not finished.

Each `PartitionOffsets` belongs to one assignment of its partition (its `epoch`, from the
bridge): a commit is tagged with the epoch it was computed in, and messages of an earlier
assignment that finish late finish their own object, never the current one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

__all__ = ["OffsetTracker", "PartitionOffsets"]


class PartitionOffsets:
    """Offsets of one partition: started, finished, and the committable watermark."""

    __slots__ = ("_abandoned", "_done", "_heap", "_in_flight", "committed", "epoch", "safe")

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch
        self._heap: list[int] = []  # started offsets not yet passed by `safe`
        self._in_flight: set[int] = set()
        self._done: set[int] = set()
        self._abandoned: set[int] = set()  # started, then dropped unanswered (`abandon`)
        self.safe: int | None = None  # next offset to commit (last contiguous finished + 1)
        self.committed: int | None = None  # what was last committed to the broker

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self, offset: int) -> None:
        if offset in self._abandoned:  # taken again: in flight, at its place in the heap
            self._abandoned.discard(offset)
            self._in_flight.add(offset)
            return
        if offset in self._in_flight or offset in self._done:
            return  # redelivered after a seek; already tracked
        if self.safe is not None and offset < self.safe:
            return  # already finished and passed
        self._in_flight.add(offset)
        heapq.heappush(self._heap, offset)

    def finish(self, offset: int) -> None:
        if offset not in self._in_flight:
            return
        self._in_flight.discard(offset)
        self._done.add(offset)
        heap = self._heap
        while heap and heap[0] in self._done:
            low = heapq.heappop(heap)
            self._done.discard(low)
            self.safe = low + 1

    def abandon(self, offset: int) -> None:
        """A record taken but dropped before it was answered (parked at the intake when the
        worker stopped): no longer in flight, and `safe` never passes it, so it is read again."""
        if offset in self._in_flight:
            self._in_flight.discard(offset)
            self._abandoned.add(offset)

    def pending_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new is safe."""
        if self.safe is None or self.safe == self.committed:
            return None
        return self.safe


class OffsetTracker:
    """All partitions this consumer owns, keyed by (topic, partition)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def part(self, topic: str, partition: int, epoch: int = 0) -> PartitionOffsets:
        """The partition's offsets in assignment `epoch` (a new object for a new epoch)."""
        key = (topic, partition)
        p = self._parts.get(key)
        if p is None or p.epoch != epoch:
            p = self._parts[key] = PartitionOffsets(epoch)
        return p

    def get(self, key: tuple[str, int]) -> PartitionOffsets | None:
        return self._parts.get(key)

    def start(self, topic: str, partition: int, offset: int) -> None:
        self.part(topic, partition).start(offset)

    def finish(self, topic: str, partition: int, offset: int) -> None:
        p = self._parts.get((topic, partition))
        if p is not None:
            p.finish(offset)

    def in_flight(self, topic: str | None = None, partition: int | None = None) -> int:
        if topic is not None and partition is not None:
            p = self._parts.get((topic, partition))
            return p.in_flight if p else 0
        return sum(p.in_flight for p in self._parts.values())

    def pending_commits(
        self, only: Iterable[tuple[str, int]] | None = None
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """`{key: (offset, epoch)}` for every partition with something new to commit."""
        keys = list(self._parts) if only is None else [k for k in only if k in self._parts]
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for key in keys:
            p = self._parts[key]
            off = p.pending_commit()
            if off is not None:
                out[key] = (off, p.epoch)
        return out

    def mark_committed(self, commits: dict[tuple[str, int], int]) -> None:
        for key, off in commits.items():
            p = self._parts.get(key)
            if p is not None and (p.committed is None or off > p.committed):
                p.committed = off

    def drop(
        self,
        keys: Iterable[tuple[str, int]],
        only: dict[tuple[str, int], PartitionOffsets | None] | None = None,
    ) -> None:
        """Forget partitions (after revoke: another consumer owns them now). With `only`, a
        partition is forgotten only if its object is still the one given (the assignment that
        was settled), never a newer one."""
        for key in keys:
            if only is None or self._parts.get(key) is only.get(key):
                self._parts.pop(key, None)

    def partitions(self) -> list[tuple[str, int]]:
        return list(self._parts)
