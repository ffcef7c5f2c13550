"""Outcome records on their way to Kafka: produced without waiting, finished by their delivery
reports, retried when delivery fails, made smaller when the broker refuses them as too large.

A message is finished when its outcome's delivery report comes back without error: only then
does its offset count as done. Reports arrive in batches, one per producer poll. A failed
delivery is retried in a task, with backoff, for as long as it takes (an unwritable output
topic holds its partition's offsets back; nothing is lost), with one exception: a record the
broker refuses as too large is never produced again as it is. It is replaced by a smaller one
(`records.shrink`, at most `SHRINK_STEPS` times, each smaller by construction), so one poison
record can neither spin the event loop nor hold its partition forever.

Streamed answers' chunk records go out through `publish`: produced and acknowledged (retried
until they are), no offset waiting on any one of them; their request's completion is produced
only after its last chunk is acknowledged, so the offset is committed after both.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from llm_worker.adapters.backoff import Backoff

from ..chunks import empty_chunk
from ..ops.metrics import Metrics
from ..ops.outcomes import OutcomeRecorder
from ..records import SHRINK_STEPS, InputRecord, Outcome, shrink
from .offsets import PartitionOffsets
from .transport import Ack, DeliveryError, Key, Transport

__all__ = ["InOrderOutbox", "Outbox", "Sent", "Spawn", "Work"]

log = logging.getLogger("llm_worker")

Work = Coroutine[object, None, None]
"""One message's remaining work (a provider call, a redelivery), run in a task."""
Spawn = Callable[[Key, Work], None]
Delivered = tuple[InputRecord, Outcome, PartitionOffsets]
"""What `OutcomeRecorder.record` reads of a delivered message."""


@dataclass(slots=True, frozen=True)
class Sent:
    """The delivery token of a produced outcome, until its delivery report: the input record,
    the outcome, and the offsets of the partition assignment that started it."""

    record: InputRecord
    outcome: Outcome
    offsets: PartitionOffsets

    def finish(self) -> None:
        """Delivered: its input's offset is done."""
        self.offsets.finish(self.record.offset)


RETRY_DELAY_S = (0.1, 5.0)
"""First and longest pause between attempts to deliver an outcome that failed."""


class Outbox:
    def __init__(
        self,
        bridge: Transport[Sent],
        metrics: Metrics,
        *,
        spawn: Spawn,
        on_acked: Callable[[], None] = lambda: None,
        recorder: OutcomeRecorder | None = None,
    ) -> None:
        self._bridge = bridge
        self._metrics = metrics
        self._spawn = spawn
        self._on_acked = on_acked
        self.recorder = recorder if recorder is not None else OutcomeRecorder(metrics)
        self.unacked = 0
        """Outcomes produced whose delivery report has not come back yet."""
        self.acked = asyncio.Event()
        self.counters: dict[str, int] = {"delivery_retries": 0, "shrunk": 0}
        self.redelivering = 0
        """Outcomes being delivered again in a task (refused or failed the first time)."""
        self.failing = 0
        """Outcomes whose delivery failed (not as too large) and is being retried now."""
        self.delivery_error: str | None = None
        """The last such failure, while any outcome is failing."""
        self.publishing = 0
        """Chunk records produced whose acknowledgement has not come back yet."""
        self.waiting = 0
        """Outcomes held back for order (`InOrderOutbox`), not produced yet."""
        self.on_delivered: Callable[[InputRecord], None] | None = None
        """Told of each input record whose outcome was acknowledged (key ordering)."""

    def send(self, rec: InputRecord, outcome: Outcome, offsets: PartitionOffsets) -> None:
        """Produce the outcome; the message finishes when its delivery report comes back."""
        sent = Sent(rec, outcome, offsets)
        key = (rec.topic, rec.partition)
        if outcome.stored:  # the batch lane wrote it durably: done, as if acknowledged
            self.unacked += 1
            self.on_acks([Ack(sent, None)])
            return
        try:
            self._bridge.produce_nowait(
                outcome.topic, outcome.value, outcome.key, outcome.headers, sent
            )
        except BufferError:  # librdkafka's queue is full: wait for room in a task
            self._spawn(key, self._redeliver(sent, None))
            return
        except DeliveryError as exc:  # refused at once (too large, say): never in this frame
            self._spawn(key, self._redeliver(sent, exc))
            return
        except Exception:  # a bug (say, a malformed header): the offset stays unfinished
            log.exception(
                "could not produce the outcome",
                extra={"partition": rec.partition, "offset": rec.offset},
            )
            return
        self.unacked += 1

    def on_acks(self, acks: list[Ack[Sent]]) -> None:
        """Delivery reports of one producer poll (on the loop; the bridge's ack handler):
        finish the delivered messages and retry the failed ones."""
        self.unacked -= len(acks)
        delivered: list[Delivered] = []
        hook = self.on_delivered
        for ack in acks:
            sent = ack.token
            if ack.error is None:
                sent.finish()
                delivered.append((sent.record, sent.outcome, sent.offsets))
                if hook is not None:
                    hook(sent.record)
            else:
                rec = sent.record
                self._spawn((rec.topic, rec.partition), self._redeliver(sent, ack.error))
        self.recorder.record(delivered)
        self.acked.set()
        self._on_acked()

    def track(self, rec: InputRecord) -> None:
        """A record was taken (its outcome will come): nothing to do unless order matters."""

    def forget(self, keys: list[Key] | None = None) -> None:
        """Partitions no longer ours (None: all): nothing kept here."""

    def release(self, key: Key) -> None:
        """Produce the outcomes of partition `key` held back for order: none here."""

    async def _redeliver(self, sent: Sent, error: DeliveryError | None) -> None:
        self.redelivering += 1
        try:
            delivered = await self.deliver(sent.outcome, error)
        finally:
            self.redelivering -= 1
        sent.finish()
        self.recorder.record([(sent.record, delivered, sent.offsets)])
        if self.on_delivered is not None:
            self.on_delivered(sent.record)

    async def deliver(self, outcome: Outcome, error: DeliveryError | None = None) -> Outcome:
        """Produce and wait for the acknowledgement, retrying until it comes; a record refused
        as too large is replaced by a smaller one first. `error`: the failure of an earlier
        attempt, handled before the first produce. Returns the outcome delivered."""
        delays = Backoff(*RETRY_DELAY_S).delays()
        shrunk = 0
        failing = False
        try:
            while True:
                if error is not None:
                    self.counters["delivery_retries"] += 1
                    self._metrics.delivery_retries.inc()
                    if error.too_large and shrunk < SHRINK_STEPS:
                        shrunk += 1
                        self.counters["shrunk"] += 1
                        size = len(outcome.value)
                        outcome = shrink(outcome, shrunk, self._bridge.max_message_bytes)
                        log.warning(
                            "outcome for %s refused as too large (%d bytes); replaced by a "
                            "smaller record (step %d)",
                            outcome.topic,
                            size,
                            shrunk,
                        )
                    else:
                        if not failing:
                            failing = True
                            self._failing(outcome.topic, error, +1)
                        self.delivery_error = f"{outcome.topic}: {error}"
                        log.debug("delivery to %s failed (%s); retrying", outcome.topic, error)
                        await asyncio.sleep(next(delays))
                try:
                    await self._bridge.produce(
                        outcome.topic, outcome.value, key=outcome.key, headers=outcome.headers
                    )
                    return outcome
                except DeliveryError as exc:
                    error = exc
        finally:
            if failing:
                self._failing(outcome.topic, None, -1)

    async def publish(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        """A chunk record: produced, and retried until it is acknowledged. One refused as too
        large goes again as an empty chunk under the same `seq` (`chunks.empty_chunk`), so
        its sequence keeps no gap."""
        delays = Backoff(*RETRY_DELAY_S).delays()
        while True:
            self.publishing += 1
            try:
                await self._bridge.produce(topic, value, key=key, headers=headers)
                return
            except DeliveryError as exc:
                self.counters["delivery_retries"] += 1
                self._metrics.delivery_retries.inc()
                if exc.too_large:
                    log.warning("a chunk for %s was refused as too large; sent empty", topic)
                    value = empty_chunk(value)
                else:
                    log.debug("delivery to %s failed (%s); retrying", topic, exc)
                    await asyncio.sleep(next(delays))
            finally:
                self.publishing -= 1

    def delivery(self) -> dict[str, Any]:
        """For `/readyz`: how many outcomes are failing delivery, and why."""
        return {"delivery_failing": self.failing, "delivery_error": self.delivery_error}

    def _failing(self, topic: str, error: DeliveryError | None, step: int) -> None:
        """Count the outcomes whose delivery is failing; say when it starts and when it ends
        (one line each, not one per record)."""
        self.failing += step
        if step > 0 and self.failing == 1:
            log.error(
                "delivery to %s is failing (%s): outcomes are retried until it works, and no "
                "offset behind them is committed",
                topic,
                error,
            )
        elif step < 0 and self.failing == 0:
            self.delivery_error = None
            log.warning("delivery to %s works again", topic)


class InOrderOutbox(Outbox):
    """An outbox that produces outcomes in offset order per partition: an answer that finishes
    early waits until every earlier offset of its partition has been answered
    (`LLM_WORKER_ORDERING=partition`, and exactly-once mode's `OrderedOutbox`). The calls stay
    concurrent; only the production waits. A record held long (a hold, a slow provider) holds
    its partition's later outcomes with it, and they count as in flight."""

    def __init__(self, bridge: Transport[Sent], metrics: Metrics, **kw: Any) -> None:
        super().__init__(bridge, metrics, **kw)  # `Outbox`'s keywords
        self._started: dict[Key, collections.deque[int]] = {}
        self._ready: dict[Key, dict[int, Sent]] = {}

    def track(self, rec: InputRecord) -> None:
        key = (rec.topic, rec.partition)
        started = self._started.get(key)
        if started is None:
            started = self._started[key] = collections.deque()
        started.append(rec.offset)

    def send(self, rec: InputRecord, outcome: Outcome, offsets: PartitionOffsets) -> None:
        self.hold(rec, outcome, offsets)
        self.release((rec.topic, rec.partition))

    def hold(self, rec: InputRecord, outcome: Outcome, offsets: PartitionOffsets) -> None:
        """Keep the outcome until its turn (`release`)."""
        ready = self._ready.get((rec.topic, rec.partition))
        if ready is None:
            ready = self._ready[(rec.topic, rec.partition)] = {}
        if rec.offset not in ready:
            self.waiting += 1
        ready[rec.offset] = Sent(rec, outcome, offsets)

    def release(self, key: Key) -> None:
        started, ready = self._started.get(key), self._ready.get(key)
        if not started or not ready:
            return
        while started and started[0] in ready:
            sent = ready.pop(started.popleft())
            self.waiting -= 1
            super().send(sent.record, sent.outcome, sent.offsets)

    def holding(self) -> list[Key]:
        """The partitions with outcomes held back."""
        return [k for k, ready in self._ready.items() if ready]

    def forget(self, keys: list[Key] | None = None) -> None:
        for key in list(self._started) if keys is None else keys:
            self._started.pop(key, None)
            self.waiting -= len(self._ready.pop(key, ()))
