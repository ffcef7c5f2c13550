"""librdkafka configuration for the worker's clients, and delivery errors.

`LLM_WORKER_KAFKA_<PROPERTY>` passthrough properties reach every client; those that belong
only to the consumer or only to the producer are dropped from the other (librdkafka warns about
properties a client type does not use).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from ..config import ConfigError, Settings
from ..records import InputRecord
from .transport import Batch, DeliveryError

__all__ = [
    "DeliveryError",
    "client_config",
    "consume_ready",
    "consumer_config",
    "delivery_error",
    "incremental_rebalancing",
    "message_max_bytes",
    "producer_config",
    "settle_all",
    "to_batch",
    "transaction_timeout_ms",
    "transactional_id",
]

log = logging.getLogger("llm_worker.kafka")
rdlog = logging.getLogger("llm_worker.librdkafka")
worker_log = logging.getLogger("llm_worker")

ErrorHook = Callable[[KafkaError], None]


_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def delivery_error(err: KafkaError) -> DeliveryError:
    """librdkafka's delivery failure in the seam's terms."""
    code = err.code()
    return DeliveryError(
        f"delivery failed: {err.str()} ({err.name()})",
        code=code,
        retriable=bool(err.retriable())
        or code
        in (
            KafkaError._MSG_TIMED_OUT,
            KafkaError._TRANSPORT,
            KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError.REQUEST_TIMED_OUT,
        ),
        too_large=code == KafkaError.MSG_SIZE_TOO_LARGE,
        purged=code in _PURGED,
    )


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
    "transaction",  # transactional.id, transaction.timeout.ms
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


def incremental_rebalancing(conf: dict[str, Any]) -> bool:
    """Whether the consumer `conf` makes rebalances incremental (cooperative): the broker
    assigns (KIP-848), or every client-side strategy is cooperative. The rebalance callbacks
    apply the assignment themselves by this, instead of asking librdkafka: its
    `rd_kafka_rebalance_protocol()`, called from a callback while the consumer closes, can
    wait for ever (librdkafka #4041), and confluent-kafka calls it holding the GIL, which
    froze the whole process once in a clean-clone CI run."""
    if conf.get("group.protocol") == "consumer":
        return True
    strategies = [s.strip() for s in str(conf.get("partition.assignment.strategy", "")).split(",")]
    return bool(strategies) and all(s == "cooperative-sticky" for s in strategies)


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
        conf["transaction.timeout.ms"] = transaction_timeout_ms(settings)
    return conf


def message_max_bytes(settings: Settings) -> int:
    """The producer's `message.max.bytes` (librdkafka refuses larger records at once)."""
    raw = settings.kafka_extra.get("message.max.bytes", "")
    return int(raw) if raw.isdigit() else 1_000_000


TRANSACTION_TIMEOUT_MS = 15_000
"""The default `transaction.timeout.ms` (librdkafka's own is 60 s): how long the broker keeps
a crashed producer's open transaction, during which `read_committed` readers of its partitions
see nothing newer. Raised to three commit intervals, or to the client's own timeouts, if those
are longer; `LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS` sets it outright."""


def transaction_timeout_ms(settings: Settings) -> int:
    """`transaction.timeout.ms` for the transactional producer. A transaction lives about one
    commit interval plus the wait for its records' acknowledgements, which librdkafka bounds by
    this timeout (it caps `message.timeout.ms` and `socket.timeout.ms` at it unless they are
    set, and refuses them set above it). ConfigError if a set value cannot hold a commit."""
    extra = settings.kafka_extra
    raw = extra.get("transaction.timeout.ms", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) <= settings.commit_interval_ms:
            raise ConfigError(
                f"LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS={raw!r} must be a whole number of "
                f"milliseconds above LLM_WORKER_COMMIT_INTERVAL_MS ({settings.commit_interval_ms}):"
                " a transaction stays open for a commit interval"
            )
        return int(raw)
    floor = [TRANSACTION_TIMEOUT_MS, 3 * settings.commit_interval_ms]
    for prop, margin in (
        ("message.timeout.ms", 0),
        ("delivery.timeout.ms", 0),
        ("socket.timeout.ms", 100),
    ):
        value = extra.get(prop, "").strip()
        if value.isdigit():  # librdkafka wants the socket timeout 100 ms below
            floor.append(int(value) + margin)
    return max(floor)


_SLOTS: dict[tuple[str, str], tuple[str, int | None]] = {}
"""This process's transactional.id per group and host, with the lock that holds its slot."""


def transactional_id(settings: Settings, lock_dir: str | None = None) -> str:
    """`LLM_WORKER_TRANSACTIONAL_ID`, else `<group>-<host>-<slot>`: the slot is the lowest
    number that no other live process of this group on this host holds (an exclusive lock on
    a file in the temporary directory, released by the kernel when the process dies, however
    it dies). So a worker restarted on the same host (a container restarted in its pod: the
    host name is the pod's) takes the id of its previous life and fences the transaction that
    life left open, while processes side by side (`--workers N`, tests) get distinct ids. In a
    StatefulSet the pod name, and so the id, survives the pod's replacement too; in a
    Deployment a new pod has a new name and the broker's transaction timeout ends the old
    pod's transaction. If no lock can be taken: `<group>-<host>-p<pid>`, with a warning."""
    if settings.transactional_id:
        return settings.transactional_id
    base = f"{settings.group_id}-{socket.gethostname()}"
    where = lock_dir or tempfile.gettempdir()
    found = _SLOTS.get((base, where))
    if found is None:
        found = _SLOTS[base, where] = _take_slot(base, where)
    return found[0]


def _take_slot(base: str, lock_dir: str) -> tuple[str, int | None]:
    digest = hashlib.sha256(base.encode()).hexdigest()[:16]
    try:
        for slot in range(1024):
            path = os.path.join(lock_dir, f"llm-worker-txn-{digest}-{slot}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return f"{base}-{slot}", fd  # the fd stays open: the lock lives as long as we do
    except OSError as exc:
        problem = str(exc)
    else:
        problem = "1024 slots taken"
    log.warning(
        "no transactional.id slot in %s (%s): using one with the process id, which a restarted "
        "worker cannot fence; set LLM_WORKER_TRANSACTIONAL_ID to a name stable per replica",
        lock_dir,
        problem,
    )
    return f"{base}-p{os.getpid()}", None


def consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    msgs = consumer.consume(max_messages, 0)
    if msgs or max_messages <= 0:
        return msgs
    msgs = consumer.consume(1, timeout)  # returns as soon as one record is there
    if msgs and max_messages > 1:
        msgs += consumer.consume(max_messages - 1, 0)
    return msgs


def to_batch(msgs: list[Message]) -> Batch:
    """librdkafka's messages as input records; an error event is logged and counted (the end of
    a partition is no error), never handed on."""
    batch = Batch()
    records = batch.records
    for msg in msgs:
        err = msg.error()
        if err is not None:
            batch.errors += 1
            if err.code() != KafkaError._PARTITION_EOF:
                worker_log.warning("consume error: %s", err.str())
            continue
        ts_type, ts = msg.timestamp()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None  # a record
        records.append(
            InputRecord(
                topic=topic,
                partition=partition,
                offset=offset,
                value=msg.value(),
                key=msg.key(),
                headers=msg.headers(),  # type: ignore[arg-type]
                timestamp_ms=ts if ts_type else None,
            )
        )
    return batch


def settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in reports:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(delivery_error(err))
