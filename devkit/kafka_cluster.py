"""A real Apache Kafka cluster on this machine: N KRaft nodes, each broker and controller, in
child processes (`kafka_broker.KafkaBroker` each), the shape of a small production cluster.

The nodes share one cluster id and a static controller quorum of all of them
(`controller.quorum.voters`), so a majority must be up for any metadata change: with three, one
node down is routine, two down stalls the cluster until one comes back. Every internal topic
and every topic created without a replication factor gets `replication` copies (3 by default)
and `min.insync.replicas` 2: an `acks=all` write is acknowledged only once two nodes hold it, so
losing any one node loses nothing acknowledged. Brokers send heartbeats every second and are
fenced after 6 s without one, so a killed node's partitions get new leaders in seconds.

`start()` launches every node, then waits until each is registered; `kill(node)` is a crash
(SIGKILL), `stop(node)` a clean shutdown, `start_node(node)` brings one back on the same ports
and data. Each JVM gets a 384 MB heap: three fit beside the tests on a 2-core machine.
"""

from __future__ import annotations

import atexit
import contextlib
import logging

from confluent_kafka.admin import AdminClient

from llm_worker.devkit.kafka_broker import KAFKA_VERSION, KafkaBroker, free_port, new_cluster_id

__all__ = ["CLUSTER_SETTINGS", "KafkaCluster"]

log = logging.getLogger("llm_worker.devstack")

CLUSTER_HEAP_MB = 384
"""Each node's maximum heap."""


def cluster_settings(replication: int, min_insync: int) -> dict[str, str]:
    """Replication of every topic (internal ones too) and quick failure detection."""
    rf, isr = str(replication), str(min_insync)
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "unclean.leader.election.enable": "false",  # never elect a replica that lost records
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "6000",
        "replica.lag.time.max.ms": "10000",
    }


CLUSTER_SETTINGS = cluster_settings(3, 2)
"""The settings of a three-node cluster (see the module docstring)."""


class KafkaCluster:
    """`size` Apache Kafka nodes (node ids 1..size), every one broker and controller."""

    kind = "kafka"

    def __init__(
        self,
        size: int = 3,
        *,
        min_insync: int = 2,
        version: str = KAFKA_VERSION,
        kafka_home: str | None = None,
        heap_mb: int = CLUSTER_HEAP_MB,
        settings: dict[str, str] | None = None,
    ) -> None:
        if size < 1 or not 1 <= min_insync <= size:
            raise ValueError(f"a cluster of {size} nodes with min.insync.replicas {min_insync}")
        cid = new_cluster_id()
        controllers = {i: free_port() for i in range(1, size + 1)}
        voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in controllers.items())
        merged = {**cluster_settings(size, min_insync), **(settings or {})}
        self.nodes: dict[int, KafkaBroker] = {
            i: KafkaBroker(
                version=version,
                kafka_home=kafka_home,
                settings=merged,
                node_id=i,
                cluster_id=cid,
                controller_port=port,
                voters=voters,
                heap_mb=heap_mb,
            )
            for i, port in controllers.items()
        }
        self.bootstrap = ",".join(node.bootstrap for node in self.nodes.values())

    def start(self, timeout: float = 180.0) -> KafkaCluster:
        """Launch every node, then wait until each one is registered (they elect their
        controller among themselves, so none comes up alone)."""
        try:
            for node in self.nodes.values():
                node.start(wait=False)
            # after the nodes' own: at exit this runs first and kills them all (see close)
            atexit.register(self.close)
            for node in self.nodes.values():
                node.wait_ready(timeout)
        except BaseException:
            self.close()
            raise
        log.info("Apache Kafka cluster of %d nodes on %s", len(self.nodes), self.bootstrap)
        return self

    def kill(self, node_id: int) -> None:
        """A crash of one node: SIGKILL, its data stays for `start_node`."""
        self.nodes[node_id].kill()

    def stop(self, node_id: int) -> None:
        """A clean shutdown of one node; its data stays."""
        self.nodes[node_id].stop()

    def pause(self, node_id: int) -> None:
        """Freeze one node (SIGSTOP): alive to its peers' sockets, answering nothing."""
        self.nodes[node_id].pause()

    def resume(self, node_id: int) -> None:
        self.nodes[node_id].resume()

    def start_node(self, node_id: int, timeout: float = 180.0) -> None:
        """Bring one node back on its ports and data; returns once it is registered again."""
        self.nodes[node_id].start(timeout)

    def leaders(self, topic: str) -> dict[int, int]:
        """partition -> the node leading it now (-1: none), as the cluster's metadata says."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        return {p: part.leader for p, part in meta.partitions.items()}

    def close(self) -> None:
        """End every node and delete its directory (idempotent). The nodes are killed, not
        stopped: the last one up could not finish a clean shutdown without its quorum."""
        for node in self.nodes.values():
            node.kill()
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.close()
        atexit.unregister(self.close)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
