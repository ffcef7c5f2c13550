"""A second worker joins the group mid-stream and leaves again, on a real broker.

After both stopped, the output topic is read from its beginning until it stays quiet (not up
to a count, which would hide late duplicates): every prompt is answered, duplicates are no
more than what was in flight at the two hand-overs, and each partition's committed offset is
the end of that partition's input.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.test_failover import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
IN_FLIGHT = 16


async def test_a_worker_joins_and_leaves_mid_stream(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    fake: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = make_settings(max_in_flight=IN_FLIGHT, shutdown_timeout_s=10.0)
    fake.set_profile("rb", latency_ms=200)  # one worker: ~80 answers/s
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1",
            provider="fake",
            endpoint=fake.endpoint("rb"),
            upstream_model="u",
            timeout_ms=5000,
        ),
    )
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, PARTITIONS)
    await asyncio.to_thread(kh.create_topic, bs, s.completions_topic, PARTITIONS)
    n = 3000
    prompts = [{"id": f"rb-{i}", "model": "m1", "prompt": f"q{i}"} for i in range(n)]
    first, second = prompts[: n // 2], prompts[n // 2 :]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, first)

    a, b = App(s, http=False), App(s, http=False)
    done = lambda app: app.worker.stats()["completed"]  # noqa: E731
    async with a.running():
        await wait_for(lambda: done(a) >= 150, timeout=90)
        async with b.running():
            # A slow join can outlast what a alone has left of the first half: the second
            # half arrives once b holds partitions, so b always has work to take over.
            await wait_for(lambda: len(b.bridge.assignment) > 0, timeout=90)
            await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, second)
            await wait_for(lambda: done(b) >= 150, timeout=90)  # it took partitions over
            a_during = done(a)
            await wait_for(lambda: done(a) > a_during, timeout=60)  # and both worked
        b_done = done(b)
        await wait_for(lambda: done(a) + b_done >= n, timeout=120)  # a took them all back
        assert len(a.bridge.assignment) == PARTITIONS

    records = await asyncio.to_thread(kh.read_all, bs, s.completions_topic)
    counts = Counter(r.json()["id"] for r in records)
    assert set(counts) == {p["id"] for p in prompts}  # every prompt answered
    duplicates = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(f"\n[rebalance] {n} prompts: {duplicates} duplicates, {b_done} answered by b")
    assert duplicates <= 2 * IN_FLIGHT, duplicates  # at most what was in flight, twice
    assert all(r.json()["status"] == "ok" for r in records)

    ends = await asyncio.to_thread(kh.input_ends, bs, s.prompts_topic, n)
    assert sum(ends.values()) == n and len(ends) == PARTITIONS
    committed = await asyncio.to_thread(kh.committed, bs, s.group_id, s.prompts_topic, PARTITIONS)
    assert committed == ends
