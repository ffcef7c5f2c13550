"""What an Apache Kafka node's files say (`kafka_broker.KafkaBroker` writes and runs them):
its `server.properties`, its log4j2 configuration and the storage tool's format arguments.

Every node is broker and controller (KRaft) on 127.0.0.1. Alone, it is the whole controller
quorum (`controller.quorum.bootstrap.servers`, storage formatted `--standalone`); in a cluster
the quorum is static, `voters` = `1@host:port,2@host:port,...` (`controller.quorum.voters`).
Brokers talk to each other over PLAINTEXT; with `SaslSsl` the clients get a SASL_SSL listener
of their own (SCRAM-SHA-512 users written into storage at format time, the broker's key and
certificate in a PKCS#12 keystore) and the PLAINTEXT port stays for the brokers.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LOG4J2",
    "SERVER_SETTINGS",
    "SaslSsl",
    "format_arguments",
    "new_cluster_id",
    "server_properties",
]

HOST = "127.0.0.1"

SERVER_SETTINGS: dict[str, str] = {
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "num.partitions": "1",
    "auto.create.topics.enable": "false",  # the worker and the tests create their topics
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",  # created on the first group join: keep it quick
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    # KIP-848 (`group.protocol=consumer`) groups: the broker owns the timeouts; the defaults
    # (45 s session, 5 s heartbeat) make a test wait that long for a departed member.
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
    "log.segment.bytes": str(64 * 1024 * 1024),
}
"""Broker settings for one node on a shared 2-core machine: two network and two I/O threads,
replication factor 1 for every internal topic, no initial rebalance delay, and the KIP-848 group
timeouts lowered so consumer-protocol groups settle in seconds."""

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.groups.name = org.apache.kafka.coordinator.group
logger.groups.level = INFO
"""


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes one (URL-safe base64 of 16 bytes), never starting
    with `-`: the storage tool would read such an id as an option (1 start in 64), as Kafka's
    own `Uuid.randomUuid()` avoids too."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass(frozen=True)
class SaslSsl:
    """The client listener as SASL_SSL with SCRAM-SHA-512.

    `keystore` is a PKCS#12 file with the broker's private key and certificate chain (its
    password `keystore_password`); `users` (name -> password) are written into the storage as
    SCRAM-SHA-512 credentials when it is formatted, so they exist before the first client.
    """

    keystore: Path
    keystore_password: str = field(repr=False)
    users: Mapping[str, str] = field(repr=False)


def server_properties(
    *,
    node_id: int,
    port: int,
    internal_port: int,
    controller_port: int,
    voters: str | None,
    log_dirs: Path,
    sasl_ssl: SaslSsl | None,
) -> dict[str, str]:
    """Listeners, quorum and storage of one node (the sizing, `SERVER_SETTINGS`, goes on top).
    `port` is the client listener; without `sasl_ssl` it is `internal_port` too."""
    plain, controller = (
        f"PLAINTEXT://{HOST}:{internal_port}",
        f"CONTROLLER://{HOST}:{controller_port}",
    )
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "listeners": f"{plain},{controller}",
        "advertised.listeners": plain,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        **(
            {"controller.quorum.voters": voters}
            if voters
            else {"controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}"}
        ),
        "log.dirs": str(log_dirs),
    }
    if sasl_ssl is not None:
        client = f"SASL_SSL://{HOST}:{port}"
        props.update(
            {
                "listeners": f"{client},{plain},{controller}",
                "advertised.listeners": f"{client},{plain}",
                "listener.security.protocol.map": (
                    "SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
                ),
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": str(sasl_ssl.keystore),
                "ssl.keystore.password": sasl_ssl.keystore_password,
                "ssl.client.auth": "none",
            }
        )
    return props


def format_arguments(voters: str | None, sasl_ssl: SaslSsl | None) -> list[str]:
    """`kafka-storage format` arguments beyond the cluster id and the configuration."""
    args = [] if voters else ["--standalone"]  # alone, this node is the whole quorum
    for name, password in (sasl_ssl.users if sasl_ssl else {}).items():
        args += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    return args
