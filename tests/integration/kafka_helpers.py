"""Plain confluent-kafka helpers for tests (blocking: call them with asyncio.to_thread).

Reads are broker-neutral: they never trust end offsets (Tansu's ListOffsets counts record
batches, not records). A read that expects `count` records keeps reading after it has them
until the topic has been quiet for `quiet_s`, so duplicates written late are seen, not hidden
by a reader that stopped at the count. `quiet_s=0` stops at the count: only for waiting on
progress, never for asserting what a topic holds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
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


def _reader(bootstrap: str, topic: str, isolation: str = "read_committed") -> Consumer:
    """A consumer of every partition of `topic` from its beginning (assigned, no group: no
    join to wait for, nothing committed)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "isolation.level": isolation,
        }
    )
    meta = c.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None or not meta.partitions:
        c.close()
        raise RuntimeError(f"cannot read {topic}: {meta.error}")
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    return c


QUIET_S = 1.5
"""How long a topic must stay quiet after the expected records before a read ends."""


def _read(
    bootstrap: str,
    topic: str,
    enough: Callable[[list[Record]], bool],
    timeout: float,
    quiet_s: float,
    isolation: str = "read_committed",
) -> list[Record]:
    """Read from the beginning until `enough(records)`, then until nothing new came for
    `quiet_s` seconds (or `timeout` in all)."""
    c = _reader(bootstrap, topic, isolation)
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            if quiet_since is None and enough(out):
                if quiet_s <= 0:
                    break
                quiet_since = time.monotonic()
            if quiet_since is not None and time.monotonic() - quiet_since >= quiet_s:
                break
            got = [Record(m) for m in c.consume(500, 0.2) if m.error() is None]
            if got:
                out += got
                if quiet_since is not None:
                    quiet_since = time.monotonic()
    finally:
        c.close()
    return out


def consume(
    bootstrap: str, topic: str, count: int, timeout: float = 60.0, *, quiet_s: float = QUIET_S
) -> list[Record]:
    """Read `topic` from the beginning: at least `count` records (or until the timeout),
    then everything that still arrives until it is quiet for `quiet_s`."""
    return _read(bootstrap, topic, lambda out: len(out) >= count, timeout, quiet_s)


def read_all(
    bootstrap: str,
    topic: str,
    timeout: float = 60.0,
    *,
    quiet_s: float = 3.0,
    isolation: str = "read_committed",
) -> list[Record]:
    """Everything `topic` holds: read from the beginning until quiet for `quiet_s`. Use it
    after the writers stopped (a read from the start also finds what a live reader on Tansu
    can skip). `isolation`: librdkafka's `isolation.level`."""
    return _read(bootstrap, topic, lambda _out: True, timeout, quiet_s, isolation)


def consume_until_ids(
    bootstrap: str, topic: str, ids: set[str], timeout: float = 90.0, *, quiet_s: float = QUIET_S
) -> list[dict[str, Any]]:
    """Read completions until every id was seen at least once, then until quiet for
    `quiet_s`; returns every record read (duplicates included)."""

    def every_id(out: list[Record]) -> bool:
        return ids <= {r.json()["id"] for r in out}

    live = [r.json() for r in _read(bootstrap, topic, every_id, timeout, quiet_s)]
    missing = ids - {d["id"] for d in live}
    if not missing:
        return live
    # A live reader on Tansu can skip a record two producers appended at the same moment,
    # while a read from the start finds it (DESIGN.md, Tansu's departures). Read once more
    # from the start, so a skip is not reported as a lost answer; a real loss stays missing.
    again = [r.json() for r in read_all(bootstrap, topic, timeout=60.0)]
    found = missing & {d["id"] for d in again}
    if found:
        print(f"[kafka_helpers] {len(found)} id(s) skipped by the live read, found from the start")
        return again
    return live


def input_ends(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> dict[int, int]:
    """One past the last offset of each partition of `topic`, read from the records (not from
    the broker's end offsets: Tansu counts record batches)."""
    return {
        p: off + 1 for p, off in last_offsets(consume(bootstrap, topic, count, timeout)).items()
    }


_COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets. A coordinator that is not ready yet (a broker that just
    started, still loading its offsets topic) is asked again, for up to 30 s."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_NOT_READY or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def last_offsets(records: Iterable[Record]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in records:
        out[r.partition] = max(out.get(r.partition, -1), r.offset)
    return out


def topics(bootstrap: str) -> set[str]:
    """The topics the broker has now."""
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


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
