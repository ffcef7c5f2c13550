"""The worker on the shape of a production cluster: three Apache Kafka nodes (KRaft, each
broker and controller, a 3-voter quorum), topics with replication factor 3 and
`min.insync.replicas` 2. Prompts flow at a steady rate while the node leading every partition
being written (prompts and completions) is SIGKILLed, its followers frozen (SIGSTOP) for the
3 s before, so they lag; later, while it is still down, the node that took over is killed too
(one node left: no quorum, no writes), then both come back.

The worker process (`llm-worker run`) is never restarted. Every prompt the test's producer got
an acknowledgement for must get a completion, none of them an error, the worker must be the
same running process and ready again at the end, and the dead-letter topic it created itself
must have the cluster's three replicas.

What would fail it: a producer that takes a leader's word alone (`acks=1`: the completions a
killed leader acknowledged while its followers lagged are gone when a follower takes over, and
their prompts' offsets were committed); unclean leader election; a worker that exits or
wedges when its brokers go away; topics the worker creates with one replica (the dead-letter
topic then dies with its node). Apache Kafka only: on Tansu (one memory-only node) the test skips.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from llm_worker.devkit.kafka_broker import KafkaBrokerError
from llm_worker.devkit.kafka_cluster import KafkaCluster
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import FakeProcess, Progress, WorkerProcess, verdict
from tests.integration.conftest import ON_TANSU

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        ON_TANSU,
        reason="a three-node Apache Kafka cluster: runs in the Apache Kafka pass "
        "(make test-kafka, LLM_WORKER_TEST_BROKER=kafka)",
    ),
    pytest.mark.timeout(420),
    # three JVMs and a worker: beside three other xdist processes it once made no progress
    pytest.mark.serial,
]

PARTITIONS = 3
RATE = 40.0
"""Prompts per second from the test's producer, for the whole run."""
BACKLOG = 1500
"""Prompts sent at once at the start: the worker is still busy with them when the followers
freeze, so the leader is asked to acknowledge hundreds of completions alone."""
FROZEN_S = 3.0
"""How long the followers lag (frozen) before the leader is killed."""
STEP = 200
"""Completions that must arrive between two faults: the stream moved on."""


@pytest.fixture
def cluster() -> Iterator[KafkaCluster]:
    try:
        nodes = KafkaCluster(3).start()
    except KafkaBrokerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Apache Kafka is not available here: {exc}")
    try:
        yield nodes
    finally:
        nodes.close()


class PromptStream:
    """`burst` prompts at once, then a steady `rate` per second, from a thread, through an
    idempotent `acks=all` producer that waits out a cluster outage (five minutes per record);
    `close()` flushes and returns the ids the cluster acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: float, burst: int) -> None:
        self._topic, self._rate, self._burst = topic, rate, burst
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 300_000,
                "log_level": 0,
            }
        )
        self.acked: set[str] = set()
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _report(self, err: KafkaError | None, msg: Message) -> None:
        key = (msg.key() or b"").decode()
        if err is None:
            self.acked.add(key)
        else:
            self.failed.append(f"{key}: {err.str()}")

    def _run(self) -> None:
        i, start = 0, time.monotonic()
        while not self._stop.is_set():
            pid = f"k-{i}"
            body = f'{{"id": "{pid}", "model": "m1", "prompt": "q{i}"}}'
            self._producer.produce(
                self._topic, body.encode(), pid.encode(), on_delivery=self._report
            )
            self._producer.poll(0)
            i += 1
            due = start + max(0, i - self._burst) / self._rate
            self._stop.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def close(self) -> set[str]:
        self.stop()
        left = self._producer.flush(300)
        assert left == 0, f"{left} prompts never acknowledged by the cluster"
        assert not self.failed, f"prompts refused by the cluster: {self.failed[:5]}"
        return self.acked


def _topics(cluster: KafkaCluster, env: dict[str, str], leader: int) -> None:
    """Prompts and completions, every partition led by `leader` (then the other two)."""
    others = [n for n in cluster.nodes if n != leader]
    assignment = [[leader, *(others if p % 2 else others[::-1])] for p in range(PARTITIONS)]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    new = [
        NewTopic(
            env[name],
            PARTITIONS,
            replica_assignment=assignment,
            config={"min.insync.replicas": "2"},
        )
        for name in ("LLM_WORKER_PROMPTS_TOPIC", "LLM_WORKER_COMPLETIONS_TOPIC")
    ]
    for fut in admin.create_topics(new).values():
        fut.result()
    # created is not yet known everywhere: wait until the metadata names every partition's leader
    deadline = time.monotonic() + 30
    while len(leaders := _written_leaders(cluster, env)) < 2 * PARTITIONS or -1 in leaders:
        if time.monotonic() > deadline:
            raise AssertionError(f"the new topics have no leader in the metadata: {leaders}")
        time.sleep(0.2)


def _written_leaders(cluster: KafkaCluster, env: dict[str, str]) -> list[int]:
    """The node leading each partition being written (prompts, then completions)."""
    out: list[int] = []
    for name in ("LLM_WORKER_PROMPTS_TOPIC", "LLM_WORKER_COMPLETIONS_TOPIC"):
        out += cluster.leaders(env[name]).values()
    return out


def _wait_leaders_moved(cluster: KafkaCluster, env: dict[str, str], dead: int) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        leaders = _written_leaders(cluster, env)
        if dead not in leaders and -1 not in leaders:
            return leaders
        time.sleep(0.5)
    raise AssertionError(f"node {dead} still leads after 60 s: {leaders}")


def _moved_on(
    worker: WorkerProcess, progress: Progress, since: int, what: str, timeout: float = 120
) -> int:
    """Wait for `STEP` more answered prompts; the worker must still be the process started."""
    deadline = time.monotonic() + timeout
    got = since
    while got < since + STEP and time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"the worker exited {what}:\n{worker.text()[-3000:]}"
        got = progress.wait(since + STEP, 1.0)
    assert got >= since + STEP, f"no progress {what}: {got - since} answers in {timeout} s"
    return got


def test_leader_and_second_broker_killed_mid_stream_lose_nothing(
    cluster: KafkaCluster,
    worker_env: dict[str, str],
    pg_dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    bs = cluster.bootstrap
    env = {
        **worker_env,
        "KAFKA_BOOTSTRAP_SERVERS": bs,
        "LLM_WORKER_TOPIC_PARTITIONS": "1",  # the dead-letter topic, which the worker creates
        "LLM_WORKER_MAX_IN_FLIGHT": "16",  # the backlog lasts past the first fault
        # librdkafka's default: the group outlives a leader's failover, so the offsets of what
        # was acknowledged before it are committed by the same member
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "45000",
        "LLM_WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "300000",
    }
    in_topic, out_topic = env["LLM_WORKER_PROMPTS_TOPIC"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    fake = FakeProcess()
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
    )
    first = 1
    _topics(cluster, env, leader=first)
    assert set(_written_leaders(cluster, env)) == {first}
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name}@{time.monotonic() - started:.0f}s")

    stream = PromptStream(bs, in_topic, RATE, BACKLOG)
    worker = WorkerProcess(env, tmp_path, "worker")
    progress = Progress(bs, out_topic)
    try:
        seen = _moved_on(worker, progress, 0, "before any fault")
        phase("flowing")
        # The leader of every partition being written dies while its followers lag: frozen
        # (a long GC pause) for a few seconds, then the leader is killed and they go on.
        # What it acknowledged alone in those seconds is gone with it; acks=all waits for
        # `min.insync.replicas` copies, so nothing it acknowledged can be lost.
        followers = [n for n in cluster.nodes if n != first]
        for node in followers:
            cluster.pause(node)
        time.sleep(FROZEN_S)
        cluster.kill(first)
        for node in followers:
            cluster.resume(node)
        phase(f"killed-{first}")
        leaders = _wait_leaders_moved(cluster, env, first)
        phase("new-leaders")
        seen = _moved_on(worker, progress, seen, f"after node {first} was killed")
        phase("flowing")

        second = max(set(leaders), key=leaders.count)  # the node that took over most
        cluster.kill(second)  # one node of three left: no quorum, no in-sync pair
        phase(f"killed-{second}")
        time.sleep(5)
        cluster.start_node(first)  # a quorum again; its replicas catch up
        phase(f"started-{first}")
        seen = _moved_on(worker, progress, len(progress.ids), f"after node {first} came back")
        phase("flowing")
        cluster.start_node(second)
        phase(f"started-{second}")
        _moved_on(worker, progress, seen, f"after node {second} came back")
        phase("flowing")
        ids = stream.close()
        docs = kh.consume_until_ids(bs, out_topic, ids, timeout=180)
        phase("all-answered")
        worker.wait_ready(60)  # still the same process (it raises if it exited), ready again
        dlq = AdminClient({"bootstrap.servers": bs}).list_topics(env["LLM_WORKER_DLQ_TOPIC"], 10)
        dlq_replicas = [
            len(p.replicas) for p in dlq.topics[env["LLM_WORKER_DLQ_TOPIC"]].partitions.values()
        ]
    finally:
        progress.close()
        stream.stop()
        code = worker.stop()
        fake.close()
    v = verdict("cluster-leader-kills", ids, docs, started, capsys)
    with capsys.disabled():
        print(f"[cluster] {' '.join(phases)}", flush=True)
    assert code == 0, f"the worker's SIGTERM exit was {code}; see {worker.log}"
    assert not v.lost, f"{len(v.lost)} of {len(ids)} prompts lost; see {worker.log}"
    assert not v.errors, f"error completions {dict(v.errors)}; see {worker.log}"
    assert len(ids) > BACKLOG + 2 * STEP
    assert dlq_replicas == [3], f"the worker's dead-letter topic has {dlq_replicas} replicas"
