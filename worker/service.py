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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, Message

from .kafka_io import DeliveryError, KafkaBridge
from .messages import Completion, ErrorInfo, encode
from .offsets import OffsetTracker
from .pipeline import InputRecord, Outcome, Pipeline
from .telemetry import Metrics

__all__ = ["Worker"]

log = logging.getLogger("llm_worker")
outcome_log = logging.getLogger("llm_worker.outcome")

Key = tuple[str, int]


class Worker:
    def __init__(
        self,
        *,
        bridge: KafkaBridge,
        pipeline: Pipeline,
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
        self._max_per_part = max_in_flight_per_partition
        self._batch = consume_batch
        self._commit_interval = commit_interval_s
        self._shutdown_timeout = shutdown_timeout_s
        self._tracker = OffsetTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_part: dict[Key, set[asyncio.Task[None]]] = {}
        self._paused: set[Key] = set()
        self._owned: set[Key] = set()
        self._held: set[Key] = set()
        self._rate_limited = rate_limited or (lambda: 0)
        self._revoked_now: set[Key] = set()
        self._stopping = asyncio.Event()
        self._capacity = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outcome_children: dict[tuple[str, str], Any] = {}
        metrics.in_flight.set_function(lambda: len(self._tasks))
        self.counters: dict[str, int] = {
            "consumed": 0,
            "completed": 0,
            "errors": 0,
            "dlq": 0,
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
        tasks: set[asyncio.Task[None]] = set()
        for k in keys:
            tasks |= self._by_part.get(k, set())
        await self._finish_or_abandon(tasks)
        commits = self._tracker.pending_commits(keys)
        self._tracker.drop(keys)
        self._owned.difference_update(keys)
        for k in keys:
            self._paused.discard(k)
            self._held.discard(k)
            self._by_part.pop(k, None)
        self._metrics.paused.set(len(self._paused))
        return commits

    async def _finish_or_abandon(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self._shutdown_timeout)
        if pending:
            log.warning("abandoning %d in-flight messages at the deadline", len(pending))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

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
            await self._finish_or_abandon(set(self._tasks))
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass
            await self.commit_now()

    async def _consume_loop(self) -> None:
        bridge = self._bridge
        while not self._stopping.is_set():
            free = self._max_in_flight - len(self._tasks)
            if free <= 0 and self._rate_limited() > 0:
                # Full of requests waiting for rate-limit capacity, which can take minutes:
                # pause every partition and keep polling, so the group keeps this member.
                await self._hold_all()
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
            await self._apply_flow_control()
            msgs = await bridge.consume(min(self._batch, free), 0.05)
            if msgs:
                for msg in msgs:
                    self._dispatch(msg)
                self._metrics.consumed.inc(len(msgs))

    async def _apply_flow_control(self) -> None:
        """Pause a partition at `max_in_flight_per_partition`; resume it at half of that.

        Decided from the current counts on each pass, so a partition whose work finished
        before the pause took effect is resumed on the next pass rather than left paused.
        """
        in_flight = self._tracker.in_flight
        per = self._max_per_part
        pause = [k for k in self._owned if k not in self._paused and in_flight(*k) >= per]
        resume = [k for k in self._paused if in_flight(*k) <= per // 2]
        if self._held:  # paused while full of rate-limited work: resume once there is room
            if len(self._tasks) > self._max_in_flight * 3 // 4:
                resume = [k for k in resume if k not in self._held]
            else:
                self._held.clear()
        if pause:
            await self._bridge.pause(pause)
            self._paused.update(pause)
        if resume:
            await self._bridge.resume(resume)
            self._paused.difference_update(resume)
        if pause or resume:
            self._metrics.paused.set(len(self._paused))

    async def _hold_all(self) -> None:
        parts = [k for k in self._owned if k not in self._paused]
        if parts:
            await self._bridge.pause(parts)
            self._paused.update(parts)
            self._held.update(parts)
            self._metrics.paused.set(len(self._paused))

    def _dispatch(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err.str())
            return
        topic, part, offset = (
            cast(str, msg.topic()),
            cast(int, msg.partition()),
            cast(int, msg.offset()),
        )
        key: Key = (topic, part)
        if key in self._revoked_now:
            return  # not ours any more; the new owner reads it from the committed offset
        self._owned.add(key)
        self.counters["consumed"] += 1
        ts_type, ts = msg.timestamp()
        rec = InputRecord(
            topic=topic,
            partition=part,
            offset=offset,
            value=msg.value(),
            key=msg.key(),
            headers=cast("list[tuple[str, bytes]] | None", msg.headers()),
            timestamp_ms=ts if ts_type else None,
        )
        self._tracker.start(topic, part, offset)
        task = asyncio.create_task(self._handle(rec))
        self._tasks.add(task)
        self._by_part.setdefault(key, set()).add(task)
        task.add_done_callback(functools.partial(self._task_done, key=key))

    def _task_done(self, task: asyncio.Task[None], key: Key) -> None:
        self._tasks.discard(task)
        self._capacity.set()
        tasks = self._by_part.get(key)
        if tasks is not None:
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("message task failed", exc_info=task.exception())

    async def _handle(self, rec: InputRecord) -> None:
        try:
            outcome = await self._pipeline.process(rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "unexpected error processing record",
                extra={"partition": rec.partition, "offset": rec.offset},
            )
            outcome = self._pipeline.internal_error(rec, exc)
        await self._deliver(outcome)
        self._tracker.finish(rec.topic, rec.partition, rec.offset)
        self._record(rec, outcome)

    async def _deliver(self, outcome: Outcome) -> None:
        delay = 0.1
        while True:
            try:
                await self._bridge.produce(
                    outcome.topic, outcome.value, key=outcome.key, headers=outcome.headers
                )
                return
            except DeliveryError as exc:
                self.counters["delivery_retries"] += 1
                self._metrics.delivery_retries.inc()
                if exc.too_large and outcome.completion is not None:
                    c = outcome.completion
                    replacement = Completion(
                        id=c.id,
                        model=c.model,
                        status="error",
                        metadata=None,
                        provider=c.provider,
                        upstream_model=c.upstream_model,
                        endpoint_name=c.endpoint_name,
                        attempts=c.attempts,
                        error=ErrorInfo(
                            type="output_too_large",
                            message="the completion is larger than the broker accepts",
                        ),
                    )
                    outcome.completion = replacement
                    outcome.value = encode(replacement)
                    continue
                log.warning(
                    "delivery to %s failed (%s); retrying in %.1f s", outcome.topic, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _record(self, rec: InputRecord, outcome: Outcome) -> None:
        m = self._metrics
        c = outcome.completion
        if c is None:
            self.counters["dlq"] += 1
            m.dlq.labels(outcome.dlq_reason or "unknown").inc()
            outcome_log.warning(
                "dead-lettered",
                extra={
                    "status": "dlq",
                    "reason": outcome.dlq_reason,
                    "partition": rec.partition,
                    "offset": rec.offset,
                },
            )
            return
        self.counters["completed"] += 1
        child = self._outcome_children.get((c.model, c.status))
        if child is None:
            child = m.completions.labels(c.model, c.status)
            self._outcome_children[(c.model, c.status)] = child
        child.inc()
        if c.status == "error":
            self.counters["errors"] += 1
            m.errors.labels(c.error.type if c.error else "unknown").inc()
        if rec.timestamp_ms:
            m.e2e_latency.observe(max(0.0, time.time() - rec.timestamp_ms / 1000))
        if outcome_log.isEnabledFor(logging.INFO):
            outcome_log.info(
                "completion",
                extra={
                    "request_id": c.id,
                    "model": c.model,
                    "provider": c.provider,
                    "endpoint": c.endpoint_name,
                    "status": c.status,
                    "error_type": c.error.type if c.error else None,
                    "latency_ms": c.latency_ms,
                    "attempts": c.attempts,
                    "fallback_used": c.fallback_used,
                    "partition": rec.partition,
                    "offset": rec.offset,
                },
            )

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
            "in_flight": len(self._tasks),
            "paused_partitions": len(self._paused),
            "partitions": len(self._tracker.partitions()),
        }
