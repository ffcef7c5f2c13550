"""Bench traffic: a paced publisher thread and completion readers (live, and a re-read from
the start of the topic)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from llm_worker.devkit.bench.replicas import client_conf
from llm_worker.worker.cli.client import wait_until
from llm_worker.worker.config import Settings

__all__ = ["Publisher", "Reader", "reread"]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class Publisher(threading.Thread):
    """Publishes `{run}-{i}` at `rate`/s to partition i % partitions until stopped."""

    def __init__(
        self, settings: Settings, run: str, rate: float, partitions: int, model_id: str
    ) -> None:
        super().__init__(name="bench-publish", daemon=True)
        self._settings = settings
        self._run = run
        self._rate = rate
        self._partitions = partitions
        self._model_id = model_id
        self.stop = threading.Event()
        self.sent: dict[str, tuple[float, int]] = {}  # id -> (send time, partition)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._publish()
        except BaseException as exc:
            self.error = exc

    def _publish(self) -> None:
        producer = Producer(
            {**client_conf(self._settings), "linger.ms": 5, "enable.idempotence": True}
        )
        topic = self._settings.prompts_topic
        start = time.monotonic()
        i = 0
        while not self.stop.is_set():
            wait_until(producer, start + i / self._rate)
            pid = f"{self._run}-{i}"
            part = i % self._partitions
            now = time.time()
            prompt = {
                "id": pid,
                "model": self._model_id,
                "prompt": f"failover probe {i}",
                "max_tokens": 8,
                "metadata": {"sent": now, "partition": part},
            }
            while True:
                try:
                    producer.produce(topic, _enc.encode(prompt), pid.encode(), partition=part)
                    break
                except BufferError:
                    producer.poll(0.05)
            self.sent[pid] = (now, part)
            i += 1
            if i % 200 == 0:
                producer.poll(0)
        remaining = producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} prompts were not acknowledged within 30 s")


def reread(settings: Settings, ids: set[str], quiet_s: float = 3.0) -> list[dict[str, Any]]:
    """The completions for `ids`, read from the start of the topic by a fresh consumer."""
    conf = client_conf(settings)
    conf.update({"group.id": f"llm-worker-bench-reread-{uuid.uuid4().hex[:12]}"})
    conf["enable.auto.commit"] = False
    consumer = Consumer(conf)
    topic = settings.completions_topic
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: dict[str, dict[str, Any]] = {}
        last = time.monotonic()
        while time.monotonic() - last < quiet_s and len(found) < len(ids):
            for msg in consumer.consume(1000, 0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                last = time.monotonic()
                try:
                    comp = _dec.decode(value)
                except msgspec.DecodeError:
                    continue
                if isinstance(comp, dict) and comp.get("id") in ids:
                    found.setdefault(comp["id"], comp)
        return list(found.values())
    finally:
        consumer.close()


class Reader(threading.Thread):
    """Reads every completion from the start of the (fresh) completions topic."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="bench-consume", daemon=True)
        conf = client_conf(settings)
        conf.update(
            {
                "group.id": f"llm-worker-bench-failover-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 25,
            }
        )
        self._consumer = Consumer(conf)
        topic = settings.completions_topic
        meta = self._consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions")
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.stop = threading.Event()
        self.got: list[tuple[float, dict[str, Any]]] = []  # (receive time, completion)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                msgs = self._consumer.consume(1000, 0.05)
                now = time.time()
                for msg in msgs:
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    try:
                        comp = _dec.decode(value)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(comp, dict):
                        self.got.append((now, comp))
        finally:
            self._consumer.close()
