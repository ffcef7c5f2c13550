"""A producer whose id the broker forgot is replaced, and its records come back to be sent
again (worker/stream/kafka_producer.py). Real librdkafka producers, pointed at nowhere."""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import KafkaError

from llm_worker.worker.stream.kafka_producer import BUMPS_TO_REPLACE, ProducerSlot

CONF = {"bootstrap.servers": "127.0.0.1:1", "enable.idempotence": True, "log_level": 0}


def stats(pid: int, epoch: int) -> str:
    return json.dumps({"type": "producer", "eos": {"producer_id": pid, "producer_epoch": epoch}})


def slot(replaceable: bool = True) -> tuple[ProducerSlot, list[str], list[int]]:
    seen: list[str] = []
    asked: list[int] = []
    s = ProducerSlot(
        CONF, replaceable=replaceable, on_stats=seen.append, wants_replacing=lambda: asked.append(1)
    )
    return s, seen, asked


def test_an_epoch_that_keeps_climbing_asks_for_a_new_producer() -> None:
    s, seen, asked = slot()
    s._stats(stats(7, 0))
    s._stats(stats(7, BUMPS_TO_REPLACE - 1))  # a few bumps: a timed-out batch, say
    assert asked == []
    s._stats(stats(7, 2 * BUMPS_TO_REPLACE - 1))
    assert asked == [1]
    assert len(seen) == 3  # the statistics still reach the worker's own reader


def test_a_new_producer_id_or_a_transactional_producer_is_left_alone() -> None:
    s, _, asked = slot()
    s._stats(stats(7, 0))
    s._stats(stats(8, 50))  # another id (the broker gave a new one): not a bump
    s._stats("not json")
    assert asked == []
    t, _, asked_t = slot(replaceable=False)
    t._stats(stats(7, 0))
    t._stats(stats(7, 50))
    assert asked_t == []


def test_replacing_hands_back_every_record_of_the_old_producer() -> None:
    s, _, _ = slot()
    reports: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        reports.append(err)

    old = s.current
    for i in range(3):
        old.produce("t", b"v%d" % i, on_delivery=on_delivery)
    s.replace()
    assert s.current is not old and s.replaced == 1
    deadline = time.monotonic() + 10
    while len(reports) < 3 and time.monotonic() < deadline:
        s.poll(0.05)  # the loop's polls serve the retiring producer too
    assert [e.code() if e else None for e in reports] == [KafkaError._PURGE_QUEUE] * 3
    assert s.flush(0) == 0  # nothing left anywhere; the old producer is let go
    assert s._retiring == []
