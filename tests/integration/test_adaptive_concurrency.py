"""Adaptive concurrency on a real broker: with default settings a 500 ms provider gets the
concurrency its backlog needs (a fixed 256 could not give it), measured from the provider's
own request log; a provider that answers 429 above a concurrency gets no more than that."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


async def _run(s: Settings, pg_dsn: str, fake: FakeServer, n: int) -> dict[str, int]:
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m",
            provider="fake",
            endpoint=fake.endpoint(),
            upstream_model="u",
            timeout_ms=30_000,
        ),
    )
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 4)
    prompts = [{"id": f"r{i}", "model": "m", "prompt": f"q{i}"} for i in range(n)]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    async with App(s, http=False).running() as app:
        deadline = time.monotonic() + 240
        while app.worker.stats()["completed"] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        stats = app.worker.stats()
    assert stats["completed"] == n and stats["errors"] == 0, stats
    return stats


async def test_a_slow_provider_gets_more_than_a_fixed_bound_could_give(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("default", latency_ms=500)
    await _run(make_settings(), pg_dsn, fake, 6000)
    peak = max(entry.in_flight for entry in fake.log())
    assert peak > 256, f"the provider never saw more than {peak} calls at once"


async def test_a_fixed_cap_still_bounds_it(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("default", latency_ms=500)
    await _run(make_settings(max_in_flight=200), pg_dsn, fake, 1500)
    assert max(entry.in_flight for entry in fake.log()) <= 200


async def test_429s_above_a_concurrency_bring_the_limit_under_it(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("default", latency_ms=300, max_concurrency=150)
    await _run(make_settings(), pg_dsn, fake, 6000)
    log = fake.log()
    late = log[len(log) * 3 // 4 :]  # once the limit has learned
    rejected = sum(1 for e in late if e.status == 429)
    assert rejected <= len(late) * 0.1, f"{rejected} of the last {len(late)} calls got 429"
