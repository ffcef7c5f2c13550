"""Issue 8 on a real broker: poison records that cannot be produced as they are, a partition
paused when a rebalance comes, and commits that race a rebalance. (A shutdown whose delivery
reports never come is in tests/unit/test_stream_faults.py: Tansu creates any topic a producer
names, so a real broker here cannot withhold reports.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from llm_worker.worker.stream.kafka import KafkaBridge
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


def _row(endpoint: str) -> ModelRow:
    return ModelRow(
        model_id="m", provider="fake", endpoint=endpoint, upstream_model="up", timeout_ms=5000
    )


async def _committed(s: Settings, partitions: int) -> dict[int, int]:
    return await asyncio.to_thread(
        kh.committed, s.kafka_bootstrap_servers, s.group_id, s.prompts_topic, partitions
    )


async def _wait_committed(s: Settings, want: dict[int, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = await _committed(s, len(want))
        if all(got.get(p) == off for p, off in want.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"committed offsets {got}, expected {want}")


async def test_poison_records_too_large_to_produce_do_not_stall_their_partition(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """A prompt with a ~1 MB key (its error completion would carry the key) and a ~1 MB non-JSON
    value (its dead letter would carry the value plus headers): each gets a smaller record, and
    the prompt after them in the same partition is answered and committed."""
    s = make_settings()
    bs = s.kafka_bootstrap_servers
    upsert_row(pg_dsn, _row(fake.endpoint()))
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    producer = Producer({"bootstrap.servers": bs, "message.max.bytes": 1_000_000})
    producer.produce(s.prompts_topic, b'{"id":"big-key","model":"m","prompt":"p"}', b"k" * 999_850)
    producer.produce(s.prompts_topic, b"\xff" * 999_900, b"raw")
    producer.produce(s.prompts_topic, b'{"id":"after","model":"m","prompt":"p"}', b"after")
    assert producer.flush(30) == 0

    async with App(s, http=False).running():
        await _wait_committed(s, {0: 3})
        comps = await asyncio.to_thread(kh.consume, bs, s.completions_topic, 2, 30)
        dead = await asyncio.to_thread(kh.consume, bs, s.dlq_topic, 1, 30)

    by_id = {c.json()["id"]: c for c in comps}
    assert by_id["after"].json()["status"] == "ok" and by_id["after"].key == b"after"
    big = by_id["big-key"].json()
    assert big["status"] == "error" and big["error"]["type"] in (
        "payload_too_large",
        "output_too_large",
    )
    assert by_id["big-key"].key is None  # dropped: it could not fit, and the record says so
    [dlq] = dead
    assert dlq.headers["llm_worker.reason"] == b"invalid_json"
    assert int(dlq.headers["llm_worker.truncated"]) == 999_900
    assert 0 < len(dlq.value) < 999_900 and dlq.value == b"\xff" * len(dlq.value)


async def test_a_paused_partition_is_read_again_after_a_rebalance(
    make_settings: Callable[..., Settings],
) -> None:
    """librdkafka keeps an application's pause across unassign/assign: the bridge must clear it
    when partitions come back, or they are never read again."""
    s = make_settings()
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    producer = Producer({"bootstrap.servers": bs})
    for i in range(40):
        producer.produce(s.prompts_topic, f"{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    bridge = KafkaBridge[object](s)
    assigned: list[list[tuple[str, int]]] = []
    bridge.set_rebalance_hooks(assigned.append, lambda keys: {}, None)
    await bridge.start()
    try:
        deadline = time.monotonic() + 60
        while len(bridge.assignment) < 2 and time.monotonic() < deadline:
            await bridge.consume(1, 0.2)
        parts = sorted(bridge.assignment)
        await bridge.pause(parts)
        # a second member joins (everything is reassigned) and leaves (reassigned again)
        other = Consumer(
            {
                "bootstrap.servers": bs,
                "group.id": s.group_id,
                "session.timeout.ms": 6000,
                "partition.assignment.strategy": "range",
            }
        )
        other.subscribe([s.prompts_topic])
        rounds = len(assigned)
        while len(assigned) < rounds + 1 and time.monotonic() < deadline:
            await bridge.consume(1, 0.2)
            await asyncio.to_thread(other.consume, 1, 0.2)
        await asyncio.to_thread(other.close)
        while len(bridge.assignment) < 2 and time.monotonic() < deadline:
            await bridge.consume(1, 0.2)
        read_after = {0: 0, 1: 0}
        until = time.monotonic() + 15
        while min(read_after.values()) == 0 and time.monotonic() < until:
            for rec in (await bridge.consume(100, 0.2)).records:
                read_after[rec.partition] += 1
        assert min(read_after.values()) > 0, f"a partition stayed paused: {read_after}"
    finally:
        await bridge.close()


async def test_a_commit_from_an_earlier_assignment_is_not_applied(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings()
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    await asyncio.to_thread(kh.produce, bs, s.prompts_topic, [b"a", b"b", b"c"])
    bridge = KafkaBridge[object](s)
    bridge.set_rebalance_hooks(lambda keys: None, lambda keys: {}, None)
    await bridge.start()
    try:
        deadline = time.monotonic() + 60
        while not bridge.assignment and time.monotonic() < deadline:
            await bridge.consume(1, 0.2)
        key = (s.prompts_topic, 0)
        epoch = bridge.epoch(key)
        assert await bridge.commit({key: (2, epoch)}) == {key: 2}
        assert await bridge.commit({key: (1, epoch - 1)}) == {}  # computed in another epoch
        assert (await _committed(s, 1))[0] == 2
    finally:
        await bridge.close()
