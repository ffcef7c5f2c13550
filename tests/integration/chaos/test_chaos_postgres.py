"""The registry's Postgres under fire, while prompts flow: stopped and restarted mid-run (the
worker serves from its cache), unreachable when the worker starts (it waits, then serves),
and the model's row deleted mid-run (clear `unknown_model` errors, nothing lost or stuck)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llm_worker.devkit.devstack import LocalPostgres
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import delete_row, upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import FakeProcess, WorkerProcess, prompts, verdict
from tests.integration.test_failover import Stream, wait_for

pytestmark = pytest.mark.integration


def _row(endpoint: str) -> ModelRow:
    return ModelRow(
        model_id="m1", provider="fake", endpoint=endpoint, upstream_model="u", timeout_ms=5000
    )


async def _topics(s: Settings) -> None:
    for topic in (s.prompts_topic, s.completions_topic):
        await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, topic, 2)


async def _read(s: Settings) -> list[dict[str, object]]:
    records = await asyncio.to_thread(kh.read_all, s.kafka_bootstrap_servers, s.completions_topic)
    return [r.json() for r in records]


async def test_postgres_stopped_and_restarted_mid_run(
    make_settings: Callable[..., Settings],
    own_postgres: LocalPostgres,
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    upsert_row(own_postgres.dsn, _row(fake.endpoint()))
    s = make_settings(database_url=own_postgres.dsn, registry_refresh_s=0.5)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(own_postgres.halt)
        await wait_for(lambda: app.registry.stale, timeout=10)
        stale_ready = app.ready()[0]
        await asyncio.sleep(4.0)
        await asyncio.to_thread(own_postgres.resume)
        await wait_for(lambda: not app.registry.stale, timeout=30)
        await asyncio.sleep(1.0)
    v = verdict("postgres-restart", stream.sent, await _read(s), started, capsys)
    assert stale_ready  # the cache is usable: still ready during the outage
    assert not v.lost and not v.errors, v


def test_postgres_unreachable_at_start_the_worker_waits_then_serves(
    worker_env: dict[str, str],
    own_postgres: LocalPostgres,
    fake_process: FakeProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    upsert_row(own_postgres.dsn, _row(fake_process.endpoint()))
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    out_topic = worker_env["LLM_WORKER_COMPLETIONS_TOPIC"]
    kh.create_topic(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], 2)
    kh.create_topic(bs, out_topic, 2)
    sent = prompts(500, "m1")
    kh.produce_prompts(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], sent)
    own_postgres.halt()
    worker = WorkerProcess({**worker_env, "DATABASE_URL": own_postgres.dsn}, tmp_path, "w")
    try:
        time.sleep(5.0)  # it waits for Postgres (LLM_WORKER_REGISTRY_WAIT_S, 60 s)...
        assert worker.proc.poll() is None, worker.text()
        assert not worker.readyz().get("ready")  # ...and says it is not ready
        own_postgres.resume()
        worker.wait_ready(60)
        docs = kh.consume_until_ids(bs, out_topic, {p["id"] for p in sent}, timeout=90)
    finally:
        assert worker.stop() == 0
    v = verdict("postgres-down-at-start", [p["id"] for p in sent], docs, started, capsys)
    assert not v.lost and not v.errors, v


async def test_registry_row_deleted_mid_run(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    upsert_row(pg_dsn, _row(fake.endpoint()))
    s = make_settings(registry_refresh_s=0.5)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await wait_for(lambda: len(stream.got) >= 100, timeout=60)  # served, then deleted
        await asyncio.to_thread(delete_row, pg_dsn, "m1")
        deleted = time.time()
        await asyncio.sleep(3.0)
    docs = await _read(s)
    v = verdict("registry-row-deleted", stream.sent, docs, started, capsys)
    assert not v.lost, f"{len(v.lost)} prompts lost"
    assert set(v.errors) == {"unknown_model"}, v.errors  # clear errors, of that kind only
    late = [d for d in docs if stream.sent[str(d["id"])] > deleted + 1.5]
    assert late and all(d["status"] == "error" for d in late)  # the deletion took effect
    assert sum(1 for d in docs if d["status"] == "ok") >= 100  # answered while it was there
