"""The command line as a user runs it: migrate, send, registry, clear configuration errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import get_row, upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.pg_fixtures import database_dsn

pytestmark = pytest.mark.integration


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_migrate_applies_once_then_is_a_no_op(pg_server_dsn: str) -> None:
    import psycopg

    name = "t_cli_migrate"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = database_dsn(pg_server_dsn, name)  # a URL or a key=value DSN alike
    first = cli("migrate", env={"DATABASE_URL": dsn})
    assert first.returncode == 0, first.stderr
    assert "001_model_registry.sql" in first.stdout
    second = cli("migrate", env={"DATABASE_URL": dsn})
    assert second.returncode == 0 and "up to date" in second.stdout


def test_bad_configuration_names_the_variable() -> None:
    r = cli("run", env={"LLM_WORKER_HTTP_PORT": "eighty"})
    assert r.returncode == 2
    assert "LLM_WORKER_HTTP_PORT" in r.stderr and "Traceback" not in r.stderr


def test_registry_failover_and_restore(pg_dsn: str) -> None:
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1",
            provider="fake",
            endpoint="http://x/v1",
            upstream_model="u",
            fallback_model_id="m2",
        ),
    )
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m2", provider="fake", endpoint="http://y/v1", upstream_model="u2"),
    )
    env = {"DATABASE_URL": pg_dsn}
    listed = cli("registry", "list", env=env)
    assert listed.returncode == 0 and "m1" in listed.stdout and "-> m2" in listed.stdout
    assert cli("registry", "failover", "m1", env=env).returncode == 0
    row = get_row(pg_dsn, "m1")
    assert row is not None and row.enabled is False
    assert cli("registry", "restore", "m1", env=env).returncode == 0
    shown = cli("registry", "--json", "show", "m1", env=env)
    assert json.loads(shown.stdout)["enabled"] is True
    changed = cli(
        "registry", "set", "m1", "--endpoint", "http://z/v1", "--timeout-ms", "900", env=env
    )
    assert changed.returncode == 0, changed.stderr
    row = get_row(pg_dsn, "m1")
    assert row is not None and row.endpoint == "http://z/v1" and row.timeout_ms == 900
    missing = cli("registry", "show", "nope", env=env)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_registry_set_refuses_a_malformed_endpoint(pg_dsn: str) -> None:
    upsert_row(
        pg_dsn, ModelRow(model_id="m1", provider="fake", endpoint="http://x/v1", upstream_model="u")
    )
    env = {"DATABASE_URL": pg_dsn, "LLM_WORKER_HTTP_PORT": "not-used-by-registry"}
    typo = cli("registry", "set", "m1", "--endpoint", "vllm:8000/v1", env=env)
    assert typo.returncode == 2  # a value to fix
    assert "endpoint: 'vllm:8000/v1' is not an absolute http(s) URL" in typo.stderr
    row = get_row(pg_dsn, "m1")
    assert row is not None and row.endpoint == "http://x/v1"  # unchanged


async def test_send_prints_completions_and_fails_on_timeout(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
    )
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 2)
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.completions_topic, 2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "LLM_WORKER_PROMPTS_TOPIC": s.prompts_topic,
        "LLM_WORKER_COMPLETIONS_TOPIC": s.completions_topic,
    }
    async with App(s, http=False).running():
        r = await asyncio.to_thread(
            cli, "send", "hello from the cli", "--model", "m1", "--id", "cli-1", env=env
        )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["id"] == "cli-1" and doc["status"] == "ok" and "hello from the cli" in doc["text"]
    # no worker running now: send waits, then says so and exits non-zero
    late = await asyncio.to_thread(
        cli, "send", "nobody answers", "--model", "m1", "--timeout", "3", env=env
    )
    assert late.returncode == 1 and "timed out" in late.stderr


async def test_send_stream_shows_the_answer_as_it_comes(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    fake.set_profile("words", token_delay_ms=20)
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1", provider="fake", endpoint=fake.endpoint("words"), upstream_model="u"
        ),
    )
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 2)
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.completions_topic, 2)
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.chunks_topic, 2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "LLM_WORKER_PROMPTS_TOPIC": s.prompts_topic,
        "LLM_WORKER_COMPLETIONS_TOPIC": s.completions_topic,
        "LLM_WORKER_CHUNKS_TOPIC": s.chunks_topic,
    }
    async with App(s, http=False).running():
        r = await asyncio.to_thread(
            cli, "send", "one two three four", "--model", "m1", "--stream", env=env
        )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["status"] == "ok" and doc["text"] == "[fake:u] one two three four"
    assert r.stderr.startswith(doc["text"] + "\n"), r.stderr  # the chunks, joined, as they came
    assert len(fake.calls("words")) == 1 and fake.calls("words")[0].streamed


async def test_trace_headers_are_carried_to_the_completion(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    from confluent_kafka import Producer

    s = make_settings()
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
    )
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 1)
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def send() -> None:
        p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
        p.produce(
            s.prompts_topic,
            json.dumps({"id": "t1", "model": "m1", "prompt": "x"}).encode(),
            b"k1",
            headers=[("traceparent", tp), ("x-other", b"dropped")],
        )
        p.flush(10)

    await asyncio.to_thread(send)
    async with App(s, http=False).running():
        out = await asyncio.to_thread(
            kh.consume, s.kafka_bootstrap_servers, s.completions_topic, 1, 60
        )
    assert out[0].headers.get("traceparent") == tp
    assert out[0].key == b"k1"
