"""librdkafka configuration for the worker's clients, and delivery errors.

`LLM_WORKER_KAFKA_<PROPERTY>` passthrough properties reach every client; those that belong
only to the consumer or only to the producer are dropped from the other (librdkafka warns about
properties a client type does not use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from ..config import Settings

__all__ = [
    "DeliveryError",
    "client_config",
    "consume_ready",
    "consumer_config",
    "message_max_bytes",
    "producer_config",
    "settle_all",
    "transactional_id",
]

log = logging.getLogger("llm_worker.kafka")
rdlog = logging.getLogger("llm_worker.librdkafka")

ErrorHook = Callable[[KafkaError], None]


class DeliveryError(RuntimeError):
    def __init__(self, err: KafkaError) -> None:
        super().__init__(f"delivery failed: {err.str()} ({err.name()})")
        self.code = err.code()
        self.retriable = bool(err.retriable()) or self.code in (
            KafkaError._MSG_TIMED_OUT,
            KafkaError._TRANSPORT,
            KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError.REQUEST_TIMED_OUT,
        )
        self.too_large = self.code == KafkaError.MSG_SIZE_TOO_LARGE


def _log_error(err: KafkaError) -> None:
    if err.fatal():
        log.error("kafka fatal error: %s", err.str())
    else:
        log.warning("kafka error: %s", err.str())


_CONSUMER_ONLY = (
    "group.",
    "session.",
    "heartbeat.",
    "max.poll.",
    "partition.assignment",
    "auto.offset",
    "enable.auto",
    "fetch.",
    "isolation.level",
    "queued.",
)
_PRODUCER_ONLY = (
    "linger.",
    "acks",
    "enable.idempotence",
    "compression.",
    "batch.",
    "queue.buffering",
    "message.timeout",
    "transactional.",
    "delivery.timeout",
)


STATISTICS_INTERVAL_MS = 5000
"""How often a client with `on_stats` reports its statistics (consumer lag, broker states)
unless `LLM_WORKER_KAFKA_STATISTICS_INTERVAL_MS` says otherwise (0 turns them off)."""


def client_config(
    settings: Settings,
    role: str = "admin",
    on_error: ErrorHook | None = None,
    on_stats: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Base librdkafka config for a client; passthrough properties of the other role dropped.
    Client errors are logged, then handed to `on_error` (say, to act on a fatal one). Its
    logs go to the `llm_worker.librdkafka` logger; its statistics, if asked, to `on_stats`."""
    drop: tuple[str, ...] = ()
    if role == "producer":
        drop = _CONSUMER_ONLY
    elif role == "consumer":
        drop = _PRODUCER_ONLY
    elif role == "admin":
        drop = _CONSUMER_ONLY + _PRODUCER_ONLY
    conf = {k: v for k, v in settings.kafka_common().items() if not k.startswith(drop)}
    if on_error is None:
        conf["error_cb"] = _log_error
    else:

        def error_cb(err: KafkaError) -> None:
            _log_error(err)
            on_error(err)

        conf["error_cb"] = error_cb
    conf["logger"] = rdlog
    if on_stats is not None:
        conf.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        conf["stats_cb"] = on_stats
    return conf


def consumer_config(
    settings: Settings,
    on_error: ErrorHook | None = None,
    on_stats: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The worker's consumer: manual offset stores and commits, `range` assignment unless the
    broker assigns (KIP-848), quick fetches."""
    conf: dict[str, Any] = {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "enable.partition.eof": False,
        # Answer fetches quickly: Tansu holds every fetch for the full wait even when data
        # is there; on Apache Kafka a resumed partition waits for the fetch in flight.
        # Either way 500 ms (the default) halved throughput (docs/BENCHMARKS.md).
        "fetch.wait.max.ms": 25,
    }
    conf.update(client_config(settings, "consumer", on_error, on_stats))
    if conf.get("group.protocol") == "consumer":
        # KIP-848: the broker assigns (`group.remote.assignor`); librdkafka refuses a
        # client-side strategy with this protocol.
        conf.pop("partition.assignment.strategy", None)
    return conf


def producer_config(
    settings: Settings,
    on_error: ErrorHook | None = None,
    on_stats: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The worker's producer: idempotent; transactional in exactly-once mode."""
    conf: dict[str, Any] = {"enable.idempotence": True, "linger.ms": 5}
    conf.update(client_config(settings, "producer", on_error, on_stats))
    if settings.processing_guarantee == "exactly_once":
        conf["transactional.id"] = transactional_id(settings)
    return conf


def message_max_bytes(settings: Settings) -> int:
    """The producer's `message.max.bytes` (librdkafka refuses larger records at once)."""
    raw = settings.kafka_extra.get("message.max.bytes", "")
    return int(raw) if raw.isdigit() else 1_000_000


def transactional_id(settings: Settings) -> str:
    """`LLM_WORKER_TRANSACTIONAL_ID`, else `<group>-<host>-<pid>`: stable for a pod (its name
    and PID 1), so a restarted replica fences the transactions its previous life left open."""
    if settings.transactional_id:
        return settings.transactional_id
    return f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}"


def consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    msgs = consumer.consume(max_messages, 0)
    if msgs or max_messages <= 0:
        return msgs
    msgs = consumer.consume(1, timeout)  # returns as soon as one record is there
    if msgs and max_messages > 1:
        msgs += consumer.consume(max_messages - 1, 0)
    return msgs


def settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in reports:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(DeliveryError(err))
