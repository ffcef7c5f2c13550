"""Cluster-level Kafka calls: wait for the broker at start, create missing topics, count the
consumer group's members. Like `kafka`, the only other module here that touches librdkafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from llm_worker.adapters.backoff import Backoff

from ..config import Settings
from .kafka import client_config

__all__ = [
    "AdminClient",
    "KafkaUnavailable",
    "ensure_topics",
    "group_members",
    "partition_count",
    "require_topics",
    "wait_for_broker",
]

log = logging.getLogger("llm_worker.kafka")


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached within the start-up deadline, or a topic the worker
    needs is missing; the message names the setting to change."""


def _reason(last: list[KafkaError], exc: KafkaException) -> str:
    if last:
        return str(last[0].str())
    return str(exc.args[0].str()) if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)


def wait_for_broker(settings: Settings, timeout_s: float) -> AdminClient:
    """Block until the cluster answers a metadata request, with backoff; raise KafkaUnavailable.

    The error names librdkafka's last connection error when there was one: a metadata request
    only says "Broker transport failure", the connection's own error says why (a certificate
    no CA in `ssl.ca.location` signed, a SASL password the broker refused, a refused port)."""
    last: list[KafkaError] = []
    waiting = [True]

    def remember(err: KafkaError) -> None:
        last[:] = [err]  # only the newest: this admin client lives as long as the worker

    conf = client_config(settings, on_error=remember)
    logged = conf["error_cb"]
    quiet = _QuietWhileWaiting(conf["logger"], waiting)

    def on_error(err: KafkaError) -> None:
        # while waiting, the progress line below says the newest error every few seconds:
        # librdkafka's own line per refused connection (hundreds a minute) would bury it
        if waiting[0]:
            remember(err)
        else:
            logged(err)

    conf["error_cb"], conf["logger"] = on_error, quiet
    admin = AdminClient(conf)
    try:
        return _wait(admin, settings, timeout_s, last)
    finally:
        waiting[0] = False


class _QuietWhileWaiting:
    """librdkafka's logger for the start-up admin client: its connection failures (facility
    `FAIL`) are dropped while start-up waits for the broker (the progress lines say why); every
    other line, and every line after, goes to `logger` as usual."""

    def __init__(self, logger: logging.Logger, waiting: list[bool]) -> None:
        self._logger = logger
        self._waiting = waiting

    def log(self, level: int, msg: str, *args: object) -> None:
        if not (self._waiting[0] and args and args[0] == "FAIL"):
            self._logger.log(level, msg, *args)


def _wait(
    admin: AdminClient, settings: Settings, timeout_s: float, last: list[KafkaError]
) -> AdminClient:
    deadline = time.monotonic() + timeout_s
    delays = Backoff(0.5, 5.0).delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            admin.list_topics(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            return admin
        except KafkaException as exc:
            admin.poll(0)  # serve the client's error events (they reach `remember` here)
            left = deadline - time.monotonic()
            delay = next(delays)
            where = f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}"
            if left <= 0:
                raise KafkaUnavailable(
                    f"gave up after {timeout_s:.0f} s: cannot reach Kafka at {where} "
                    f"({_reason(last, exc)}): set KAFKA_BOOTSTRAP_SERVERS to a broker this host "
                    "can reach (or LLM_WORKER_BROKER_WAIT_S to wait longer)"
                ) from None
            log.warning(
                "cannot reach Kafka at %s (%s); retrying for %.0f s more "
                "(LLM_WORKER_BROKER_WAIT_S=%g), attempt %d",
                where,
                _reason(last, exc),
                left,
                timeout_s,
                attempt,
            )
            time.sleep(min(delay, left))


def ensure_topics(admin: AdminClient, topics: Sequence[str], partitions: int) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Their replication
    factor and `min.insync.replicas` are the cluster's defaults (`default.replication.factor`):
    on a three-broker cluster the worker's own topics survive a broker as the others do."""
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(t, partitions) for t in missing])
    created = []
    for topic, fut in futures.items():
        try:
            fut.result()
            created.append(topic)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    return created


def partition_count(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> int:
    """How many partitions `topic` has (0: it does not exist)."""
    meta = admin.list_topics(topic, timeout_s).topics.get(topic)
    return len(meta.partitions) if meta is not None else 0


def require_topics(
    admin: AdminClient, read: dict[str, str], written: dict[str, str], timeout_s: float = 10.0
) -> None:
    """At start when the worker does not create its topics: KafkaUnavailable naming a topic it
    reads ({setting: topic}) that does not exist, and the settings that fix it; a warning for
    a topic it writes, which a broker with `auto.create.topics.enable` creates on first write."""
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    for setting, topic in read.items():
        if topic not in existing:
            raise KafkaUnavailable(
                f"topic {topic!r} ({setting}) does not exist and LLM_WORKER_CREATE_TOPICS=false: "
                f"create it, set {setting} to a topic that exists, or set "
                "LLM_WORKER_CREATE_TOPICS=true"
            )
    for setting, topic in written.items():
        if topic not in existing:
            log.warning(
                "topic %r (%s) does not exist and LLM_WORKER_CREATE_TOPICS=false: writing to it "
                "fails unless the broker creates topics on first write "
                "(auto.create.topics.enable)",
                topic,
                setting,
            )


def group_members(admin: AdminClient, group_id: str, classic: bool, timeout_s: float = 5.0) -> int:
    """The consumer group's member count as the broker reports it (0 if it reports none).

    A classic group is counted with ListGroups + DescribeGroups (`list_groups`), not
    `describe_consumer_groups`: librdkafka 2.16's coordinator request behind the latter aborts
    the whole process (`rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0'`)
    when the broker restarts while one is in flight; `tools/repro_eonce_abort.py` shows it within
    one or two restarts, and the other call survives them. DescribeGroups shows no members for
    a KIP-848 group (`classic=False`), so that one still needs `describe_consumer_groups`; the
    caller skips it while the statistics say no broker is up.
    """
    if classic:
        groups = admin.list_groups(group=group_id, timeout=timeout_s)
        return sum(len(g.members) for g in groups if g.id == group_id)
    futures = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)
    return len(futures[group_id].result(timeout=timeout_s).members)
