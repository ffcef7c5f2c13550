"""Fakes for the consume loop: a bridge that behaves like librdkafka where it matters (a
fixed backlog per partition, pause/resume, batched delivery reports, records refused at once
when they are too large, rebalance hooks fired from `consume`), and a pipeline that finishes
offsets in a chosen order.

The bridge's `fetch` returns librdkafka-like messages (`FakeMsg`); `consume` turns them into
the seam's typed records with the real bridge's own `kafka_conf.to_batch`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from confluent_kafka import KafkaError

from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.records import InputRecord, Outcome, record_size
from llm_worker.worker.stream.consumer import Worker
from llm_worker.worker.stream.kafka import KafkaBridge
from llm_worker.worker.stream.kafka_conf import delivery_error, to_batch
from llm_worker.worker.stream.outbox import Sent
from llm_worker.worker.stream.transport import Ack, AckHandler, Batch, DeliveryError

__all__ = ["FakeBridge", "FakeMsg", "FakePipeline", "make_worker", "run_until"]


class FakeMsg:
    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes = b"{}",
        key: bytes | None = None,
    ) -> None:
        self._t, self._p, self._o = topic, partition, offset
        self._value, self._key = value, key

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> None:
        return None


class FakeBridge:
    """Serves a fixed backlog per partition; honours pause/resume like a consumer."""

    def __init__(self, backlog: dict[int, int]) -> None:
        self.next = dict.fromkeys(backlog, 0)
        self.end = dict(backlog)
        self.paused: set[tuple[str, int]] = set()
        self.pause_calls = 0
        self.resume_calls = 0
        self.commits: list[dict[tuple[str, int], int]] = []
        self.produced: list[bytes] = []
        self.fail_next_produce = 0
        self.max_in_flight_seen: dict[int, int] = defaultdict(int)
        self.ack_handler: AckHandler[Sent] | None = None
        self.acks: list[Ack[Sent]] = []
        self.hold_acks = False  # True: delivery reports wait until released
        self.fail_code = KafkaError._MSG_TIMED_OUT
        self.records: dict[tuple[int, int], tuple[bytes, bytes | None]] = {}  # custom records
        self.consume_calls = 0
        self.epochs: dict[tuple[str, int], int] = {("t", p): 1 for p in backlog}
        self.pending_rebalance: list[tuple[str, list[tuple[str, int]]]] = []
        self.sent: list[tuple[str, bytes, bytes | None, Any]] = []  # topic, value, key, headers

        self.assignment = frozenset(("t", p) for p in backlog)
        self.max_message_bytes = 1_000_000
        self.transactional = False
        self.fatal: str | None = None
        self.flushed = 0

    def set_ack_handler(self, handler: AckHandler[Sent]) -> None:
        self.ack_handler = handler

    def set_rebalance_hooks(self, *hooks: Any) -> None:
        self.hooks = hooks

    def set_fatal_hook(self, hook: Any) -> None:
        self.fatal_hook = hook

    def report_fatal(self, err: KafkaError) -> None:
        if self.fatal is None:
            self.fatal = f"{err.name()}: {err.str()}"
            self.fatal_hook(self.fatal)

    # The real bridge's exactly-once calls, over the librdkafka-like `producer` and `consumer`
    # a test gives the bridge, and its own consumer thread (`_in_consumer_thread`).
    init_transactions = KafkaBridge.init_transactions
    begin_transaction = KafkaBridge.begin_transaction
    commit_transaction = KafkaBridge.commit_transaction
    abort_transaction = KafkaBridge.abort_transaction
    _transaction_error = KafkaBridge._transaction_error
    group_metadata = KafkaBridge.group_metadata
    read_group_metadata = KafkaBridge.read_group_metadata
    rewind = KafkaBridge.rewind

    async def _in_consumer_thread(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def epoch(self, key: tuple[str, int]) -> int:
        return self.epochs.get(key, 0) if key in self.assignment else 0

    def rebalance(self, kind: str, parts: list[int]) -> None:
        """Fire `kind` (revoke, lost, assign) for partitions `parts` inside the next consume,
        on a thread of its own, as librdkafka fires them on the consumer thread."""
        self.pending_rebalance.append((kind, [("t", p) for p in parts]))

    def _fire(self, kind: str, keys: list[tuple[str, int]]) -> Any:
        on_assign, on_revoke, on_lost = self.hooks
        if kind == "assign":
            for k in keys:
                self.epochs[k] = self.epochs.get(k, 0) + 1
            self.paused.difference_update(keys)  # like the real bridge: resumed on assign
            self.assignment = self.assignment | frozenset(keys)
            on_assign(keys)
            return None
        try:
            if kind == "revoke":
                commits = on_revoke(keys)
                if commits:
                    self.commits.append(dict(commits))
                return commits
            return on_lost(keys)
        finally:
            self.assignment = self.assignment - frozenset(keys)

    async def flush(self, timeout: float) -> int:
        self.flushed += 1
        self.release_acks()
        return len(self.acks)

    def _check_size(self, value: bytes, key: bytes | None, headers: Any) -> None:
        if record_size(value, key, headers) > self.max_message_bytes:
            raise delivery_error(
                KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
            )  # at once, as librdkafka

    async def consume(self, n: int, timeout: float) -> Batch:
        return to_batch(await self.fetch(n, timeout))  # type: ignore[arg-type]

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        self.consume_calls += 1
        while self.pending_rebalance:
            kind, keys = self.pending_rebalance.pop(0)
            await asyncio.to_thread(self._fire, kind, keys)
        out: list[FakeMsg] = []
        for p in sorted(self.next):
            while (
                len(out) < n
                and ("t", p) not in self.paused
                and ("t", p) in self.assignment
                and self.next[p] < self.end[p]
            ):
                value, key = self.records.get((p, self.next[p]), (b"{}", None))
                out.append(FakeMsg("t", p, self.next[p], value, key))
                self.next[p] += 1
        if not out:
            await asyncio.sleep(timeout)
        return out

    async def pause(self, parts: list[tuple[str, int]]) -> None:
        self.pause_calls += 1
        self.paused.update(parts)

    async def resume(self, parts: list[tuple[str, int]]) -> None:
        self.resume_calls += 1
        self.paused.difference_update(parts)

    async def commit(
        self, offsets: dict[tuple[str, int], tuple[int, int]]
    ) -> dict[tuple[str, int], int]:
        done = {k: off for k, (off, epoch) in offsets.items() if epoch == self.epoch(k)}
        self.commits.append(done)
        return done

    async def produce(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = None
    ) -> None:
        self._check_size(value, key, headers)
        await asyncio.sleep(0)
        if self.fail_next_produce:
            self.fail_next_produce -= 1
            raise delivery_error(KafkaError(KafkaError._MSG_TIMED_OUT))
        self.produced.append(value)
        self.sent.append((topic, value, key, headers))

    def produce_nowait(self, topic: str, value: bytes, key: Any, headers: Any, token: Sent) -> None:
        """Like the real bridge: reports come back later, several in one handler call."""
        self._check_size(value, key, headers)
        err: DeliveryError | None = None
        if self.fail_next_produce:
            self.fail_next_produce -= 1
            err = delivery_error(KafkaError(self.fail_code))
        else:
            self.produced.append(value)
            self.sent.append((topic, value, key, headers))
        if not self.acks:
            asyncio.get_running_loop().call_later(0.001, self.release_acks)
        self.acks.append(Ack(token, err))

    def release_acks(self) -> None:
        if self.hold_acks or not self.acks:
            return
        batch, self.acks = self.acks, []
        assert self.ack_handler is not None
        self.ack_handler(batch)


class FakePipeline:
    """Finishes offsets in a chosen order: each record waits for its own release event."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.hold: dict[int, asyncio.Event] = {}
        self.in_flight: dict[int, int] = defaultdict(int)
        self.peak: dict[int, int] = defaultdict(int)

    def begin(self, rec: InputRecord) -> InputRecord:
        return rec  # always the asynchronous path

    async def finish(self, rec: InputRecord) -> Outcome:
        p = rec.partition
        self.in_flight[p] += 1
        self.peak[p] = max(self.peak[p], self.in_flight[p])
        try:
            ev = self.hold.get(rec.offset)
            if ev is not None:
                await ev.wait()
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight[p] -= 1
        return Outcome(topic="out", value=f"{p}:{rec.offset}".encode(), key=None, headers=None)


def make_worker(bridge: FakeBridge, pipeline: FakePipeline, **kw: Any) -> Worker[Any]:
    args: dict[str, Any] = {
        "max_in_flight": 64,
        "max_in_flight_per_partition": 8,
        "consume_batch": 16,
        "commit_interval_s": 0.01,
        "shutdown_timeout_s": 2.0,
    }
    args.update(kw)
    metrics = Metrics()
    worker: Worker[Any] = Worker(bridge=bridge, pipeline=pipeline, metrics=metrics, **args)  # type: ignore[arg-type]
    wire(worker, bridge, metrics)
    return worker


def wire(worker: Worker[Any], bridge: FakeBridge, metrics: Metrics) -> None:
    """The callbacks `App._wire` registers, as it registers them."""
    a = worker.assignment
    bridge.set_rebalance_hooks(a.on_assign, a.on_revoke, a.on_lost)
    bridge.set_fatal_hook(worker.on_fatal)
    bridge.set_ack_handler(a.outbox.on_acks)
    metrics.in_flight.set_function(lambda: worker.in_flight)
    metrics.delivery_failing.set_function(lambda: a.outbox.failing)


async def run_until(worker: Worker[Any], cond: Any, timeout: float = 10.0) -> None:
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
