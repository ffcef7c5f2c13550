"""The worker: consume, process many messages at once, produce, commit what is safe.

Shutdown order (SIGTERM/SIGINT, or `stop()`):
  1. stop polling for new records;
  2. wait for in-flight messages up to `shutdown_timeout_s` (keep it below the pod's
     `terminationGracePeriodSeconds`), then cancel the rest (they are redelivered later);
  3. flush the producer (outcome records acknowledged);
  4. commit the offsets that are safe;
  5. close the consumer (leave the group), HTTP sessions and the registry.

A revoked partition is settled the same way, for that partition only, inside the rebalance
callback: no new work, in-flight work finishes or is abandoned within the deadline, commit.

The path of one record: `Pipeline.begin` runs at once, in the consume loop, and answers what
needs no waiting (dedup window hits, invalid input); only a record that needs a provider call
gets a task, for `Pipeline.finish`. Either way the outcome is produced without waiting, and the
message stays in flight until its delivery report comes back: reports arrive in batches (one
per producer poll), which finish the offsets and record the metrics. A failed delivery is
retried in a task. In flight = tasks + outcomes not yet acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..ops.metrics import Metrics
from ..ops.outcomes import OutcomeRecorder
from ..records import InputRecord, Outcome
from .delivery import deliver
from .flow import FlowControl
from .kafka import DeliveryError, KafkaBridge, KafkaError, Message
from .offsets import OffsetTracker, PartitionOffsets

__all__ = ["Worker"]

log = logging.getLogger("llm_worker")

Key = tuple[str, int]


class Stages(Protocol):
    """One message's path as the consume loop drives it (`worker.pipeline.Pipeline`)."""

    def begin(self, rec: InputRecord) -> Outcome | Any:
        """The outcome when no waiting is needed, else a state for `finish`."""

    async def finish(self, pending: Any) -> Outcome: ...

    def internal_error(self, rec: InputRecord, exc: BaseException) -> Outcome: ...


# what a produced outcome carries until its delivery report: the record, the outcome, and the
# offsets object of the partition generation that started it
Sent = tuple[InputRecord, Outcome, PartitionOffsets]


class Worker:
    def __init__(
        self,
        *,
        bridge: KafkaBridge,
        pipeline: Stages,
        metrics: Metrics,
        max_in_flight: int,
        max_in_flight_per_partition: int,
        consume_batch: int,
        commit_interval_s: float,
        shutdown_timeout_s: float,
        rate_limited: Callable[[], int] | None = None,
    ) -> None:
        self._bridge = bridge
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._batch = consume_batch
        self._commit_interval = commit_interval_s
        self._shutdown_timeout = shutdown_timeout_s
        self._tracker = OffsetTracker()
        self._unacked = 0  # outcomes produced whose delivery report has not come back yet
        self._acked = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_part: dict[Key, set[asyncio.Task[None]]] = {}
        self._flow = FlowControl(
            pause=bridge.pause,
            resume=bridge.resume,
            max_per_partition=max_in_flight_per_partition,
            on_change=metrics.paused.set,
        )
        self._owned: set[Key] = set()
        self._rate_limited = rate_limited or (lambda: 0)
        self._revoked_now: set[Key] = set()
        self._stopping = asyncio.Event()
        self._capacity = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recorder = OutcomeRecorder(metrics)
        bridge.set_ack_handler(self._on_acks)
        metrics.in_flight.set_function(lambda: self.in_flight)
        self.counters: dict[str, int] = {
            "consumed": 0,
            "commits": 0,
            "delivery_retries": 0,
        }

    # -- hooks called from the consumer thread ---------------------------------------------
    def on_revoke(self, keys: list[Key]) -> dict[Key, int]:
        loop = self._loop
        if loop is None or loop.is_closed():
            return {}
        fut = asyncio.run_coroutine_threadsafe(self._settle(keys), loop)
        return fut.result(timeout=self._shutdown_timeout + 10)

    def on_assign(self, keys: list[Key]) -> None:
        for k in keys:
            self._revoked_now.discard(k)
        self._owned.update(keys)

    async def _settle(self, keys: list[Key]) -> dict[Key, int]:
        self._revoked_now.update(keys)
        await self._finish_or_abandon(keys)
        commits = self._tracker.pending_commits(keys)
        self._tracker.drop(keys)
        self._owned.difference_update(keys)
        for k in keys:
            self._by_part.pop(k, None)
        self._flow.forget(keys)
        return commits

    def _unfinished(self, keys: list[Key] | None) -> int:
        if keys is None:
            return self._tracker.in_flight()
        return sum(self._tracker.in_flight(*k) for k in keys)

    async def _finish_or_abandon(self, keys: list[Key] | None) -> None:
        """Wait until the messages of `keys` (None: all) are finished, that is, their outcome
        records are acknowledged, for up to the shutdown timeout; then cancel what still runs.

        A message is either a task (waiting for its provider call, or retrying a delivery) or
        an outcome waiting for its delivery report; a task can turn into the latter.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout
        while True:
            if keys is None:
                tasks = set(self._tasks)
            else:
                tasks = set()
                for k in keys:
                    tasks |= self._by_part.get(k, set())
            left = deadline - loop.time()
            if tasks:
                if left > 0:
                    _done, pending = await asyncio.wait(tasks, timeout=left)
                else:
                    pending = tasks
                if pending:
                    log.warning("abandoning %d in-flight messages at the deadline", len(pending))
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    return
                continue
            if not self._unacked or not self._unfinished(keys) or left <= 0:
                if left <= 0 and self._unacked:
                    log.warning(
                        "abandoning %d unacknowledged outcomes at the deadline", self._unacked
                    )
                return
            self._acked.clear()
            try:
                async with asyncio.timeout(left):
                    await self._acked.wait()
            except TimeoutError:
                pass

    # -- main loop -------------------------------------------------------------------------
    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: no new records will be taken")
            self._stopping.set()
            self._capacity.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Process records until `stop()`; then settle in-flight work and commit."""
        self._loop = asyncio.get_running_loop()
        committer = asyncio.create_task(self._commit_loop(), name="committer")
        try:
            await self._consume_loop()
        finally:
            await self._finish_or_abandon(None)
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass
            await self.commit_now()

    async def _consume_loop(self) -> None:
        bridge = self._bridge
        while not self._stopping.is_set():
            free = self._max_in_flight - len(self._tasks) - self._unacked
            if free <= 0 and self._rate_limited() > 0:
                # Full of requests waiting for rate-limit capacity, which can take minutes:
                # pause every partition and keep polling, so the group keeps this member.
                await self._flow.hold_all(self._owned)
                for msg in await bridge.consume(1, 0.1):
                    self._dispatch(msg)
                continue
            if free <= 0:
                # Full (slow providers, rate-limit waits): take nothing more until work ends.
                # Not polling is safe here: every message ends within the request deadline,
                # which config keeps below max.poll.interval.ms. Pausing instead would cost a
                # refetch of every partition on resume (about a second on some brokers).
                self._capacity.clear()
                try:
                    async with asyncio.timeout(0.2):
                        await self._capacity.wait()
                except TimeoutError:
                    pass
                continue
            await self._flow.apply(
                self._owned,
                self._tracker.in_flight,
                crowded=self.in_flight > self._max_in_flight * 3 // 4,
            )
            msgs = await bridge.consume(min(self._batch, free), 0.05)
            if msgs:
                for msg in msgs:
                    self._dispatch(msg)
                self._metrics.consumed.inc(len(msgs))

    @property
    def in_flight(self) -> int:
        """Messages taken and not finished: running tasks plus outcomes not yet acknowledged."""
        return len(self._tasks) + self._unacked

    def _dispatch(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err.str())
            return
        topic: str = msg.topic()  # type: ignore[assignment]
        part: int = msg.partition()  # type: ignore[assignment]
        key: Key = (topic, part)
        if key in self._revoked_now:
            return  # not ours any more; the new owner reads it from the committed offset
        self._owned.add(key)
        self.counters["consumed"] += 1
        ts_type, ts = msg.timestamp()
        rec = InputRecord(
            topic=topic,
            partition=part,
            offset=msg.offset(),  # type: ignore[arg-type]
            value=msg.value(),
            key=msg.key(),
            headers=msg.headers(),  # type: ignore[arg-type]
            timestamp_ms=ts if ts_type else None,
        )
        offsets = self._tracker.part(topic, part)
        offsets.start(rec.offset)
        # Most records are answered right here (dedup window hits, invalid input): no task.
        try:
            step = self._pipeline.begin(rec)
        except Exception as exc:
            step = self._unexpected(rec, exc)
        if isinstance(step, Outcome):
            self._send(rec, step, offsets)
            return
        self._spawn(key, self._handle(rec, step, offsets))

    def _spawn(self, key: Key, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        self._by_part.setdefault(key, set()).add(task)
        task.add_done_callback(functools.partial(self._task_done, key=key))

    def _task_done(self, task: asyncio.Task[None], key: Key) -> None:
        self._tasks.discard(task)
        if self.in_flight < self._max_in_flight:  # not when it handed over to a delivery
            self._capacity.set()
        tasks = self._by_part.get(key)
        if tasks is not None:
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("message task failed", exc_info=task.exception())

    def _unexpected(self, rec: InputRecord, exc: Exception) -> Outcome:
        log.exception(
            "unexpected error processing record",
            extra={"partition": rec.partition, "offset": rec.offset},
            exc_info=exc,
        )
        return self._pipeline.internal_error(rec, exc)

    async def _handle(self, rec: InputRecord, pending: Any, offsets: PartitionOffsets) -> None:
        try:
            outcome = await self._pipeline.finish(pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = self._unexpected(rec, exc)
        self._send(rec, outcome, offsets)

    def _send(self, rec: InputRecord, outcome: Outcome, offsets: PartitionOffsets) -> None:
        """Produce the outcome; the message finishes when its delivery report comes back."""
        sent: Sent = (rec, outcome, offsets)
        try:
            self._bridge.produce_nowait(
                outcome.topic, outcome.value, outcome.key, outcome.headers, sent
            )
        except BufferError:  # librdkafka's queue is full: wait for room in a task
            self._spawn((rec.topic, rec.partition), self._redeliver(sent, None))
            return
        except DeliveryError as exc:
            self._spawn((rec.topic, rec.partition), self._redeliver(sent, exc))
            return
        except Exception:  # a bug (say, a malformed header): the offset stays unfinished
            log.exception(
                "could not produce the outcome",
                extra={"partition": rec.partition, "offset": rec.offset},
            )
            return
        self._unacked += 1

    def _on_acks(self, acks: list[tuple[Any, KafkaError | None]]) -> None:
        """Delivery reports of one producer poll (on the loop): finish the delivered messages
        and retry the failed ones."""
        self._unacked -= len(acks)
        delivered: list[Sent] = []
        for sent, err in acks:
            if err is None:
                sent[2].finish(sent[0].offset)
                delivered.append(sent)
            else:
                rec = sent[0]
                self._spawn((rec.topic, rec.partition), self._redeliver(sent, DeliveryError(err)))
        self._recorder.record(delivered)
        self._capacity.set()
        self._acked.set()

    async def _redeliver(self, sent: Sent, error: DeliveryError | None) -> None:
        rec, outcome, offsets = sent
        await deliver(self._bridge, outcome, error, on_retry=self._delivery_retried)
        offsets.finish(rec.offset)
        self._recorder.record([sent])

    def _delivery_retried(self) -> None:
        self.counters["delivery_retries"] += 1
        self._metrics.delivery_retries.inc()

    # -- commits ---------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval)
            try:
                await self.commit_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("offset commit failed (will retry): %s", exc)

    async def commit_now(self) -> dict[Key, int]:
        commits = self._tracker.pending_commits()
        if not commits:
            return {}
        await self._bridge.commit(commits)
        self._tracker.mark_committed(commits)
        self.counters["commits"] += 1
        self._metrics.commits.inc()
        return commits

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            **self._recorder.counters,
            "in_flight": self.in_flight,
            "paused_partitions": len(self._flow.paused),
            "partitions": len(self._tracker.partitions()),
        }
