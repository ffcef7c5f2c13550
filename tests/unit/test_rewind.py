"""Exactly-once rewinds: after an abort the worker re-reads from the committed offsets and takes
no record fetched before that seek, so a committed transaction never holds an outcome twice;
inside a rebalance hook (the consumer thread is busy) the rewind does not wait for the thread,
and a revoke settles the open transaction before the partitions go (commit, or abort).

The fake is transactional like librdkafka where it matters: one consumer thread (a lock shared
by `consume` and `_in_consumer_thread`), a producer whose records are visible only when their
transaction commits, offsets committed with the transaction, `seek` moving the fetch position,
an assignment starting at the committed offset, and the consumer's calls waiting while a
rebalance callback runs on its thread (as confluent-kafka's do).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.stream.consumer import Worker
from llm_worker.worker.stream.offsets import OffsetTracker
from llm_worker.worker.stream.transactions import ExactlyOnce, OrderedOutbox

from .stream_fakes import FakeBridge, FakeMsg, FakePipeline, make_worker


class FakeTxnProducer:
    def __init__(self, bridge: TxnBridge) -> None:
        self.bridge = bridge
        self.open: list[bytes] = []
        self.offsets: dict[int, int] = {}
        self.committed: list[bytes] = []  # what a read_committed consumer sees
        self.aborts = 0

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self.open, self.offsets = [], {}

    def send_offsets_to_transaction(self, tps: list[TopicPartition], meta: Any, t: float) -> None:
        self.offsets.update({tp.partition: tp.offset for tp in tps})

    def commit_transaction(self, timeout: float) -> None:
        self.committed += self.open
        self.bridge.committed_offsets.update(self.offsets)
        self.open, self.offsets = [], {}

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        self.open, self.offsets = [], {}


class FakeTxnConsumer:
    def __init__(self, bridge: TxnBridge) -> None:
        self.bridge = bridge

    def consumer_group_metadata(self) -> object:
        bridge = self.bridge
        if bridge.hook_thread not in (None, threading.get_ident()):
            bridge.hook_done.wait(30)  # another thread is inside consume (a rebalance hook)
        self.bridge.metadata_calls += 1
        return object()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.bridge.assignment)]

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        got = self.bridge.committed_offsets
        return [
            TopicPartition(tp.topic, tp.partition, got.get(tp.partition, OFFSET_INVALID))
            for tp in tps
        ]

    def seek(self, tp: TopicPartition) -> None:
        self.bridge.next[tp.partition] = max(tp.offset, 0)


class TxnBridge(FakeBridge):
    def __init__(self, backlog: dict[int, int]) -> None:
        super().__init__(backlog)
        self.transactional = True
        self.producer = FakeTxnProducer(self)
        self.consumer = FakeTxnConsumer(self)
        self.committed_offsets: dict[int, int] = {}
        self.thread = asyncio.Lock()  # librdkafka's one consumer thread
        self.stall_at: int | None = None  # a consume that reaches this offset waits ...
        self.stalled = asyncio.Event()
        self.unstall = asyncio.Event()  # ... until this is set, then returns what it took
        self.hook_thread: int | None = None  # the thread running a rebalance hook, if any
        self.hook_done = threading.Event()
        self.metadata_calls = 0

    def _fire(self, kind: str, keys: list[tuple[str, int]]) -> Any:
        if kind == "assign":  # an assigned partition starts at its committed offset
            for _t, p in keys:
                self.next[p] = self.committed_offsets.get(p, 0)
        self.hook_done.clear()
        self.hook_thread = threading.get_ident()
        try:
            return super()._fire(kind, keys)
        finally:
            self.hook_thread = None
            self.hook_done.set()

    async def _in_consumer_thread(self, fn: Any, *args: Any) -> Any:
        async with self.thread:
            return fn(*args)

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        async with self.thread:
            out = await super().fetch(n, timeout)
            if self.stall_at is not None and any(m.offset() >= self.stall_at for m in out):
                self.stall_at = None
                self.stalled.set()
                await self.unstall.wait()
            return out

    def produce_nowait(self, topic: str, value: bytes, key: Any, headers: Any, token: Any) -> None:
        failing = self.fail_next_produce > 0
        super().produce_nowait(topic, value, key, headers, token)
        if not failing:
            self.producer.open.append(value)

    async def produce(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Any = None
    ) -> None:
        await super().produce(topic, value, key=key, headers=headers)
        self.producer.open.append(value)


def _eos_worker(bridge: TxnBridge) -> Worker[Any]:
    return make_worker(
        bridge, FakePipeline(), max_in_flight=16, max_in_flight_per_partition=16, consume_batch=8
    )


async def _wait(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_batch_fetched_before_the_rewind_seek_is_not_answered_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = TxnBridge({0: 48})
    bridge.stall_at = 16  # the consume that takes offset 16 returns only after the rewind began
    worker = _eos_worker(bridge)
    task = asyncio.create_task(worker.run())
    try:
        await _wait(bridge.stalled.is_set)
        # a delivery of the open transaction failed: the next commit aborts it and rewinds
        bridge.producer.open.append(b"doomed")
        worker.assignment.outbox.tainted = "a delivery failed"  # type: ignore[union-attr]
        with caplog.at_level("WARNING", logger="llm_worker"):
            commit = asyncio.create_task(worker.commit_now())
            await asyncio.sleep(0.05)  # the rewind waits for the consumer thread ...
            bridge.unstall.set()  # ... where a batch of offsets 16.. was fetched before the seek
            await commit
        await _wait(lambda: bridge.committed_offsets.get(0) == 48)
    finally:
        worker.stop()
        await task
    assert bridge.producer.aborts >= 1
    said = [r.getMessage() for r in caplog.records if r.name == "llm_worker"]
    assert "transaction aborted (a delivery failed); rewinding" in said
    answered = Counter(bridge.producer.committed)
    assert sorted(answered) == sorted(f"0:{o}".encode() for o in range(48))  # nothing lost
    assert [v for v, n in answered.items() if n > 1] == []  # nothing committed twice


async def test_partitions_lost_in_exactly_once_rewind_the_rest_without_waiting() -> None:
    bridge = TxnBridge({0: 40, 1: 40})
    worker = _eos_worker(bridge)
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    try:
        await _wait(lambda: bridge.committed_offsets.get(0, 0) >= 8)
        started = loop.time()
        bridge.rebalance("lost", [1])  # fired inside the next consume, on the consumer thread
        await _wait(lambda: ("t", 1) not in bridge.assignment)
        await _wait(lambda: bridge.committed_offsets.get(0) == 40)
        took = loop.time() - started
    finally:
        worker.stop()
        await task
    # the hook's rewind did not wait for the consumer thread it runs on (35 s before the fix)
    assert took < 30
    answered = Counter(v for v in bridge.producer.committed if v.startswith(b"0:"))
    assert sorted(answered) == sorted(f"0:{o}".encode() for o in range(40))
    assert [v for v, n in answered.items() if n > 1] == []
    assert worker.stats()["lost"] == 1


async def test_a_revoke_with_work_in_flight_commits_each_outcome_once() -> None:
    """An eager rebalance (every partition revoked, then assigned again) while outcomes are in
    the open transaction: the revoke commits them with their offsets before the partitions go,
    so the re-read from the committed offsets answers nothing twice. (Before the fix the
    transaction's commit asked the consumer for its group metadata from the event loop while
    the hook held the consumer thread: the loop froze until the hook gave up, the partitions
    went without their offsets, and the old transaction committed their outcomes later.)"""
    bridge = TxnBridge({0: 40, 1: 40})
    worker = make_worker(
        bridge,
        FakePipeline(delay=0.02),
        max_in_flight=16,
        max_in_flight_per_partition=8,
        consume_batch=8,
        commit_interval_s=0.05,
        shutdown_timeout_s=0.5,
    )
    task = asyncio.create_task(worker.run())
    try:
        await _wait(lambda: bridge.committed_offsets.get(0, 0) >= 8)
        bridge.rebalance("revoke", [0, 1])
        bridge.rebalance("assign", [0, 1])
        await _wait(lambda: bridge.committed_offsets == {0: 40, 1: 40}, timeout=30)
    finally:
        worker.stop()
        await task
    answered = Counter(bridge.producer.committed)
    expected = [f"{p}:{o}".encode() for p in (0, 1) for o in range(40)]
    assert sorted(answered) == sorted(expected)  # nothing lost
    assert [v for v, n in answered.items() if n > 1] == []  # nothing committed twice
    assert worker.stats()["aborts"] == 0  # the revoke committed: nothing was redone


async def test_a_partition_revoked_with_work_abandoned_is_answered_when_it_comes_back() -> None:
    """A revoke abandons a record still running at the deadline; the outcomes after it, held
    back for order, go with it. When the partition comes back it is read again from the
    committed offset and every record is answered once (before the fix the held-back outcomes
    stayed: the partition's outcomes waited forever for the abandoned offset)."""
    bridge = TxnBridge({0: 20})
    pipeline = FakePipeline()
    held = pipeline.hold[5] = asyncio.Event()
    worker = make_worker(
        bridge,
        pipeline,
        max_in_flight=16,
        max_in_flight_per_partition=16,
        consume_batch=8,
        commit_interval_s=0.05,
        shutdown_timeout_s=0.3,
    )
    task = asyncio.create_task(worker.run())
    try:
        await _wait(lambda: bridge.committed_offsets.get(0) == 5 and bridge.next[0] > 6)
        bridge.rebalance("revoke", [0])
        bridge.rebalance("assign", [0])
        await _wait(lambda: bridge.epochs[("t", 0)] == 2)
        held.set()  # the record answers when it is read again
        await _wait(lambda: bridge.committed_offsets.get(0) == 20)
    finally:
        worker.stop()
        await task
    answered = Counter(bridge.producer.committed)
    assert sorted(answered) == sorted(f"0:{o}".encode() for o in range(20))
    assert [v for v, n in answered.items() if n > 1] == []


class GenerationConsumer(FakeTxnConsumer):
    def consumer_group_metadata(self) -> object:
        super().consumer_group_metadata()
        return ("generation", self.bridge.generation)  # type: ignore[attr-defined]


class GenerationProducer(FakeTxnProducer):
    def send_offsets_to_transaction(self, tps: list[TopicPartition], meta: Any, t: float) -> None:
        if meta != ("generation", self.bridge.generation):  # type: ignore[attr-defined]
            # the broker refuses offsets sent with an earlier generation's metadata
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        super().send_offsets_to_transaction(tps, meta, t)


class GenerationBridge(TxnBridge):
    """The group's generation moves on with every rebalance callback."""

    def __init__(self, backlog: dict[int, int]) -> None:
        super().__init__(backlog)
        self.generation = 1
        self.producer = GenerationProducer(self)
        self.consumer = GenerationConsumer(self)

    def _fire(self, kind: str, keys: list[tuple[str, int]]) -> Any:
        self.generation += 1
        return super()._fire(kind, keys)


async def test_a_rebalance_after_the_group_metadata_was_read_skips_that_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A commit reads the group metadata on the consumer thread, then waits its turn for the
    transaction (another commit holds it). A partition assigned meanwhile starts a new
    generation: the commit must not send the offsets with the metadata it read before, which
    the broker refuses, aborting the transaction and redoing its work. It skips; the next
    commit, with fresh metadata, commits everything once."""
    bridge = GenerationBridge({0: 40, 1: 40})
    bridge.assignment = frozenset({("t", 0)})  # partition 1 comes in the rebalance
    worker = make_worker(  # no periodic commit: only the commits made here
        bridge, FakePipeline(), max_in_flight=16, consume_batch=8, commit_interval_s=3600.0
    )
    eos = worker.assignment.eos
    assert eos is not None
    task = asyncio.create_task(worker.run())
    try:
        await _wait(lambda: bridge.next[0] == 40 and worker.in_flight == 0)
        with caplog.at_level("WARNING", logger="llm_worker"):
            async with eos._lock:  # another commit holds the transaction
                commit = asyncio.create_task(worker.commit_now())
                await _wait(lambda: bridge.metadata_calls == 1)  # read in generation 1
                bridge.rebalance("assign", [1])
                await _wait(lambda: bridge.generation == 2 and bridge.hook_done.is_set())
            assert await commit == {}  # skipped: nothing sent with generation 1's metadata
            assert worker.stats()["aborts"] == 0  # not aborted and redone
            await _wait(lambda: bridge.next[1] == 40 and worker.in_flight == 0)
            assert await worker.commit_now() == {("t", 0): 40, ("t", 1): 40}
    finally:
        worker.stop()
        await task
    assert worker.stats()["aborts"] == 0
    said = [r.getMessage() for r in caplog.records if r.name == "llm_worker"]
    assert not [m for m in said if m.startswith("transaction aborted")]
    answered = Counter(bridge.producer.committed)
    assert sorted(answered) == sorted(f"{p}:{o}".encode() for p in (0, 1) for o in range(40))
    assert [v for v, n in answered.items() if n > 1] == []


class DoomingBridge(TxnBridge):
    """A delivery of the open transaction fails just as the revoke comes (before the
    periodic commit could see it)."""

    outbox: Any = None

    def _fire(self, kind: str, keys: list[tuple[str, int]]) -> Any:
        if kind == "revoke":
            self.outbox.tainted = "a delivery failed"
        return super()._fire(kind, keys)


async def test_a_revoke_whose_transaction_must_abort_rewinds_without_waiting_for_the_thread() -> (
    None
):
    """The revoke settles the open transaction; when it is doomed (a delivery failed) the
    commit aborts and rewinds. The hook holds the consumer thread, so the rewind's seek runs
    after it returns: waiting for it there would hold the hook until its timeout."""
    bridge = DoomingBridge({0: 40, 1: 40})
    worker = _eos_worker(bridge)
    bridge.outbox = worker.assignment.outbox
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    try:
        await _wait(lambda: bridge.committed_offsets.get(0, 0) >= 8)
        started = loop.time()
        bridge.rebalance("revoke", [1])  # fired inside the next consume, on the consumer thread
        await _wait(lambda: ("t", 1) not in bridge.assignment)
        await _wait(lambda: bridge.committed_offsets.get(0) == 40, timeout=60)
        took = loop.time() - started
    finally:
        worker.stop()
        await task
    assert worker.stats()["aborts"] >= 1
    assert took < 30  # the hook's wait is 35 s and more
    answered = Counter(v for v in bridge.producer.committed if v.startswith(b"0:"))
    assert sorted(answered) == sorted(f"0:{o}".encode() for o in range(40))
    assert [v for v, n in answered.items() if n > 1] == []


async def test_a_transaction_holding_only_chunks_commits_at_the_interval() -> None:
    """Found on Apache Kafka: with one streamed prompt in flight no offset was ready, so no
    transaction committed, and a read_committed reader got the whole stream at once with its
    completion. Chunks alone now commit their transaction; an empty one is still skipped."""
    bridge = TxnBridge({0: 0})
    box = OrderedOutbox(bridge, Metrics(), spawn=lambda k, c: None)  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    eos = ExactlyOnce(bridge, box)  # type: ignore[arg-type]
    tracker = OffsetTracker()
    await eos.start()
    assert await eos.commit(tracker, None) == {}
    assert eos.counters["transactions"] == 0  # nothing in it: nothing to commit
    await box.publish("chunks", b"chunk-0", b"k", None)
    assert await eos.commit(tracker, None) == {}  # no offset, but ...
    assert bridge.producer.committed == [b"chunk-0"]  # ... the chunk is readable now
    await eos.commit(tracker, None)
    assert eos.counters["transactions"] == 1  # the next one held nothing
