"""Exactly-once rewinds: after an abort the worker re-reads from the committed offsets and takes
no record fetched before that seek, so a committed transaction never holds an outcome twice;
inside a rebalance hook (the consumer thread is busy) the rewind does not wait for the thread.

The fake is transactional like librdkafka where it matters: one consumer thread (a lock shared
by `consume` and `on_consumer_thread`), a producer whose records are visible only when their
transaction commits, offsets committed with the transaction, `seek` moving the fetch position.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from confluent_kafka import OFFSET_INVALID, TopicPartition

from worker.stream.consumer import Worker

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

    async def on_consumer_thread(self, fn: Any) -> Any:
        async with self.thread:
            return fn()

    async def consume(self, n: int, timeout: float) -> list[FakeMsg]:
        async with self.thread:
            out = await super().consume(n, timeout)
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


def _eos_worker(bridge: TxnBridge) -> Worker:
    return make_worker(
        bridge, FakePipeline(), max_in_flight=16, max_in_flight_per_partition=16, consume_batch=8
    )


async def _wait(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_batch_fetched_before_the_rewind_seek_is_not_answered_twice() -> None:
    bridge = TxnBridge({0: 48})
    bridge.stall_at = 16  # the consume that takes offset 16 returns only after the rewind began
    worker = _eos_worker(bridge)
    task = asyncio.create_task(worker.run())
    try:
        await _wait(lambda: bridge.stalled.is_set() and bridge.committed_offsets.get(0) == 16)
        # a delivery of the open transaction failed: the next commit aborts it and rewinds
        bridge.producer.open.append(b"doomed")
        worker._outbox.tainted = "a delivery failed"  # type: ignore[attr-defined]
        commit = asyncio.create_task(worker.commit_now())
        await asyncio.sleep(0.05)  # the rewind waits for the consumer thread ...
        bridge.unstall.set()  # ... where a batch of offsets 16.. was fetched before the seek
        await commit
        await _wait(lambda: bridge.committed_offsets.get(0) == 48)
    finally:
        worker.stop()
        await task
    assert bridge.producer.aborts >= 1
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
