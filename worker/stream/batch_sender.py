"""The batch lane's records in exactly-once mode: each delivery is one Kafka transaction that
also holds a marker record, so a collector that died between Kafka's commit and its own
"done" mark in Postgres can tell, from the markers topic, whether that delivery committed.

The producer's `transactional.id` is one per consumer group (`<group>-batch-collector`): only
the replica holding the lane's lease uses it, and a new holder's `init_transactions` fences
the previous one (a zombie that lost its lease cannot commit a delivery any more) and aborts
its open transaction. Plain types in and out, like the bridge's seam (`transport`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from ..config import Settings
from .kafka_conf import client_config, transaction_timeout_ms

_Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]
"""topic, value, key, headers (`worker.batch.runner.OutRecord`)."""

__all__ = ["BatchSender", "SendFailed"]

log = logging.getLogger("llm_worker.batch")

CALL_S = 30.0  # a transaction call (init, commit, abort) waits this long
READ_S = 60.0  # reading the markers topic to its end waits this long


class SendFailed(Exception):
    """A delivery did not commit (aborted, or fenced: another collector took over)."""


class BatchSender:
    def __init__(self, settings: Settings, markers_topic: str) -> None:
        self._s = settings
        self.markers_topic = markers_topic
        self._producer: Producer | None = None

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def transactional_id(self) -> str:
        return f"{self._s.group_id}-batch-collector"

    async def start(self) -> None:
        """A fresh transactional producer: fences the previous collector's."""
        await self.close()
        conf: dict[str, Any] = {"enable.idempotence": True, "linger.ms": 5}
        conf.update(client_config(self._s, "producer"))
        conf["transactional.id"] = self.transactional_id
        conf["transaction.timeout.ms"] = transaction_timeout_ms(self._s)
        producer = Producer(conf)
        await asyncio.to_thread(producer.init_transactions, CALL_S)
        self._producer = producer

    async def send(self, records: list[_Record], attempt: str) -> None:
        """`records` and the marker of `attempt`, committed together or not at all."""
        producer = self._producer
        if producer is None:
            raise SendFailed("the batch sender is not started")
        await asyncio.to_thread(self._send, producer, records, attempt)

    def _send(self, producer: Producer, records: list[_Record], attempt: str) -> None:
        try:
            producer.begin_transaction()
            for topic, value, key, headers in records:
                while True:
                    try:
                        producer.produce(topic, value, key, headers=cast(Any, headers))
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.produce(self.markers_topic, attempt.encode(), attempt.encode())
            producer.commit_transaction(CALL_S)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                try:
                    producer.abort_transaction(CALL_S)
                except KafkaException:
                    pass
            else:
                self._producer = None  # fenced or fatal: start() again
            raise SendFailed(str(exc)) from None

    async def committed_attempts(self, attempts: set[str]) -> set[str]:
        """Which of `attempts` committed: their markers, read `read_committed` to the end."""
        if not attempts:
            return set()
        found: set[str] = await asyncio.to_thread(self._read_markers, attempts)
        return found

    def _read_markers(self, attempts: set[str]) -> set[str]:
        conf: dict[str, Any] = {
            "group.id": f"llm-worker-batch-markers-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
        conf.update(client_config(self._s, "consumer"))
        consumer = Consumer(conf)
        found: set[str] = set()
        try:
            meta = consumer.list_topics(self.markers_topic, timeout=10)
            topic = meta.topics.get(self.markers_topic)
            if topic is None or topic.error is not None:
                raise SendFailed(f"topic {self.markers_topic!r} cannot be read")
            parts = [
                TopicPartition(self.markers_topic, p, OFFSET_BEGINNING) for p in topic.partitions
            ]
            consumer.assign(parts)
            left = {p.partition for p in parts}
            deadline = time.monotonic() + READ_S
            while left:
                if time.monotonic() > deadline:
                    raise SendFailed(f"{self.markers_topic!r} not read to its end in {READ_S} s")
                for msg in consumer.consume(1000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            left.discard(msg.partition() or 0)
                        continue
                    value = (msg.value() or b"").decode(errors="replace")
                    if value in attempts:
                        found.add(value)
        finally:
            consumer.close()
        return found

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, 5.0)
