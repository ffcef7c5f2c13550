"""The worker: consume, process many messages at once, produce, commit what is safe.

One record: `Pipeline.begin` runs in the consume loop and answers what needs no waiting (dedup
window hits, invalid input); only a record that needs a provider call gets a task, for
`Pipeline.finish`. The outcome goes to the `Outbox`; the message stays in flight (tasks +
unacknowledged outcomes, bounded by `max_in_flight`) until its delivery report comes back.

Flow: a partition at `max_in_flight_per_partition` is paused (resumed at half); a worker full for
`HOLD_AFTER_S` holds every partition and keeps polling, so rebalances are served and the group
keeps it however long the work takes.

Rebalances (hooks on the consumer thread, inside `consume`): revoked partitions finish or
abandon their work within `shutdown_timeout_s` and return their safe offsets; lost ones are
cancelled and dropped, committing nothing; assigned ones start afresh. Cleanup touches only the
assignment it settled, never the next one.

Shutdown, one deadline (`shutdown_timeout_s` from `stop()`): stop taking records -> wait for
in-flight work -> cancel the rest -> flush the producer (at least `FLUSH_FLOOR_S`) -> commit ->
close (the revoke that fires has nothing left to wait for). A fatal Kafka error stops at once
and commits only what was acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from ..ops.metrics import Metrics
from ..ops.outcomes import OutcomeRecorder
from ..records import InputRecord, Outcome, Stages
from .flow import MIN_PER_PARTITION, FlowControl, InFlightLimits, Room
from .offsets import OffsetTracker, PartitionOffsets
from .outbox import Outbox, Sent
from .rebalance import Rebalancing
from .settle import every
from .transactions import ExactlyOnce, OrderedOutbox, TransactionAborted
from .transport import Key, Transport

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


class Worker(Rebalancing, Generic[P]):
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
        self._shutdown_timeout = shutdown_timeout_s
        self._tracker = OffsetTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._causes_logged: set[tuple[str, str, int]] = set()
        self._by_part: dict[Key, set[asyncio.Task[None]]] = {}
        self._flow = FlowControl(
            pause=bridge.pause,
            resume=bridge.resume,
            max_per_partition=max_in_flight_per_partition or MIN_PER_PARTITION,
            on_change=metrics.paused.set,
        )
        self._room = Room(lambda: self._max_in_flight, lambda: self.in_flight)
        kind = OrderedOutbox if bridge.transactional else Outbox
        out = kind(bridge, metrics, spawn=self._spawn, on_acked=self._room.wake, recorder=recorder)
        self._outbox = out
        self._eos = ExactlyOnce(bridge, out) if isinstance(out, OrderedOutbox) else None
        self._owned: set[Key] = set()
        self._held = rate_limited or (lambda: 0)
        self._revoked_now: set[Key] = set()
        self._stopping = asyncio.Event()
        self._deadline: float | None = None
        self._rewinds = 0  # exactly-once: rewinds begun; a batch taken before one is stale
        self._rewinding: asyncio.Event | None = None  # set when the rewind's seek is done
        self._rebalance_calls = 0  # rebalance hooks begun (exactly-once: is the metadata fresh)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fatal: str | None = None  # why a fatal Kafka error stopped the worker
        bridge.set_rebalance_hooks(self.on_assign, self.on_revoke, self.on_lost)
        bridge.set_fatal_hook(self.on_fatal)
        bridge.set_ack_handler(out.on_acks)
        metrics.in_flight.set_function(lambda: self.in_flight)
        metrics.delivery_failing.set_function(lambda: out.failing)
        self.counters: dict[str, int] = {"consumed": 0, "commits": 0, "lost": 0}

    # -- main loop -------------------------------------------------------------------------
    def stop(self, *, deadline_s: float | None = None) -> None:
        """Stop taking records; in-flight work gets `deadline_s` (default: shutdown timeout)."""
        wait = self._shutdown_timeout if deadline_s is None else deadline_s
        new = self._loop_time() + wait
        if self._deadline is None or new < self._deadline:
            self._deadline = new
        if not self._stopping.is_set():
            log.info("stop requested: no new records will be taken (deadline %.1f s)", wait)
            self._stopping.set()
            self._room.open()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _loop_time(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    async def run(self) -> None:
        """Process records until `stop()`; then settle in-flight work, flush and commit."""
        self._loop = asyncio.get_running_loop()
        if self._eos is not None:
            await self._eos.start()
        committer = asyncio.create_task(
            every(self._commit_interval, self.commit_now, "offset commit"), name="committer"
        )
        try:
            await self._consume_loop()
        finally:
            if self._deadline is None:
                self._deadline = self._loop_time() + self._shutdown_timeout
            await self._finish_or_abandon(None, self._deadline)
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass
            if self.fatal is None and self._eos is None:  # a commit flushes a transaction
                left = self._deadline - self._loop_time()
                unsent = await self._bridge.flush(max(left, FLUSH_FLOOR_S))
                if unsent:
                    log.warning("%d outcome records not delivered at shutdown", unsent)
            try:  # bounded: a commit librdkafka never answers must not hold the exit
                async with asyncio.timeout(max(self._deadline - self._loop_time(), COMMIT_FLOOR_S)):
                    await self.commit_now()
            except TimeoutError:
                log.error("final offset commit timed out: the uncommitted records are read again")
            except Exception as exc:
                log.error("final offset commit failed: %s", exc)
            self._closing = True

    async def _consume_loop(self) -> None:
        bridge, flow = self._bridge, self._flow
        while not self._stopping.is_set():
            if self._rewinding is not None:
                await self._rewinding.wait()
                continue
            self._max_in_flight = self._limits.now(len(self._owned), self._flow)
            free = self._max_in_flight - self.in_flight
            if free <= 0:
                if not flow.held and await self._room.within(HOLD_AFTER_S):
                    continue  # a short wait: cheaper than a pause and a refetch
                # Still full: hold every partition and keep polling (rebalances are served and
                # the group keeps this member, however long the work in flight takes)
                await flow.hold_all(self._owned | bridge.assignment)
                await self._take(1, 0.1)  # at most one, if any
                continue
            await flow.apply(
                self._owned,
                self._tracker.in_flight,
                crowded=self.in_flight > self._max_in_flight * 3 // 4,
            )
            await self._take(min(self._batch, free), 0.05)

    async def _take(self, n: int, timeout: float) -> None:
        rewinds = self._rewinds
        batch = await self._bridge.consume(n, timeout)
        if batch.polled and rewinds == self._rewinds:  # else fetched before a rewind's seek
            for rec in batch.records:
                self._dispatch(rec)
            self._metrics.consumed.inc(batch.polled)

    @property
    def in_flight(self) -> int:
        """Messages taken and not finished: running tasks plus outcomes not yet acknowledged."""
        return len(self._tasks) + self._outbox.unacked

    def _dispatch(self, rec: InputRecord) -> None:
        key: Key = (rec.topic, rec.partition)
        if key in self._revoked_now:
            return  # not ours any more; the new owner reads it from the committed offset
        self._owned.add(key)
        self.counters["consumed"] += 1
        self._limits.seen(len(rec.value or b"") + len(rec.key or b""))
        offsets = self._tracker.part(rec.topic, rec.partition, self._bridge.epoch(key))
        offsets.start(rec.offset)
        self._outbox.track(rec)
        # Most records are answered right here (dedup window hits, invalid input): no task.
        try:
            step = self._pipeline.begin(rec)
        except Exception as exc:
            step = self._unexpected(rec, exc)
        if isinstance(step, Outcome):
            self._outbox.send(rec, step, offsets)
            return
        self._spawn(key, self._handle(rec, step, offsets))

    def _spawn(self, key: Key, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        self._by_part.setdefault(key, set()).add(task)
        task.add_done_callback(functools.partial(self._task_done, key=key))

    def _task_done(self, task: asyncio.Task[None], key: Key) -> None:
        self._tasks.discard(task)
        self._room.wake()
        tasks = self._by_part.get(key)
        if tasks is not None:
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("message task failed", exc_info=task.exception())

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
        self._outbox.send(rec, outcome, offsets)

    # -- commits ---------------------------------------------------------------------------
    async def commit_now(self, *, in_hook: bool = False, meta: object = None) -> dict[Key, int]:
        """Commit the safe offsets, in the assignment they were computed in (exactly-once:
        commit the transaction, or abort it and rewind; a hook passes the group metadata it
        read, else it is read on the consumer thread and used only if no rebalance came since)."""
        if self._eos is not None:
            if self._rewinding is not None:
                return {}  # nothing is tracked until the rewind's seek is done
            seen = self._rebalance_calls
            if not in_hook and not self._eos.doomed:
                meta = await self._bridge.read_group_metadata()
            try:
                done = await self._eos.commit(
                    self._tracker, meta, valid=lambda: in_hook or seen == self._rebalance_calls
                )
            except TransactionAborted as exc:
                log.warning("transaction aborted (%s); rewinding", exc)
                await self._rewind(in_hook=in_hook)
                return {}
        else:
            pending = self._tracker.pending_commits()
            if not pending:
                return {}
            done = await self._bridge.commit(pending)
        self._tracker.mark_committed(done)
        if done:
            self.counters["commits"] += 1
            self._metrics.commits.inc()
        return done

    def forget_metric_children(self) -> None:  # their series were removed (housekeeping)
        self._outbox.recorder.forget_children()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            **self._outbox.counters,
            **(self._eos.counters if self._eos is not None else {}),
            **self._outbox.recorder.counters,
            "in_flight": self.in_flight,
            "in_flight_limit": self._max_in_flight,
            "held": self._held(),
            "paused_partitions": len(self._flow.paused),
            **self._outbox.delivery(),
            "partitions": len(self._tracker.partitions()),
        }
