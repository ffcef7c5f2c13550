"""Start-up failures are one line naming the variable to change and what was tried, exit 2, no
traceback, with progress lines while they retry (issue 24). Real sockets: a port held open, a
closed port for PostgreSQL and Kafka. Through the real stack with a wrong password:
tests/integration/test_startup_errors_stack.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from llm_worker.registry import cache as registry_cache
from llm_worker.registry.cache import RegistryCache
from llm_worker.registry.errors import RegistryUnavailable
from llm_worker.worker.config import load_settings
from llm_worker.worker.ops.http import HealthServer, PortUnavailable
from llm_worker.worker.ops.logs import TextFormatter
from llm_worker.worker.stream.admin import KafkaUnavailable, require_topics, wait_for_broker

PASSWORD = "s3cr3t-pw"


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`llm-worker run` as an operator starts it, with only `env` (and PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _messages(stderr: str) -> list[str]:
    """The `msg` of each JSON log line (every line of stderr must be one)."""
    return [json.loads(line)["msg"] for line in stderr.splitlines()]


# -- the HTTP port ---------------------------------------------------------------------------


async def test_a_port_in_use_names_the_setting(held_port: int) -> None:
    server = HealthServer(CollectorRegistry(), lambda: (True, {}), host="127.0.0.1", port=held_port)
    with pytest.raises(PortUnavailable) as info:
        await server.start()
    assert str(info.value) == (
        f"LLM_WORKER_HTTP_PORT={held_port} is in use (address already in use): set "
        "LLM_WORKER_HTTP_PORT to a free port"
    )
    await server.close()


async def test_a_host_that_is_not_this_one_names_the_host_setting() -> None:
    server = HealthServer(CollectorRegistry(), lambda: (True, {}), host="192.0.2.1", port=0)
    with pytest.raises(PortUnavailable, match=r"^cannot listen on LLM_WORKER_HTTP_HOST='192\."):
        await server.start()


def test_run_with_the_port_in_use_exits_2_with_one_line(held_port: int) -> None:
    done = _run(
        {
            "LLM_WORKER_HTTP_HOST": "127.0.0.1",
            "LLM_WORKER_HTTP_PORT": str(held_port),
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # never reached: the port comes first
        }
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert _messages(done.stderr) == [  # that line alone ("worker stopped" would be untrue)
        f"cannot start: LLM_WORKER_HTTP_PORT={held_port} is in use (address already in use): "
        "set LLM_WORKER_HTTP_PORT to a free port"
    ]


# -- Kafka -----------------------------------------------------------------------------------


def test_kafka_unreachable_retries_with_progress_lines_then_names_the_variable(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llm_worker.kafka")
    s = load_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}"})
    with pytest.raises(KafkaUnavailable) as info:
        wait_for_broker(s, 7.0)  # an attempt waits up to 3 s for an answer
    where = f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{closed_port}"
    message = str(info.value)
    assert message.startswith(f"gave up after 7 s: cannot reach Kafka at {where} (")
    assert message.endswith(
        "): set KAFKA_BOOTSTRAP_SERVERS to a broker this host can reach (or "
        "LLM_WORKER_BROKER_WAIT_S to wait longer)"
    )
    progress = [r.getMessage() for r in caplog.records if r.name == "llm_worker.kafka"]
    assert len(progress) >= 2, progress  # not silence until it gives up
    assert all(p.startswith(f"cannot reach Kafka at {where} (") for p in progress)
    assert all("(LLM_WORKER_BROKER_WAIT_S=7)" in p for p in progress)


def test_run_with_kafka_unreachable_exits_2(closed_port: int) -> None:
    done = _run(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port}",
            "LLM_WORKER_BROKER_WAIT_S": "4",
            "LLM_WORKER_HTTP_PORT": "0",
        }
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = _messages(done.stderr)
    assert any(line.startswith("cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=") for line in lines)
    assert lines[-1].startswith("cannot start: gave up after 4 s: cannot reach Kafka at ")


def test_a_missing_topic_names_the_topic_and_the_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin: Any = SimpleNamespace(
        list_topics=lambda timeout: SimpleNamespace(topics={"llm_completions": None})
    )
    outputs = {"LLM_WORKER_COMPLETIONS_TOPIC": "llm_completions", "LLM_WORKER_DLQ_TOPIC": "dlq"}
    with pytest.raises(KafkaUnavailable) as info:
        require_topics(admin, {"LLM_WORKER_PROMPTS_TOPIC": "prompts"}, outputs)
    assert str(info.value) == (
        "topic 'prompts' (LLM_WORKER_PROMPTS_TOPIC) does not exist and "
        "LLM_WORKER_CREATE_TOPICS=false: create it, set LLM_WORKER_PROMPTS_TOPIC to a topic "
        "that exists, or set LLM_WORKER_CREATE_TOPICS=true"
    )
    # a topic it writes may be created by the broker on first write: a warning naming it
    caplog.set_level(logging.WARNING, logger="llm_worker.kafka")
    require_topics(admin, {"LLM_WORKER_COMPLETIONS_TOPIC": "llm_completions"}, outputs)
    assert [r.getMessage() for r in caplog.records] == [
        "topic 'dlq' (LLM_WORKER_DLQ_TOPIC) does not exist and LLM_WORKER_CREATE_TOPICS=false: "
        "writing to it fails unless the broker creates topics on first write "
        "(auto.create.topics.enable)"
    ]


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_postgres_unreachable_says_so_every_few_seconds_then_gives_up(
    closed_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_cache, "PROGRESS_S", 0.3)  # 5 s in production
    caplog.set_level(logging.WARNING, logger="llm_worker.registry")
    dsn = f"postgresql://llm:{PASSWORD}@127.0.0.1:{closed_port}/registry"
    shown = f"postgresql://llm:***@127.0.0.1:{closed_port}/registry"
    cache = RegistryCache(dsn, backoff_cap_s=0.05)
    with pytest.raises(RegistryUnavailable) as info:
        await cache.start(timeout=1.2)
    await cache.close()
    message = str(info.value)
    assert message.startswith("model registry not loaded: gave up after 1.2 s (")
    assert f"on PostgreSQL at DATABASE_URL={shown} (connection failed: " in message
    assert message.endswith(
        "set DATABASE_URL to a database this host can reach, or LLM_WORKER_REGISTRY_WAIT_S to "
        "wait longer"
    )
    assert "Connection refused" in message and "\n" not in message
    progress = [r.getMessage() for r in caplog.records]
    assert 3 <= len(progress) <= 6, progress  # one every 0.3 s, not one per attempt
    for line in progress:
        assert line.startswith(f"registry: cannot reach PostgreSQL at DATABASE_URL={shown} (")
        assert "s more (LLM_WORKER_REGISTRY_WAIT_S=1.2)" in line
    assert PASSWORD not in message + caplog.text


@pytest.mark.parametrize(
    ("said", "fix"),
    [
        (
            'FATAL:  password authentication failed for user "llm"',
            "set DATABASE_URL with the right user and password",
        ),
        ('FATAL:  database "nodb" does not exist', "set DATABASE_URL to a database that exists"),
        ('FATAL:  role "nobody" does not exist', "set DATABASE_URL with a user that exists"),
    ],
)
async def test_a_refused_login_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, said: str, fix: str
) -> None:
    """What libpq says when the server refuses the login (as pgserver says it): no retry."""
    tries: list[str] = []

    async def refuse(self: RegistryCache, purpose: str) -> object:
        tries.append(purpose)
        raise psycopg.OperationalError(
            f'connection failed: connection to server at "db" ... {said}'
        )

    monkeypatch.setattr(RegistryCache, "_connect", refuse)
    cache = RegistryCache(f"postgresql://llm:{PASSWORD}@db:5432/registry")
    async with asyncio.timeout(5):
        with pytest.raises(RegistryUnavailable) as info:
            await cache.start(timeout=60)
    await cache.close()
    assert tries == ["load"]
    assert str(info.value).startswith(
        "model registry not loaded from PostgreSQL at "
        "DATABASE_URL=postgresql://llm:***@db:5432/registry ("
    )
    assert str(info.value).endswith(f"{' '.join(said.split())}): {fix}")  # one line
    assert PASSWORD not in str(info.value)


async def test_the_registry_table_missing_says_to_migrate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fetch(self: RegistryCache) -> object:
        raise psycopg.errors.UndefinedTable('relation "model_registry" does not exist')

    monkeypatch.setattr(RegistryCache, "_fetch_once", fetch)
    cache = RegistryCache("postgresql://llm@db/registry")
    with pytest.raises(RegistryUnavailable) as info:
        await cache.start(timeout=60)
    await cache.close()
    assert str(info.value).endswith(
        ": the registry table does not exist: run `llm-worker migrate` first"
    )


# -- the text log format ---------------------------------------------------------------------


def test_the_text_format_keeps_the_fields_as_key_value() -> None:
    record = logging.LogRecord(
        "llm_worker", logging.INFO, __file__, 1, "worker started", None, None
    )
    record.__dict__.update(
        {"group_id": "g", "http_port": 8080, "stats": {"in_flight": 0}, "note": "two words"}
    )
    line = TextFormatter().format(record)
    assert line.endswith(
        ' INFO llm_worker worker started group_id=g http_port=8080 stats={"in_flight":0} '
        'note="two words"'
    )
    bare = logging.LogRecord("llm_worker", logging.INFO, __file__, 1, "plain", None, None)
    assert TextFormatter().format(bare).endswith(" INFO llm_worker plain")


def test_migrate_names_database_url_without_its_password(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_worker.worker.cli.main import main

    monkeypatch.setenv("DATABASE_URL", f"postgresql://llm:{PASSWORD}@127.0.0.1:{closed_port}/db")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cannot migrate (check DATABASE_URL): ") and err.count("\n") == 1
    assert f"llm:***@127.0.0.1:{closed_port}/db" in err and PASSWORD not in err


async def test_the_app_refuses_to_start_without_its_prompts_topic() -> None:
    """Through the App (fake broker, tests/component): with LLM_WORKER_CREATE_TOPICS=false and
    no prompts topic, start() names it instead of a consumer idling on nothing."""
    from tests.component.conftest import run_app, start_fake_server

    provider = await start_fake_server(shutdown_timeout=0.2)
    try:
        with pytest.raises(KafkaUnavailable, match=r"^topic 'llm_prompts' \(LLM_WORKER_PROMPTS"):
            async with run_app(provider, {"LLM_WORKER_CREATE_TOPICS": "false"}):
                pass
    finally:
        await provider.close()
