"""Plain confluent-kafka helpers for tests (blocking: call them with asyncio.to_thread)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


class Record:
    __slots__ = ("headers", "key", "offset", "partition", "value")

    def __init__(self, msg: Any) -> None:
        self.value: bytes = msg.value()
        self.key: bytes | None = msg.key()
        self.headers: dict[str, bytes] = dict(msg.headers() or [])
        self.partition: int = msg.partition()
        self.offset: int = msg.offset()

    def json(self) -> Any:
        return json.loads(self.value)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result()


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]] | Iterable[bytes],
) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, rec in enumerate(records):
        key, value = rec if isinstance(rec, tuple) else (None, rec)
        p.produce(topic, value, key)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def produce_prompts(bootstrap: str, topic: str, prompts: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [(p["id"].encode(), json.dumps(p).encode()) for p in prompts])


def _reader(bootstrap: str, topic: str) -> Consumer:
    """A consumer of `topic` from its beginning, in a group of its own."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "partition.assignment.strategy": "range",
        }
    )
    c.subscribe([topic])
    return c


def consume(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Record]:
    """Read `topic` from the beginning until `count` records (or the timeout)."""
    c = _reader(bootstrap, topic)
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is None:
                    out.append(Record(m))
    finally:
        c.close()
    return out


def consume_until_ids(
    bootstrap: str, topic: str, ids: set[str], timeout: float = 90.0
) -> list[dict[str, Any]]:
    """Read completions until every id was seen at least once; returns every record read."""
    c = _reader(bootstrap, topic)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while not ids <= seen and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is None:
                    doc = json.loads(m.value())
                    out.append(doc)
                    seen.add(doc["id"])
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def last_offsets(records: Iterable[Record]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        out[r.partition] = max(out.get(r.partition, -1), r.offset)
    return out


def read_to_end(
    bootstrap: str, topic: str, idle_s: float = 2.0, timeout: float = 120.0
) -> list[Record]:
    """Every record of `topic`, read from the start until each partition's position reaches its
    high watermark *and* nothing new came for `idle_s` (Tansu's watermark counts batches, not
    records, so it alone would stop early there). Call it once the writers have stopped: a
    reader that stops at a count would hide the duplicates past that count."""
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        out: list[Record] = []
        last_new = time.monotonic()
        deadline = last_new + timeout
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.2)
            for m in msgs:
                if m.error() is None:
                    out.append(Record(m))
                    pos[m.partition()] = m.offset() + 1
            if msgs:
                last_new = time.monotonic()
            at_end = all(pos[p] >= ends[p] for p in parts)
            if at_end and time.monotonic() - last_new >= idle_s:
                return out
        raise TimeoutError(f"{topic} not read to its end within {timeout:.0f} s: {pos} < {ends}")
    finally:
        c.close()
