"""What librdkafka's statistics say: the consumer's lag per partition and the brokers it
reaches, the producer's queue.

librdkafka emits a JSON document per client every `statistics.interval.ms` (5 s by default
here; 0 turns them off) on that client's thread. `update` parses it there and replaces plain
values, which the metrics scrape and the readiness check read from any thread.
"""

from __future__ import annotations

import logging

import msgspec

__all__ = ["KafkaStats"]

log = logging.getLogger("llm_worker.kafka")

Key = tuple[str, int]


class _Partition(msgspec.Struct):
    consumer_lag: int = -1


class _Topic(msgspec.Struct):
    partitions: dict[str, _Partition] = {}


class _Broker(msgspec.Struct):
    state: str = ""
    source: str = ""


class _Stats(msgspec.Struct):
    type: str = ""
    msg_cnt: int = 0
    topics: dict[str, _Topic] = {}
    brokers: dict[str, _Broker] = {}


_decode = msgspec.json.Decoder(_Stats).decode


class KafkaStats:
    def __init__(self) -> None:
        self.lag: dict[Key, int] = {}
        """Records between each partition's committed offset and its end (known ones)."""
        self.brokers_up: int | None = None
        """Brokers the consumer is connected to, as of its last statistics (None: none yet)."""
        self.producer_queue = 0
        """Records in the producer's queues, not yet acknowledged (its last statistics)."""

    def update(self, raw: str) -> None:
        """librdkafka's `stats_cb` (the client's thread)."""
        try:
            doc = _decode(raw)
        except (msgspec.DecodeError, ValueError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        if doc.type == "producer":
            self.producer_queue = doc.msg_cnt
            return
        lag: dict[Key, int] = {}
        for name, topic in doc.topics.items():
            for pid, part in topic.partitions.items():
                number = int(pid)
                if number >= 0 and part.consumer_lag >= 0:  # -1: unknown or not assigned
                    lag[(name, number)] = part.consumer_lag
        self.lag = lag
        self.brokers_up = sum(
            1
            for b in doc.brokers.values()
            if b.state == "UP" and b.source in ("learned", "configured")
        )
