"""The worker: consume, process many messages at once, produce, commit what is safe.

One record: `Pipeline.begin` runs in the consume loop and answers what needs no waiting (dedup
window hits, invalid input); only a record that needs a provider call gets a task, for
`Pipeline.finish`. The outcome goes to the `Outbox`; the message stays in flight (tasks +
unacknowledged outcomes, bounded by `max_in_flight`) until its delivery report comes back.

Flow: a partition at `max_in_flight_per_partition` is paused (resumed at half); a worker full for
`HOLD_AFTER_S` holds every partition and keeps polling, so rebalances are served and the group
keeps it however long the work takes.

Rebalances are the `Assignment`'s (`assignment`, whose hooks `App._wire` hands the bridge):
revoked partitions finish or abandon their work within `shutdown_timeout_s` and return their
safe offsets; lost ones are cancelled and dropped, committing nothing; assigned ones start
afresh. Cleanup touches only the assignment it settled, never the next one.

Shutdown, one deadline (`shutdown_timeout_s` from `stop()`): stop taking records -> wait for
in-flight work -> cancel the rest -> flush the producer (at least `FLUSH_FLOOR_S`) -> commit ->
close (the revoke that fires has nothing left to wait for). A fatal Kafka error stops at once
and commits only what was acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..ops.metrics import Metrics
from ..ops.outcomes import OutcomeRecorder
from ..records import InputRecord, Outcome, Stages
from ..settings import Ordering
from .assignment import Assignment, Lifecycle
from .flow import MIN_PER_PARTITION, FlowControl, InFlightLimits, Room
from .intake import Intake
from .offsets import PartitionOffsets
from .ordering import Turn
from .outbox import Sent
from .settle import every
from .transport import GroupMetadata, Key, Transport

__all__ = ["Stages", "Worker"]

log = logging.getLogger("llm_worker")

FLUSH_FLOOR_S = 1.0  # the producer flush at shutdown gets at least this, even past the deadline
COMMIT_FLOOR_S = 5.0  # and the final commit this much
HOLD_AFTER_S = 1.0  # full this long, hold every partition (a resume costs a refetch)
MAX_CAUSES_LOGGED = 256  # distinct bugs logged with a traceback; later new ones are not

P = TypeVar("P")
"""What `Stages.begin` hands to `Stages.finish` for a record that waits (a provider call)."""


def _cause(exc: BaseException) -> tuple[str, str, int]:
    """What identifies a bug: the exception's type and the line that raised it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__qualname__, "", 0
    return type(exc).__qualname__, tb.tb_frame.f_code.co_filename, tb.tb_lineno


class Worker(Generic[P]):
    """The consume loop over one `Assignment` (which owns the partitions' state and the
    rebalance steps): takes records, starts their work, holds and pauses, and shuts down."""

    def __init__(
        self,
        *,
        bridge: Transport[Sent],
        pipeline: Stages[P],
        metrics: Metrics,
        max_in_flight: int,
        max_in_flight_per_partition: int,
        consume_batch: int,
        commit_interval_s: float,
        shutdown_timeout_s: float,
        rate_limited: Callable[[], int] | None = None,
        intake: Callable[[], int] | None = None,
        max_in_flight_bytes: int = 0,
        recorder: OutcomeRecorder | None = None,
        ordering: Ordering = "none",
        parking: Intake | None = None,
    ) -> None:
        self._bridge = bridge
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._limits = InFlightLimits(
            cap=max_in_flight,
            target=intake or (lambda: max_in_flight),
            per_partition=max_in_flight_per_partition,
            bytes_budget=max_in_flight_bytes,
        )
        self._batch = consume_batch
        self._commit_interval = commit_interval_s
        self._causes_logged: set[tuple[str, str, int]] = set()
        self._flow = FlowControl(
            pause=bridge.pause,
            resume=bridge.resume,
            max_per_partition=max_in_flight_per_partition or MIN_PER_PARTITION,
            on_change=metrics.paused.set,
        )
        self._room = Room(lambda: self._max_in_flight, self._busy, refresh=self._refresh_limit)
        self._life = Lifecycle(shutdown_timeout_s)
        self.assignment = Assignment(
            bridge=bridge,
            metrics=metrics,
            flow=self._flow,
            life=self._life,
            on_task_done=self._room.wake,
            recorder=recorder,
            ordering=ordering,
            intake=parking,
        )
        self._held = rate_limited or (lambda: 0)
        self._stopping = asyncio.Event()
        self.fatal: str | None = None  # why a fatal Kafka error stopped the worker
        self.counters: dict[str, int] = {"consumed": 0}

    # -- main loop -------------------------------------------------------------------------
    def stop(self, *, deadline_s: float | None = None) -> None:
        """Stop taking records; in-flight work gets `deadline_s` (default: shutdown timeout)."""
        life = self._life
        wait = life.timeout_s if deadline_s is None else deadline_s
        new = life.time() + wait
        if life.deadline is None or new < life.deadline:
            life.deadline = new
        if not self._stopping.is_set():
            log.info("stop requested: no new records will be taken (deadline %.1f s)", wait)
            self._stopping.set()
            self._room.open()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def on_fatal(self, reason: str) -> None:
        """A Kafka client is unusable (called on the loop): stop at once, exit non-zero."""
        if self.fatal is None:
            self.fatal = reason
            log.critical("fatal Kafka error, stopping: %s", reason)
            self.stop(deadline_s=0.0)

    async def run(self) -> None:
        """Process records until `stop()`; then settle in-flight work, flush and commit."""
        life, eos = self._life, self.assignment.eos
        life.loop = asyncio.get_running_loop()
        if eos is not None:
            await eos.start()
        committer = asyncio.create_task(
            every(self._commit_interval, self.commit_now, "offset commit"), name="committer"
        )
        try:
            await self._consume_loop()
        finally:
            if life.deadline is None:
                life.deadline = life.time() + life.timeout_s
            self.assignment.drop_parked(None)  # never started: read again after the restart
            await self.assignment.finish_or_abandon(None, life.deadline)
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass
            if self.fatal is None and eos is None:  # a commit flushes a transaction
                unsent = await self._bridge.flush(max(life.deadline - life.time(), FLUSH_FLOOR_S))
                if unsent:
                    log.warning("%d outcome records not delivered at shutdown", unsent)
            await self._final_commit(life.deadline)
            life.closing = True

    async def _final_commit(self, deadline: float) -> None:
        try:  # bounded: a commit librdkafka never answers must not hold the exit
            async with asyncio.timeout(max(deadline - self._life.time(), COMMIT_FLOOR_S)):
                await self.commit_now()
        except TimeoutError:
            log.error("final offset commit timed out: the uncommitted records are read again")
        except Exception as exc:
            log.error("final offset commit failed: %s", exc)

    async def _consume_loop(self) -> None:
        bridge, flow, a = self._bridge, self._flow, self.assignment
        while not self._stopping.is_set():
            if a.rewinding is not None:
                await a.rewinding.wait()
                continue
            free = self._refresh_limit() - self._busy()
            intake = a.intake
            if intake is not None and len(intake):  # the parked start first, by priority
                startable = self._max_in_flight - self._running()
                if startable > 0:
                    self._unpark(intake, startable)
                    continue
            if free <= 0:
                if intake is not None and not flow.held and (room := self._park_room(intake)):
                    # full: read on into the lookahead, so priority can reorder what comes
                    await self._take(min(self._batch, room), 0.05, park=True)
                    continue
                if not flow.held and await self._room.within(HOLD_AFTER_S):
                    continue  # a short wait: cheaper than a pause and a refetch
                # Still full: hold every partition and keep polling (rebalances are served and
                # the group keeps this member, however long the work in flight takes)
                await flow.hold_all(a.owned | bridge.assignment)
                await self._take(1, 0.1)  # at most one, if any
                continue
            await flow.apply(
                a.owned,
                self._running_in if a.lanes or a.intake else a.tracker.in_flight,
                crowded=self._busy() > self._max_in_flight * 3 // 4,
            )
            await self._take(min(self._batch, free), 0.05)

    async def _take(self, n: int, timeout: float, *, park: bool = False) -> None:
        rewinds = self.assignment.rewinds
        batch = await self._bridge.consume(n, timeout)
        if batch.polled and rewinds == self.assignment.rewinds:  # else fetched before a rewind
            for rec in batch.records:
                self._dispatch(rec, park=park)
            self._metrics.consumed.inc(batch.polled)

    def _unpark(self, intake: Intake, n: int) -> None:
        """Start up to `n` parked records, highest priority first."""
        for _ in range(min(n, len(intake))):
            p = intake.pop()
            self._start(p.rec, p.offsets, p.turn)

    def _refresh_limit(self) -> int:
        self._max_in_flight = self._limits.now(len(self.assignment.owned), self._flow)
        return self._max_in_flight

    def _busy(self) -> int:
        """What the in-flight limit is held against: every message in flight, but with key
        ordering the records waiting for their key's turn count only against the ceiling
        (`ordering`): min(limit - running, ceiling - all) is the room left."""
        total, running = self.in_flight, self._running()
        if running == total:
            return total
        return max(running, total + self._max_in_flight - self._limits.ceiling())

    def _running(self) -> int:
        """Messages in flight less those waiting for their key's turn or parked."""
        a = self.assignment
        idle = (a.lanes.waiting if a.lanes is not None else 0) + (
            len(a.intake) if a.intake is not None else 0
        )
        return self.in_flight - idle

    def _park_room(self, intake: Intake) -> int:
        """How many records the intake may park now: its lookahead, within the ceiling."""
        return max(0, min(intake.room(), self._limits.ceiling() - self.in_flight))

    def _running_in(self, topic: str, partition: int) -> int:
        """A partition's messages in flight, less those waiting for their key's turn or
        parked at the intake."""
        a, key = self.assignment, (topic, partition)
        idle = a.lanes.waiting_in.get(key, 0) if a.lanes is not None else 0
        if a.intake is not None:
            idle += a.intake.in_part.get(key, 0)
        return a.tracker.in_flight(topic, partition) - idle

    @property
    def in_flight(self) -> int:
        """Messages taken and not finished: running tasks plus outcomes not yet acknowledged."""
        a = self.assignment
        parked = len(a.intake) if a.intake is not None else 0
        return len(a.tasks) + a.outbox.unacked + a.outbox.waiting + parked

    def _dispatch(self, rec: InputRecord, *, park: bool = False) -> None:
        a = self.assignment
        key: Key = (rec.topic, rec.partition)
        if key in a.revoking:
            return  # not ours any more; the new owner reads it from the committed offset
        a.owned.add(key)
        self.counters["consumed"] += 1
        self._limits.seen(len(rec.value or b"") + len(rec.key or b""))
        offsets = a.tracker.part(rec.topic, rec.partition, self._bridge.epoch(key))
        offsets.start(rec.offset)
        a.outbox.track(rec)
        turn = a.lanes.take(rec) if a.lanes is not None else None
        if park and a.intake is not None:
            a.intake.park(rec, offsets, turn)
            return
        self._start(rec, offsets, turn)

    def _start(self, rec: InputRecord, offsets: PartitionOffsets, turn: Turn | None) -> None:
        a = self.assignment
        key: Key = (rec.topic, rec.partition)
        if turn is not None and turn.before is not None:  # its key is busy: wait in a task
            a.spawn(key, self._in_turn(rec, turn, offsets))
            return
        # Most records are answered right here (dedup window hits, invalid input): no task.
        step = self._begin(rec)
        if isinstance(step, Outcome):
            a.outbox.send(rec, step, offsets)
            return
        a.spawn(key, self._handle(rec, step, offsets))

    def _begin(self, rec: InputRecord) -> Outcome | P:
        try:
            return self._pipeline.begin(rec)
        except Exception as exc:
            return self._unexpected(rec, exc)

    async def _in_turn(self, rec: InputRecord, turn: Turn, offsets: PartitionOffsets) -> None:
        """Key ordering: once the record before it in its key is acknowledged, as any record."""
        assert self.assignment.lanes is not None
        await self.assignment.lanes.wait(turn)
        step = self._begin(rec)
        if isinstance(step, Outcome):
            self.assignment.outbox.send(rec, step, offsets)
            return
        await self._handle(rec, step, offsets)

    def _unexpected(self, rec: InputRecord, exc: Exception) -> Outcome:
        """A bug: the record gets an `internal_error`. Its traceback is logged the first time
        its cause (the exception's type and where it was raised) is seen, not for every record
        it hits; `llm_worker_completion_errors_total{type="internal_error"}` counts them all."""
        cause = _cause(exc)
        if cause not in self._causes_logged and len(self._causes_logged) < MAX_CAUSES_LOGGED:
            self._causes_logged.add(cause)
            log.exception(
                "unexpected error processing record (logged once: later records failing "
                "the same way get an internal_error completion without a log line)",
                extra={"partition": rec.partition, "offset": rec.offset},
                exc_info=exc,
            )
        return self._pipeline.internal_error(rec, exc)

    async def _handle(self, rec: InputRecord, pending: P, offsets: PartitionOffsets) -> None:
        try:
            outcome = await self._pipeline.finish(pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = self._unexpected(rec, exc)
        self.assignment.outbox.send(rec, outcome, offsets)

    async def commit_now(
        self, *, in_hook: bool = False, meta: GroupMetadata | None = None
    ) -> dict[Key, int]:
        """Commit the safe offsets now (`Assignment.commit`)."""
        return await self.assignment.commit(in_hook=in_hook, meta=meta)

    def forget_metric_children(self) -> None:  # their series were removed (housekeeping)
        self.assignment.outbox.recorder.forget_children()

    def stats(self) -> dict[str, Any]:
        a = self.assignment
        return {
            **self.counters,
            **a.counters,
            **a.outbox.counters,
            **(a.eos.counters if a.eos is not None else {}),
            **a.outbox.recorder.counters,
            "in_flight": self.in_flight,
            "in_flight_limit": self._max_in_flight,
            "held": self._held(),
            "paused_partitions": len(self._flow.paused),
            **a.outbox.delivery(),
            "partitions": len(a.tracker.partitions()),
        }
