"""Priority at the intake (`LLM_WORKER_PRIORITY_LOOKAHEAD`): while the worker is full, it reads
on, up to this many records, and *parks* them; when room frees, the parked records go first,
highest priority first (the prompt's `priority`, else its row's; with the same aging as the
other waits), before anything more is read. So a `high` prompt that arrives while the worker is
full of `low` work waits behind the work in flight, not behind the backlog read after it.

A parked record is taken in the worker's books (its offset started, so no commit passes it;
key ordering's turn taken, in offset order) but nothing else is done with it. It counts in
flight against the cap and the memory budget, not against the adaptive intake limit. When its
partition is revoked, lost or rewound, or the worker stops, the parked records are dropped
unanswered and their offsets abandoned: the partition's next owner, or the restarted worker,
reads them again from the committed offset. Records still in Kafka behind the lookahead are
read in partition order, as without it.

The lookahead engages once a prompt or a row has asked for a priority other than `normal`
(`engaged`): a worker whose traffic does not use priority reads and starts records as before,
at no cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..records import InputRecord
from .offsets import PartitionOffsets
from .ordering import Turn
from .transport import Key

__all__ = ["Intake", "Parked", "Waiters"]

T = TypeVar("T")


class Waiters(Protocol[T]):
    """Priority lanes with aging (`calling.priority.Lanes`, handed in by the app)."""

    def __len__(self) -> int: ...

    def push(self, item: T, prio: int, now: float) -> tuple[float, T]: ...

    def pop(self, now: float) -> T: ...

    def keep(self, wanted: Callable[[T], bool]) -> list[T]: ...


@dataclass(slots=True, frozen=True)
class Parked:
    rec: InputRecord
    offsets: PartitionOffsets
    turn: Turn | None


class Intake:
    """The parked records: at most `lookahead`, ranked by `rank(record)`."""

    def __init__(
        self,
        lookahead: int,
        rank: Callable[[InputRecord], int],
        waiters: Waiters[Parked],
        clock: Callable[[], float] = time.monotonic,
        engaged: Callable[[], bool] = lambda: True,
    ) -> None:
        self.lookahead = lookahead
        self._engaged = engaged
        self._rank = rank
        self._waiters = waiters
        self._clock = clock
        self.parked_total = 0
        """Records parked since the start (a counter for stats)."""
        self.in_part: dict[Key, int] = {}
        """Parked records per partition."""

    def __len__(self) -> int:
        return len(self._waiters)

    def room(self) -> int:
        """How many more records may be parked now: none until priorities are in use."""
        if not self._engaged():
            return 0
        return self.lookahead - len(self._waiters)

    def park(self, rec: InputRecord, offsets: PartitionOffsets, turn: Turn | None) -> None:
        self._waiters.push(Parked(rec, offsets, turn), self._rank(rec), self._clock())
        self.parked_total += 1
        self._count((rec.topic, rec.partition), 1)

    def _count(self, key: Key, step: int) -> None:
        left = self.in_part.get(key, 0) + step
        if left > 0:
            self.in_part[key] = left
        else:
            self.in_part.pop(key, None)

    def pop(self) -> Parked:
        """The parked record to start next (IndexError when none)."""
        p: Parked = self._waiters.pop(self._clock())
        self._count((p.rec.topic, p.rec.partition), -1)
        return p

    def drop(self, keys: list[Key] | None = None) -> list[Parked]:
        """The parked records of partitions `keys` (None: all), dropped unanswered: their
        offsets abandoned (read again)."""
        parts = None if keys is None else set(keys)
        gone = self._waiters.keep(
            lambda p: parts is not None and (p.rec.topic, p.rec.partition) not in parts
        )
        for p in gone:
            p.offsets.abandon(p.rec.offset)
            self._count((p.rec.topic, p.rec.partition), -1)
        return gone
