"""Exactly-once: outcomes enter the transaction in offset order per partition, none while a
commit is being made, and a failed delivery taints the transaction instead of being retried."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream.offsets import PartitionOffsets
from llm_worker.worker.stream.transactions import ExactlyOnce, OrderedOutbox

from .stream_fakes import FakeBridge


def _rec(partition: int, offset: int) -> InputRecord:
    return InputRecord(topic="t", partition=partition, offset=offset, value=b"{}")


def _out(tag: str) -> Outcome:
    return Outcome(topic="out", value=tag.encode(), key=None, headers=None)


async def test_outcomes_are_released_in_offset_order_per_partition() -> None:
    bridge = FakeBridge({0: 0, 1: 0})
    spawned: list[Any] = []
    box = OrderedOutbox(bridge, Metrics(), spawn=lambda k, c: spawned.append(c))  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    offsets = PartitionOffsets()
    for p in (0, 1):
        for o in (5, 7, 9):  # gaps, as compaction or transaction markers leave them
            box.track(_rec(p, o))
            offsets.start(o)
    box.send(_rec(0, 9), _out("0:9"), offsets)
    box.send(_rec(1, 5), _out("1:5"), offsets)
    box.send(_rec(0, 7), _out("0:7"), offsets)
    assert bridge.produced == [b"1:5"]  # 0:7 and 0:9 wait for 0:5
    box.frozen = True  # a commit is being made: nothing is released
    box.send(_rec(0, 5), _out("0:5"), offsets)
    assert bridge.produced == [b"1:5"]
    box.release_all()
    assert bridge.produced == [b"1:5", b"0:5", b"0:7", b"0:9"]
    assert not spawned


async def test_a_failed_delivery_taints_the_transaction_and_is_not_retried() -> None:
    bridge = FakeBridge({0: 0})
    spawned: list[Any] = []
    box = OrderedOutbox(bridge, Metrics(), spawn=lambda k, c: spawned.append(c))  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    offsets = PartitionOffsets()
    box.track(_rec(0, 0))
    offsets.start(0)
    bridge.fail_next_produce = 1
    box.send(_rec(0, 0), _out("x"), offsets)
    await asyncio.sleep(0.05)  # the fake reports deliveries a moment later
    assert box.tainted is not None and "Local: Message timed out" in box.tainted
    assert box.unacked == 0 and not spawned and offsets.pending_commit() is None


async def test_a_record_purged_by_an_abort_does_not_taint_the_next_transaction() -> None:
    """An abort purges the records still queued: their reports come back as failures that
    belong to the aborted transaction, not to the one begun after it."""
    bridge = FakeBridge({0: 0})
    bridge.fail_code = KafkaError._PURGE_QUEUE
    spawned: list[Any] = []
    box = OrderedOutbox(bridge, Metrics(), spawn=lambda k, c: spawned.append(c))  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    offsets = PartitionOffsets()
    box.track(_rec(0, 0))
    offsets.start(0)
    bridge.fail_next_produce = 1
    box.send(_rec(0, 0), _out("x"), offsets)
    await asyncio.sleep(0.05)  # the fake reports deliveries a moment later
    assert box.tainted is None
    assert box.unacked == 0 and not spawned and offsets.pending_commit() is None


class _FencedProducer:
    """A transactional producer the broker has fenced: every transactional call fails."""

    def __init__(self) -> None:
        self.err = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)

    def abort_transaction(self, timeout: float) -> None:
        raise KafkaException(self.err)

    def begin_transaction(self) -> None:
        raise AssertionError("no new transaction after a fatal error")


async def test_a_fenced_producer_stops_the_worker_instead_of_aborting_forever() -> None:
    """Found by the chaos suite: a producer fenced mid-transaction (its transaction timed out
    during a long rebalance) made every later commit and abort fail, and the worker went on
    aborting and rewinding for minutes without answering anything. It is fatal: report it."""
    bridge = FakeBridge({0: 0})
    bridge.producer = _FencedProducer()  # type: ignore[attr-defined]
    reported: list[KafkaError] = []
    bridge.report_fatal = reported.append  # type: ignore[method-assign,assignment]
    box = OrderedOutbox(bridge, Metrics(), spawn=lambda k, c: None)  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    eos = ExactlyOnce(bridge, box)  # type: ignore[arg-type]
    await eos.abort()
    assert [e.code() for e in reported] == [KafkaError._FENCED]
