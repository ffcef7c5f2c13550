"""`LLM_WORKER_ORDERING` through the real broker and Postgres, against a fake provider of random
latency (20-200 ms): in `key` mode, 100 keys x 50 prompts come back in offset order per key
with no two calls of one key overlapping (the fake's log of when each call arrived and was
answered), in both delivery modes, across a rebalance and across a SIGKILL; in `partition`
mode the completions of each input partition come out in offset order while the calls overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from llm_worker.devkit.fake_provider import Call
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.test_failover import wait_for
from tests.integration.test_worker_process import _start

pytestmark = pytest.mark.integration

KEYS, STEPS = 100, 50


def _row(fake: FakeServer) -> ModelRow:
    return ModelRow(
        model_id="m",
        provider="fake",
        endpoint=fake.endpoint("rand"),
        upstream_model="up-m",
        timeout_ms=5000,
    )


def _publish(
    bs: str, topic: str, records: list[tuple[bytes | None, dict[str, Any], int | None]]
) -> None:
    """(key, prompt, partition or None) in this order, one producer: the input's order."""
    p = Producer({"bootstrap.servers": bs, "linger.ms": 5, "enable.idempotence": True})
    for key, prompt, part in records:
        if part is None:
            p.produce(topic, json.dumps(prompt).encode(), key)
        else:
            p.produce(topic, json.dumps(prompt).encode(), key, partition=part)
        p.poll(0)
    assert p.flush(30) == 0


def _keyed(keys: int, steps: int) -> list[tuple[bytes | None, dict[str, Any], int | None]]:
    """Step i of every key, then step i + 1: the keys interleave in each partition."""
    return [
        (
            f"key-{k}".encode(),
            {"id": f"key-{k}/{i:03d}", "model": "m", "prompt": f"key-{k} {i}"},
            None,
        )
        for i in range(steps)
        for k in range(keys)
    ]


def _overlaps(calls: list[Call]) -> list[str]:
    """Calls of one key (the prompt's first word) that the fake served at the same time."""
    by_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in calls:
        assert c.answered is not None, c
        by_key[c.text.split()[0]].append((c.arrived, c.answered))
    out = []
    for key, spans in by_key.items():
        spans.sort()
        out += [key for (_, end), (start, _) in itertools.pairwise(spans) if start < end]
    return out


def _steps_per_key(records: list[kh.Record]) -> dict[str, list[int]]:
    """Each key's steps in the order its completions were written (one key: one partition)."""
    out: dict[str, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key, step = r.json()["id"].split("/")
        out[key].append(int(step))
    return out


def _first_seen_in_order(steps: list[int]) -> bool:
    """At-least-once: a restart answers again from the committed offset; the first answer of
    each step still comes in order, and every step is there."""
    first: list[int] = []
    for s in steps:
        if s not in first:
            first.append(s)
    return first == sorted(first) == list(range(len(first)))


async def _keyed_run(s: Settings, fake: FakeServer) -> list[kh.Record]:
    bs = s.kafka_bootstrap_servers
    for topic in (s.prompts_topic, s.completions_topic):
        await asyncio.to_thread(kh.create_topic, bs, topic, 6)
    await asyncio.to_thread(_publish, bs, s.prompts_topic, _keyed(KEYS, STEPS))
    async with App(s, http=False).running():
        return await asyncio.to_thread(kh.consume, bs, s.completions_topic, KEYS * STEPS, 120)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_key_mode_answers_each_key_in_order_one_call_at_a_time(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer, guarantee: str
) -> None:
    fake.set_profile("rand", latency_ms=110, jitter_ms=90)  # 20-200 ms
    upsert_row(pg_dsn, _row(fake))
    s = make_settings(ordering="key", processing_guarantee=guarantee)
    records = await _keyed_run(s, fake)
    steps = _steps_per_key(records)
    assert len(steps) == KEYS
    for key, got in steps.items():
        assert got == list(range(STEPS)), (key, got)
    calls = fake.calls("rand")
    assert len(calls) == KEYS * STEPS
    assert _overlaps(calls) == []
    assert all(d.json()["status"] == "ok" for d in records)
    # different keys did run side by side: at some moment dozens of calls were in flight
    assert max(c.in_flight for c in calls) >= 30


async def test_without_ordering_the_same_load_overlaps_and_reorders(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """The control: the same load with `none` breaks both promises, so the test above can
    fail."""
    fake.set_profile("rand", latency_ms=110, jitter_ms=90)
    upsert_row(pg_dsn, _row(fake))
    records = await _keyed_run(make_settings(ordering="none"), fake)
    steps = _steps_per_key(records)
    assert any(got != list(range(STEPS)) for got in steps.values())
    assert _overlaps(fake.calls("rand"))


async def test_key_mode_keeps_the_order_across_a_rebalance(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("rand", latency_ms=110, jitter_ms=90)
    upsert_row(pg_dsn, _row(fake))
    s = make_settings(ordering="key")
    bs = s.kafka_bootstrap_servers
    for topic in (s.prompts_topic, s.completions_topic):
        await asyncio.to_thread(kh.create_topic, bs, topic, 6)
    keys, steps = 30, 30
    await asyncio.to_thread(_publish, bs, s.prompts_topic, _keyed(keys, steps))
    async with App(s, http=False).running():
        await wait_for(lambda: len(fake.calls("rand")) >= keys * 5, timeout=60)
        async with App(s, http=False).running():  # joins: partitions move between them
            records = await asyncio.to_thread(
                kh.consume, bs, s.completions_topic, keys * steps, 120
            )
    got = _steps_per_key(records)
    assert len(got) == keys
    for key, seq in got.items():
        assert _first_seen_in_order(seq) and len(set(seq)) == steps, (key, seq)
    assert _overlaps(fake.calls("rand")) == []


async def test_key_mode_keeps_the_order_across_a_sigkill(
    worker_env: dict[str, str], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("rand", latency_ms=110, jitter_ms=90)
    upsert_row(pg_dsn, _row(fake))
    env = {**worker_env, "LLM_WORKER_ORDERING": "key"}
    bs, out_topic = env["KAFKA_BOOTSTRAP_SERVERS"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    for topic in (env["LLM_WORKER_PROMPTS_TOPIC"], out_topic):
        await asyncio.to_thread(kh.create_topic, bs, topic, 6)
    keys, steps = 30, 30
    await asyncio.to_thread(_publish, bs, env["LLM_WORKER_PROMPTS_TOPIC"], _keyed(keys, steps))
    first = _start(env)
    try:
        await wait_for(lambda: len(fake.calls("rand")) >= keys * 8, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
    second = _start(env)
    try:
        ids = {f"key-{k}/{i:03d}" for k in range(keys) for i in range(steps)}
        await asyncio.to_thread(kh.consume_until_ids, bs, out_topic, ids, 120)
        records = await asyncio.to_thread(kh.read_all, bs, out_topic)
    finally:
        second.terminate()
        await asyncio.to_thread(second.wait, 30)
    got = _steps_per_key(records)
    assert len(got) == keys
    for key, seq in got.items():
        assert _first_seen_in_order(seq) and len(set(seq)) == steps, (key, seq)


async def test_partition_mode_writes_each_partitions_completions_in_offset_order(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    fake.set_profile("rand", latency_ms=110, jitter_ms=90)
    upsert_row(pg_dsn, _row(fake))
    s = make_settings(ordering="partition")
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 3)
    await asyncio.to_thread(kh.create_topic, bs, s.completions_topic, 1)  # one output order
    n = 200
    records = [
        (None, {"id": f"p{p}/{i:03d}", "model": "m", "prompt": f"p{p} {i}"}, p)
        for i in range(n)
        for p in range(3)
    ]
    await asyncio.to_thread(_publish, bs, s.prompts_topic, records)
    async with App(s, http=False).running():
        out = await asyncio.to_thread(kh.consume, bs, s.completions_topic, 3 * n, 120)
    got = _steps_per_key(out)
    assert {k: len(v) for k, v in got.items()} == {"p0": n, "p1": n, "p2": n}
    for key, seq in got.items():
        assert seq == list(range(n)), (key, seq)
    assert max(c.in_flight for c in fake.calls("rand")) >= 20  # the calls overlapped
