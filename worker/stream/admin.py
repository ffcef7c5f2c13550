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
    "wait_for_broker",
]

log = logging.getLogger("llm_worker.kafka")


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached within the start-up deadline."""


def wait_for_broker(settings: Settings, timeout_s: float) -> AdminClient:
    """Block until the cluster answers a metadata request, with backoff; raise KafkaUnavailable.

    The error names librdkafka's last connection error when there was one: a metadata request
    only says "Broker transport failure", the connection's own error says why (a certificate
    no CA in `ssl.ca.location` signed, a SASL password the broker refused, a refused port)."""
    last: list[KafkaError] = []

    def remember(err: KafkaError) -> None:
        last[:] = [err]  # only the newest: this admin client lives as long as the worker

    admin = AdminClient(client_config(settings, on_error=remember))
    deadline = time.monotonic() + timeout_s
    delays = Backoff(0.5, 5.0).delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return admin
        except KafkaException as exc:
            admin.poll(0)  # serve the client's error events (they reach `remember` here)
            left = deadline - time.monotonic()
            delay = next(delays)
            if left <= 0:
                reason = last[0].str() if last else exc.args[0].str() if exc.args else exc
                raise KafkaUnavailable(
                    "cannot reach Kafka at "
                    f"KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers!r}"
                    f" after {timeout_s:.0f} s ({reason})"
                ) from None
            log.warning(
                "waiting for Kafka at %s (attempt %d, retrying in %.1f s)",
                settings.kafka_bootstrap_servers,
                attempt,
                delay,
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
