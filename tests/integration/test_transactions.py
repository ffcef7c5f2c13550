"""Kafka transactions on the session broker (Tansu or Apache Kafka): the calls that exactly-once
mode will make, one consume-transform-produce round each, with plain confluent-kafka clients.

A committed transaction makes its record visible to `read_committed` readers and moves the
group's offset with it (`send_offsets_to_transaction`); an aborted one does neither. That an
aborted record stays hidden is asserted only where the broker promises it (`HIDES_ABORTED`:
Apache Kafka; Tansu shows aborted records in some runs and not in others).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration import kafka_helpers as kh
from tests.integration.conftest import HIDES_ABORTED

pytestmark = pytest.mark.integration


def _consume_one(bootstrap: str, topic: str, group: str) -> tuple[Consumer, Any]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "partition.assignment.strategy": "range",
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            return c, msg
    c.close()
    raise AssertionError(f"nothing to read on {topic}")


def _read_committed(bootstrap: str, topic: str, *, settle_s: float = 3.0) -> list[bytes]:
    """Every record a read_committed reader gets from the start of `topic`, until it has seen
    nothing new for `settle_s` (an aborted record must have had every chance to show up)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < settle_s:
            for m in c.consume(100, 0.2):
                if m.error() is None:
                    out.append(m.value())
                    quiet_since = time.monotonic()
    finally:
        c.close()
    return out


@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_transaction_with_consumer_offsets(kafka_bootstrap: str, outcome: str) -> None:
    uid = uuid.uuid4().hex[:10]
    src, dst, group = f"tx_in_{uid}", f"tx_out_{uid}", f"tx-{uid}"
    kh.create_topic(kafka_bootstrap, src, 1)
    kh.create_topic(kafka_bootstrap, dst, 1)
    kh.produce(kafka_bootstrap, src, [(b"k", b"prompt-1"), (b"k", b"prompt-2")])

    consumer, msg = _consume_one(kafka_bootstrap, src, group)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"llm-worker-test-{uid}",
            "transaction.timeout.ms": 60000,
        }
    )
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(dst, b"completion-of-" + msg.value(), b"k")
        offsets = [TopicPartition(src, 0, msg.offset() + 1)]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        if outcome == "commit":
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    finally:
        consumer.close()
        producer.flush(10)

    seen = _read_committed(kafka_bootstrap, dst)
    moved = kh.committed(kafka_bootstrap, group, src, 1)[0]
    if outcome == "commit":
        assert seen == [b"completion-of-prompt-1"]
        assert moved == 1  # the input offset went with the transaction
    else:
        if HIDES_ABORTED:
            assert seen == []  # the aborted completion is never read
        assert moved < 0  # no offset stored for the group (OFFSET_INVALID)
