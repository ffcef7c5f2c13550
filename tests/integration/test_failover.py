"""Failover by row update, on a real broker and a real Postgres, while prompts keep flowing."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from llm_worker.devkit.devstack import LocalPostgres
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import set_enabled, update_row, upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


class Stream:
    """Publishes prompts at a steady rate and collects completions, in background threads."""

    def __init__(self, s: Settings, model: str, rate: float = 200.0) -> None:
        self.s, self.model, self.rate = s, model, rate
        self.sent: dict[str, float] = {}
        self.got: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._stop_reading = threading.Event()
        self._threads = [
            threading.Thread(target=self._publish),
            threading.Thread(target=self._read),
        ]

    async def __aenter__(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop publishing, wait (without blocking the loop) for the answers, stop reading."""
        self._stop.set()
        await asyncio.to_thread(self._threads[0].join)
        deadline = time.monotonic() + 30
        while len({d["id"] for _, d in self.got}) < len(self.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self._stop_reading.set()
        await asyncio.to_thread(self._threads[1].join)

    def _publish(self) -> None:
        p = Producer({"bootstrap.servers": self.s.kafka_bootstrap_servers, "linger.ms": 2})
        for i in itertools.count():
            if self._stop.is_set():
                break
            rid = f"s-{i}"
            p.produce(
                self.s.prompts_topic,
                json.dumps({"id": rid, "model": self.model, "prompt": f"q{i}"}),
            )
            self.sent[rid] = time.time()
            p.poll(0)
            time.sleep(1 / self.rate)
        p.flush(10)

    def _read(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.s.kafka_bootstrap_servers,
                "group.id": "unused",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 25,
            }
        )
        topic = self.s.completions_topic
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while not self._stop_reading.is_set():
            for m in c.consume(200, 0.1):
                if m.error() is None:
                    self.got.append((time.time(), json.loads(m.value())))
        c.close()

    def after(self, t: float) -> list[dict[str, Any]]:
        return [d for ts, d in self.got if self.sent.get(d["id"], 0) > t]


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def _row(model_id: str, endpoint: str, **kw: Any) -> ModelRow:
    return ModelRow(
        model_id=model_id,
        provider="fake",
        endpoint=endpoint,
        upstream_model=model_id,
        timeout_ms=5000,
        **kw,
    )


async def _topics(s: Settings) -> None:
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.prompts_topic, 2)
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.completions_topic, 2)


async def test_endpoint_update_moves_traffic_without_failures(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(registry_refresh_s=60.0)  # only NOTIFY can make the switch quick
    upsert_row(pg_dsn, _row("m1", fake.endpoint("a")))
    await _topics(s)
    async with App(s, http=False).running(), Stream(s, "m1") as stream:
        await wait_for(lambda: len(stream.got) >= 100)
        switched_at = time.time()
        await asyncio.to_thread(update_row, pg_dsn, "m1", endpoint=fake.endpoint("b"))
        await wait_for(lambda: fake.counters("b")["requests"] >= 100)
        a_after = fake.counters("a")["requests"]
        await asyncio.sleep(1.0)
        assert fake.counters("a")["requests"] == a_after  # nothing goes to the old endpoint
    docs = [d for _, d in stream.got]
    assert {d["id"] for d in docs} == set(stream.sent)  # every prompt answered
    assert all(d["status"] == "ok" for d in docs)  # none failed because of the switch
    late = [d for d in stream.after(switched_at + 1.0)]
    assert late and all(d["status"] == "ok" for d in late)


async def test_failover_and_restore_during_load(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(registry_refresh_s=60.0)
    upsert_row(
        pg_dsn,
        _row(
            "m1",
            fake.endpoint("a"),
            fallback_provider="fake",
            fallback_endpoint=fake.endpoint("b"),
            fallback_model="backup",
        ),
    )
    await _topics(s)
    async with App(s, http=False).running(), Stream(s, "m1") as stream:
        await wait_for(lambda: len(stream.got) >= 50)
        t_fail = time.time()
        await asyncio.to_thread(set_enabled, pg_dsn, "m1", False)
        await wait_for(lambda: any(d["fallback_used"] for d in stream.after(t_fail)))
        await asyncio.sleep(1.5)
        t_restore = time.time()
        await asyncio.to_thread(set_enabled, pg_dsn, "m1", True)
        await wait_for(lambda: len([d for d in stream.after(t_restore + 1.0)]) >= 50)
    assert all(d["status"] == "ok" for _, d in stream.got)
    during = [d for d in stream.after(t_fail + 1.0) if stream.sent[d["id"]] < t_restore]
    assert during and all(d["fallback_used"] and d["upstream_model"] == "backup" for d in during)
    back = stream.after(t_restore + 1.0)
    assert back and not any(d["fallback_used"] for d in back)


async def test_postgres_outage_serves_from_cache_and_recovers(
    make_settings: Callable[..., Settings], own_postgres: LocalPostgres, fake: FakeServer
) -> None:
    dsn = own_postgres.dsn
    upsert_row(dsn, _row("m1", fake.endpoint("a")))
    s = make_settings(database_url=dsn, registry_refresh_s=0.5)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1") as stream:
        await wait_for(lambda: len(stream.got) >= 50)
        await asyncio.to_thread(own_postgres.halt)
        t_down = time.time()
        await wait_for(lambda: app.registry.stale, timeout=10)
        assert app.ready()[0]  # still ready: the cache is usable
        await wait_for(lambda: len(stream.after(t_down + 1.0)) >= 100)  # still serving
        await asyncio.to_thread(own_postgres.resume)
        await wait_for(lambda: not app.registry.stale, timeout=20)
        await asyncio.to_thread(update_row, dsn, "m1", endpoint=fake.endpoint("b"))
        await wait_for(lambda: fake.counters("b")["requests"] >= 20)
    assert all(d["status"] == "ok" for _, d in stream.got)
    assert {d["id"] for _, d in stream.got} == set(stream.sent)


async def test_cycles_and_dangling_fallbacks_are_clear_errors(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    upsert_row(pg_dsn, _row("loop-a", fake.endpoint(), fallback_model_id="loop-b"))
    upsert_row(pg_dsn, _row("loop-b", fake.endpoint(), fallback_model_id="loop-a"))
    upsert_row(pg_dsn, _row("dangling", fake.endpoint(), fallback_model_id="ghost"))
    await _topics(s)
    prompts = [
        {"id": "c1", "model": "loop-a", "prompt": "x"},
        {"id": "d1", "model": "dangling", "prompt": "x"},
    ]
    await asyncio.to_thread(kh.produce_prompts, s.kafka_bootstrap_servers, s.prompts_topic, prompts)
    async with App(s, http=False).running():
        out = {
            r.json()["id"]: r.json()
            for r in await asyncio.to_thread(
                kh.consume, s.kafka_bootstrap_servers, s.completions_topic, 2, 60
            )
        }
    assert out["c1"]["status"] == "error" and out["c1"]["error"]["type"] == "fallback_cycle"
    assert "loop-a" in out["c1"]["error"]["message"] and "loop-b" in out["c1"]["error"]["message"]
    assert (
        out["d1"]["error"]["type"] == "dangling_fallback"
        and "ghost" in out["d1"]["error"]["message"]
    )
