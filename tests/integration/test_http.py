"""`/healthz`, `/readyz` and `/metrics` over real HTTP, from a worker on a real broker and a real
PostgreSQL: the JSON of readiness (also during a Postgres outage) and the metric values after
known prompts, parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.devkit.devstack import LocalPostgres
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.test_failover import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _row(model_id: str, endpoint: str) -> ModelRow:
    return ModelRow(
        model_id=model_id, provider="fake", endpoint=endpoint, upstream_model="u", timeout_ms=5000
    )


class Endpoints:
    def __init__(self, app: App, session: aiohttp.ClientSession) -> None:
        assert app.health is not None and app.health.port
        self.base = f"http://127.0.0.1:{app.health.port}"
        self.session = session

    async def json(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as r:
            return r.status, await r.json()

    async def metrics(self) -> Samples:
        async with self.session.get(self.base + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


HTTP = {"http_host": "127.0.0.1", "http_port": 0}  # any free port


async def test_metrics_and_readiness_after_known_prompts(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(**HTTP)
    fake.set_profile("down", error_rate=1.0, error_status=503)
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    upsert_row(pg_dsn, _row("m2", fake.endpoint("down")))
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    prompts: list[bytes] = [
        *(
            json.dumps({"id": f"ok{i}", "model": "m1", "prompt": f"q{i}"}).encode()
            for i in range(3)
        ),
        json.dumps({"id": "down", "model": "m2", "prompt": "x"}).encode(),
        json.dumps({"id": "nope", "model": "no-such-model", "prompt": "x"}).encode(),
        b"{not json",
    ]
    app = App(s)
    async with app.running(), aiohttp.ClientSession() as session:
        http = Endpoints(app, session)
        status, live = await http.json("/healthz")
        assert status == 200 and live["status"] == "ok"
        await wait_for(lambda: bool(app.bridge.assignment), timeout=60)
        await asyncio.to_thread(kh.produce, bs, s.prompts_topic, prompts)
        await asyncio.to_thread(kh.consume, bs, s.completions_topic, 5, 60)
        await asyncio.to_thread(kh.consume, bs, s.dlq_topic, 1, 60)
        status, ready = await http.json("/readyz")
        m = await http.metrics()
        await wait_for(lambda: app.worker.stats()["commits"] > 0)
    assert status == 200 and ready["ready"] is True
    assert ready["broker"] is True and ready["registry_loaded"] is True
    assert ready["registry_stale"] is False and ready["assigned_partitions"] == 2
    assert ready["worker"]["completed"] == 5 and ready["worker"]["dlq"] == 1

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("llm_worker_completions_total", model="m1", status="ok") == 3
    assert value("llm_worker_completions_total", model="m2", status="error") == 1
    # a model the registry does not know is not a label value (labels never come from input)
    assert value("llm_worker_completions_total", model="unknown", status="error") == 1
    assert value("llm_worker_completions_total", model="no-such-model", status="error") == 0
    assert value("llm_worker_completion_errors_total", type="unknown_model") == 1
    assert value("llm_worker_completion_errors_total", type="server_error") == 1
    assert value("llm_worker_dlq_records_total", reason="invalid_json") == 1
    assert value("llm_worker_messages_consumed_total") == 6
    assert value("llm_worker_registry_rows") == 2
    assert value("llm_worker_registry_stale") == 0
    calls = {"provider": "fake", "endpoint": "m1/primary", "outcome": "ok"}
    assert value("llm_worker_provider_calls_total", **calls) == 3
    assert value("llm_worker_in_flight") == 0


async def test_readiness_during_a_postgres_outage(
    make_settings: Callable[..., Settings], own_postgres: LocalPostgres, fake: FakeServer
) -> None:
    """During the outage /readyz stays 200 with registry_stale true and the gauge is 1; both
    clear when PostgreSQL is back."""
    dsn = own_postgres.dsn
    upsert_row(dsn, _row("m1", fake.endpoint()))
    s = make_settings(database_url=dsn, registry_refresh_s=0.5, **HTTP)
    app = App(s)
    async with app.running(), aiohttp.ClientSession() as session:
        http = Endpoints(app, session)
        await wait_for(lambda: bool(app.bridge.assignment), timeout=60)
        before = await http.json("/readyz")
        await asyncio.to_thread(own_postgres.halt)
        try:
            states: list[tuple[int, Any]] = []

            async def stale() -> bool:
                states.append(await http.json("/readyz"))
                return bool(states[-1][1]["registry_stale"])

            await _until(stale, timeout=20)
            during = states[-1]
            gauge_during = (await http.metrics())[("llm_worker_registry_stale", ())]
        finally:
            await asyncio.to_thread(own_postgres.resume)

        async def fresh() -> bool:
            return not (await http.json("/readyz"))[1]["registry_stale"]

        await _until(fresh, timeout=30)
        gauge_after = (await http.metrics())[("llm_worker_registry_stale", ())]
    assert before[0] == 200 and before[1]["registry_stale"] is False
    assert during[0] == 200 and during[1]["ready"] is True and during[1]["registry_stale"] is True
    assert gauge_during == 1 and gauge_after == 0


async def _until(check: Callable[[], Any], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.2)
