"""Key ordering (`LLM_WORKER_ORDERING=key`): one record of a key at a time, in offset order.

A record whose key (Kafka record key, within its partition) has an earlier record still in the
worker waits, before it is even decoded, until that record's outcome is acknowledged by the
broker; then it starts. So the provider calls of one key never overlap and its outcome records
are produced, and acknowledged, in offset order, whatever happens to the one before: a retry,
a hold, a fallback, a redelivery of its outcome, a dedup follower's wait. Records of other keys
are not held: a slow or held key stalls only itself (its partition's in-flight bound still
applies: a partition paused by many waiting records of one key pauses the others in it too).

Records without a key are not ordered: they are taken and answered as with `none`.

A waiting record is cheap (a task parked on a future): waiting records count against the cap
(`LLM_WORKER_MAX_IN_FLIGHT`, within the memory budget) but not against the adaptive intake
limit nor the per-partition pause bound, which size the work that runs. So the worker takes
far enough ahead in each partition that every key there has its next record at hand, instead
of advancing a partition in lockstep with its slowest key.

Waiting for the acknowledgement, not only the hand-off to the producer, is what keeps the
order through an outcome that fails delivery and is produced again later; it costs the next
record of the key one producer round trip (about the producer's linger, 5 ms).

A partition that is revoked, lost or rewound (exactly-once) forgets its keys' turns: the tasks
waiting on them are cancelled with the partition's work, and records read again start afresh.
"""

from __future__ import annotations

import asyncio

from ..records import InputRecord
from .transport import Key

__all__ = ["KeyLanes", "Turn"]

Lane = tuple[str, int, bytes]
"""(topic, partition, key): records that must not overlap."""


class Turn:
    """One record's place in its key's lane: `before` is the turn it waits for (None: it may
    start now); `done` once its outcome is acknowledged (or it was dropped)."""

    __slots__ = ("_waiter", "before", "done", "lane", "offset")

    def __init__(self, lane: Lane, offset: int, before: Turn | None) -> None:
        self.lane = lane
        self.offset = offset
        self.before = before
        self.done = False
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Until this turn is done (at once if it is)."""
        if self.done:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def end(self) -> None:
        self.done = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class KeyLanes:
    """The turns of the records of each key that are in the worker."""

    def __init__(self) -> None:
        self._tails: dict[Lane, Turn] = {}
        """Each key's last record taken (the one the next record of the key waits for)."""
        self._by_offset: dict[tuple[str, int, int], Turn] = {}
        self.waiting = 0
        """Records waiting for an earlier record of their key."""
        self.waiting_in: dict[Key, int] = {}
        """The same, per partition."""

    def take(self, rec: InputRecord) -> Turn | None:
        """`rec`'s turn, behind the last record of its key taken; None for a record without a
        key (not ordered)."""
        if rec.key is None:
            return None
        lane = (rec.topic, rec.partition, rec.key)
        before = self._tails.get(lane)
        if before is not None and before.done:
            before = None
        turn = self._tails[lane] = Turn(lane, rec.offset, before)
        self._by_offset[(rec.topic, rec.partition, rec.offset)] = turn
        if before is not None:  # it waits from now (`wait` counts it off)
            part = (rec.topic, rec.partition)
            self.waiting += 1
            self.waiting_in[part] = self.waiting_in.get(part, 0) + 1
        return turn

    def delivered(self, rec: InputRecord) -> None:
        """`rec`'s outcome was acknowledged: the next record of its key may start."""
        turn = self._by_offset.pop((rec.topic, rec.partition, rec.offset), None)
        if turn is not None:
            self._end(turn)

    def _end(self, turn: Turn) -> None:
        turn.end()
        if self._tails.get(turn.lane) is turn:
            del self._tails[turn.lane]

    async def wait(self, turn: Turn) -> None:
        """Until the record before `turn` in its key is acknowledged (`turn` came from `take`
        with a record before it)."""
        before = turn.before
        if before is None:
            return
        try:
            await before.wait()
        finally:
            turn.before = None
            part = turn.lane[:2]
            left = self.waiting_in.get(part, 0)
            if left:  # else forgotten meanwhile
                self.waiting -= 1
                self.waiting_in[part] = left - 1

    def forget(self, keys: list[Key] | None = None) -> None:
        """Partitions no longer ours, or rewound (None: all): their turns end; the tasks still
        waiting on them are being cancelled with the partition's work."""
        parts = None if keys is None else set(keys)
        for k, turn in list(self._by_offset.items()):
            if parts is None or (k[0], k[1]) in parts:
                del self._by_offset[k]
                self._end(turn)
        for part in list(self.waiting_in) if parts is None else parts:
            self.waiting -= self.waiting_in.pop(part, 0)

    def __len__(self) -> int:
        return len(self._by_offset)
