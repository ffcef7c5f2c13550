"""Plain clients for the command line (`llm-worker send`) and the bench, over librdkafka: a
producer that sends records as fast as the broker takes them, and a reader of a topic from its
current end. Plain types in and out, like the bridge's seam (`transport`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ..config import Settings

__all__ = ["RecordSender", "TopicTail"]


def _client_conf(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    for k, v in settings.kafka_extra.items():
        if k.startswith(("security.", "sasl.", "ssl.", "client.")):
            conf[k] = v
    return conf


class RecordSender:
    """An idempotent producer: `send` waits (polling) while librdkafka's queue is full."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(
            {**_client_conf(settings), "linger.ms": 5, "enable.idempotence": True}
        )

    def send(self, topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)

    def poll(self, timeout: float) -> None:
        """Serve delivery reports; returns at the first one, or after `timeout`."""
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for every record's acknowledgement; returns how many are still unacknowledged."""
        return int(self._producer.flush(timeout))


class TopicTail:
    """Reads topics from (at most) their current end, as a consumer of a group of its own: open
    it *before* what it should see is produced."""

    def __init__(self, settings: Settings, topic: str, *more: str) -> None:
        conf = _client_conf(settings)
        conf.update(
            {
                "group.id": f"llm-worker-send-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 25,  # see KafkaBridge: quick answers from every broker
            }
        )
        self._consumer = Consumer(conf)
        tps = []
        for name in (topic, *more):
            meta = self._consumer.list_topics(name, timeout=10)
            parts = sorted(meta.topics[name].partitions) if name in meta.topics else []
            for p in parts:
                # the reported high watermark is never past the real end, so nothing is missed
                high = _high_watermark(self._consumer, TopicPartition(name, p))
                tps.append(TopicPartition(name, p, max(high, 0)))
        self._consumer.assign(tps)

    def values(self, max_records: int, timeout: float) -> list[bytes]:
        """The values of up to `max_records` records (error events and empty values skipped),
        waiting up to `timeout` for the first."""
        return [value for _topic, value in self.items(max_records, timeout)]

    def items(self, max_records: int, timeout: float) -> list[tuple[str, bytes]]:
        """`values`, each with the topic it was read from."""
        out = []
        for msg in self._consumer.consume(max_records, timeout):
            value = msg.value()
            if value is not None and msg.error() is None:
                out.append((str(msg.topic()), value))
        return out

    def close(self) -> None:
        self._consumer.close()


_NO_LEADER_YET = frozenset(
    (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    )
)


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> int:
    """The partition's end; a topic just created (by the worker, a moment ago) may have no
    leader yet on Apache Kafka: its retriable errors are waited out, up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            return int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = err is not None and (err.retriable() or err.code() in _NO_LEADER_YET)
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
