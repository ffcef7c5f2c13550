"""Request priority on a real broker: an endpoint saturated by its row's `rpm_limit` with a
backlog of `low` prompts; `high` prompts published one a second while that backlog drains
wait for about a burst of places, not for the backlog (their completions' `queue_ms`)."""

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

LOWS = 200
HIGHS = 20
RPM = 300  # 5 a second: the low backlog takes 40 s


def _saturated_row(pg_dsn: str, fake: FakeServer, rpm: int) -> None:
    """Model `m` on the fake at 20 ms, limited to `rpm`; its default priority `low` (the
    backlog's prompts say nothing)."""
    fake.set_profile("default", latency_ms=20)
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m",
            provider="fake",
            endpoint=fake.endpoint(),
            upstream_model="u",
            rpm_limit=rpm,
            priority="low",
        ),
    )


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def test_high_priority_prompts_pass_a_saturated_endpoints_low_backlog(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    _saturated_row(pg_dsn, fake, RPM)
    s = make_settings()
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    lows = [{"id": f"low{i}", "model": "m", "prompt": f"q{i}"} for i in range(LOWS)]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, lows)
    async with App(s, http=False).running() as app:
        await asyncio.sleep(2.0)  # the worker has taken the backlog
        for i in range(HIGHS):  # one a second, while the backlog drains
            high = {"id": f"high{i}", "model": "m", "prompt": f"h{i}", "priority": "high"}
            await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, [high])
            await asyncio.sleep(1.0)
        deadline = time.monotonic() + 120
        while app.worker.stats()["completed"] < LOWS + HIGHS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    ids = {p["id"] for p in lows} | {f"high{i}" for i in range(HIGHS)}
    done = await asyncio.to_thread(kh.consume_until_ids, bs, s.completions_topic, ids)
    by_id = {d["id"]: d for d in done}
    assert all(d["status"] == "ok" for d in by_id.values()), [
        d for d in by_id.values() if d["status"] != "ok"
    ][:3]
    high = [d["queue_ms"] for i, d in by_id.items() if i.startswith("high")]
    low = [d["queue_ms"] for i, d in by_id.items() if i.startswith("low")]
    high_p95, low_p95 = _p95(high), _p95(low)
    print(f"queue_ms p95: high {high_p95:.0f} ms, low {low_p95:.0f} ms")
    # FIFO, each high one would wait for the lows ahead of it (seconds to tens of seconds);
    # with priority, for the places already handed out (a burst: 1 s) and the high ones ahead
    assert high_p95 <= low_p95 / 10, (high_p95, low_p95)


PARKED_LOWS = 500  # more than the worker takes in flight (256): the rest is parked
PARKED_HIGHS = 10
FAST_RPM = 1200  # 20 a second


async def test_high_prompts_behind_a_backlog_larger_than_the_worker_go_first_at_the_intake(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """All published at once, the high ones last: the worker takes 256 lows, parks the rest
    (the high ones too) and, as room frees, starts the high ones before the ~244 lows read
    before them. Without the lookahead they would wait in Kafka until those lows had started,
    that is until ~244 lows had finished (12 s at 20/s)."""
    _saturated_row(pg_dsn, fake, FAST_RPM)
    s = make_settings()
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    lows = [{"id": f"low{i}", "model": "m", "prompt": f"q{i}"} for i in range(PARKED_LOWS)]
    highs = [
        {"id": f"high{i}", "model": "m", "prompt": f"h{i}", "priority": "high"}
        for i in range(PARKED_HIGHS)
    ]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, lows + highs)
    async with App(s, http=False).running() as app:
        deadline = time.monotonic() + 120
        while app.worker.stats()["completed"] < len(lows + highs) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    ids = {p["id"] for p in lows + highs}
    done = await asyncio.to_thread(kh.consume_until_ids, bs, s.completions_topic, ids)
    by_id = {d["id"]: d for d in done}
    assert all(d["status"] == "ok" for d in by_id.values())
    high = [by_id[h["id"]]["queue_ms"] for h in highs]
    low = [by_id[lo["id"]]["queue_ms"] for lo in lows]
    print(f"queue_ms max: high {max(high):.0f} ms; low p50 {sorted(low)[len(low) // 2]:.0f} ms")
    # parked and started first: 5.5 s here; with LLM_WORKER_PRIORITY_LOOKAHEAD=0 (read in
    # partition order only) the high ones waited 16.6 s, behind the lows read before them
    assert max(high) < 10_000, high
    assert _p95(low) > 20_000  # the backlog itself: 500 at 20/s
