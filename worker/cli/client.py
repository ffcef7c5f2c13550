"""A small client: publish prompts and wait for their completions (`llm-worker send`, bench)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ..config import Settings

__all__ = ["CompletionWaiter", "publish"]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _client_conf(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    for k, v in settings.kafka_extra.items():
        if k.startswith(("security.", "sasl.", "ssl.", "client.")):
            conf[k] = v
    return conf


class CompletionWaiter:
    """Reads `llm_completions` from (at most) the current end, keeping the ids it waits for.

    Open it *before* publishing, so no completion can slip past it.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
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
        topic = settings.completions_topic
        meta = self._consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        tps = []
        for p in parts:
            # the reported high watermark is never past the real end, so nothing is missed
            high = _high_watermark(self._consumer, TopicPartition(topic, p))
            tps.append(TopicPartition(topic, p, max(high, 0)))
        self._consumer.assign(tps)

    def wait(
        self,
        ids: Iterable[str],
        *,
        timeout: float,
        on_completion: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Collect one completion per id (the first seen); stop at `timeout` seconds."""
        wanted = set(ids)
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        decode = _dec.decode
        # `wanted` shrinks as ids are answered: a count, not a set difference per poll
        while wanted and time.monotonic() < deadline:
            for msg in self._consumer.consume(1000, 0.2):
                value = msg.value()
                if value is None or msg.error() is not None:
                    continue
                try:
                    comp = decode(value)
                except msgspec.DecodeError:
                    continue
                cid = comp.get("id") if isinstance(comp, dict) else None
                if cid in wanted:  # the first completion per id; later ones are duplicates
                    wanted.discard(cid)
                    got[cid] = comp
                    if on_completion is not None:
                        on_completion(comp)
        return got

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> CompletionWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    settings: Settings,
    prompts: Iterable[dict[str, Any] | bytes],
    *,
    on_progress: Callable[[int], None] | None = None,
    rate: float | None = None,
    sent_at: dict[str, float] | None = None,
) -> int:
    """Publish prompts (dicts are JSON-encoded, bytes go as they are); return how many.

    `rate` paces publishing (prompts/s); `sent_at` receives each dict prompt's send time.
    """
    producer = Producer({**_client_conf(settings), "linger.ms": 5, "enable.idempotence": True})
    n = 0
    start = time.monotonic()
    for p in prompts:
        if rate:  # poll returns at the first delivery report: wait until it is time
            while (ahead := start + n / rate - time.monotonic()) > 0:
                producer.poll(ahead)
        if sent_at is not None and isinstance(p, dict):
            sent_at[str(p.get("id"))] = time.time()
        value = p if isinstance(p, bytes) else _enc.encode(p)
        key = None if isinstance(p, bytes) else str(p.get("id", "")).encode()
        while True:
            try:
                producer.produce(settings.prompts_topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(n)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} prompts were not acknowledged by the broker within 30 s")
    if on_progress is not None:
        on_progress(n)
    return n


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
