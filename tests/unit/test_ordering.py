"""`LLM_WORKER_ORDERING`: key mode runs one record of a key at a time and produces its outcomes
in offset order; partition mode keeps the calls concurrent and produces in offset order per
partition; `none` produces as the calls finish (the control that shows the others matter)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from llm_worker.worker.records import InputRecord, Outcome

from .stream_fakes import FakeBridge, make_worker, run_until


class KeyedPipeline:
    """Each record's call takes a random time (seeded); records which calls of one key ran at
    the same time and the most calls running at once."""

    def __init__(self, seed: int = 7, max_delay: float = 0.02) -> None:
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.running: dict[bytes | None, int] = defaultdict(int)
        self.overlaps: list[tuple[bytes | None, int]] = []
        self.now = 0
        self.peak = 0
        self.hold: dict[tuple[int, int], asyncio.Event] = {}
        self.calls: list[tuple[int, int]] = []

    def begin(self, rec: InputRecord) -> InputRecord:
        return rec

    async def finish(self, rec: InputRecord) -> Outcome:
        key = rec.key
        self.calls.append((rec.partition, rec.offset))
        self.running[key] += 1
        self.now += 1
        self.peak = max(self.peak, self.now)
        if key is not None and self.running[key] > 1:
            self.overlaps.append((key, rec.offset))
        try:
            ev = self.hold.get((rec.partition, rec.offset))
            if ev is not None:
                await ev.wait()
            await asyncio.sleep(self.rng.uniform(0, self.max_delay))
        finally:
            self.running[key] -= 1
            self.now -= 1
        value = f"{rec.partition}:{rec.offset}:{(key or b'-').decode()}".encode()
        return Outcome(topic="out", value=value, key=rec.key, headers=None)


def _backlog(bridge: FakeBridge, parts: dict[int, int], keys: int | None) -> None:
    for p, n in parts.items():
        for o in range(n):
            # a key lives in one partition, as Kafka's partitioner places it
            key = None if keys is None else f"k{(o * 7) % keys}".encode() + bytes([65 + p])
            bridge.records[(p, o)] = (b"{}", key)


def _produced(bridge: FakeBridge) -> list[tuple[int, int, str]]:
    out = []
    for value in bridge.produced:
        p, o, k = value.decode().split(":")
        out.append((int(p), int(o), k))
    return out


def _in_order_per(rows: list[tuple[int, int, str]], by_key: bool) -> bool:
    last: dict[tuple[int, str], int] = {}
    for p, o, k in rows:
        lane = (p, k if by_key else "")
        if last.get(lane, -1) > o:
            return False
        last[lane] = o
    return True


def _worker(bridge: FakeBridge, pipe: KeyedPipeline, ordering: str):  # type: ignore[no-untyped-def]
    return make_worker(
        bridge, pipe, ordering=ordering, max_in_flight=200, max_in_flight_per_partition=100
    )


async def test_key_mode_runs_one_record_of_a_key_at_a_time_in_offset_order() -> None:
    bridge = FakeBridge({0: 60, 1: 60})
    _backlog(bridge, {0: 60, 1: 60}, keys=6)
    pipe = KeyedPipeline()
    worker = _worker(bridge, pipe, "key")
    await run_until(worker, lambda: len(bridge.produced) == 120)
    rows = _produced(bridge)
    assert pipe.overlaps == []  # no two calls of one key at once
    assert _in_order_per(rows, by_key=True)
    assert pipe.peak > 3  # different keys still ran side by side
    assert worker.assignment.lanes is not None and len(worker.assignment.lanes) == 0


async def test_without_ordering_the_same_records_overlap_and_finish_out_of_order() -> None:
    """The control: the same backlog and random delays, ordering `none`."""
    bridge = FakeBridge({0: 60, 1: 60})
    _backlog(bridge, {0: 60, 1: 60}, keys=6)
    pipe = KeyedPipeline()
    await run_until(_worker(bridge, pipe, "none"), lambda: len(bridge.produced) == 120)
    assert pipe.overlaps
    assert not _in_order_per(_produced(bridge), by_key=True)


async def test_records_without_a_key_are_not_ordered_in_key_mode() -> None:
    bridge = FakeBridge({0: 40})
    _backlog(bridge, {0: 40}, keys=None)
    pipe = KeyedPipeline()
    await run_until(_worker(bridge, pipe, "key"), lambda: len(bridge.produced) == 40)
    assert pipe.peak > 10
    assert not _in_order_per(_produced(bridge), by_key=False)


async def test_partition_mode_keeps_calls_concurrent_and_produces_in_offset_order() -> None:
    bridge = FakeBridge({0: 60, 1: 60})
    _backlog(bridge, {0: 60, 1: 60}, keys=3)
    pipe = KeyedPipeline()
    worker = _worker(bridge, pipe, "partition")
    await run_until(worker, lambda: len(bridge.produced) == 120)
    rows = _produced(bridge)
    assert [o for p, o, _ in rows if p == 0] == list(range(60))
    assert [o for p, o, _ in rows if p == 1] == list(range(60))
    assert pipe.overlaps and pipe.peak > 10  # the calls did not wait for each other
    assert worker.assignment.outbox.waiting == 0


async def test_a_held_key_does_not_stall_the_other_keys() -> None:
    bridge = FakeBridge({0: 30})
    _backlog(bridge, {0: 30}, keys=3)  # offset o has key k(o*7 % 3): offset 0 is k0
    pipe = KeyedPipeline(max_delay=0.002)
    release = pipe.hold[(0, 0)] = asyncio.Event()
    worker = _worker(bridge, pipe, "key")
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while len(bridge.produced) < 20:  # every k1 and k2 record
                await asyncio.sleep(0.005)
            assert {k for _, _, k in _produced(bridge)} == {"k1A", "k2A"}
            assert (0, 3) not in pipe.calls  # k0's next record did not start
            release.set()
            while len(bridge.produced) < 30:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
    k0 = [o for _, o, k in _produced(bridge) if k == "k0A"]
    assert k0 == sorted(k0) and len(k0) == 10


async def test_key_mode_keeps_the_order_through_a_redelivered_outcome() -> None:
    """The first outcome of a key fails delivery and is produced again after a backoff: the
    next record of the key starts only after it was acknowledged."""
    bridge = FakeBridge({0: 4})
    for o in range(4):
        bridge.records[(0, o)] = (b"{}", b"same")
    bridge.fail_next_produce = 1
    pipe = KeyedPipeline(max_delay=0.0)
    await run_until(_worker(bridge, pipe, "key"), lambda: len(bridge.produced) == 4)
    assert [o for _, o, _ in _produced(bridge)] == [0, 1, 2, 3]
    assert pipe.overlaps == []


@pytest.mark.parametrize("kind", ["revoke", "lost"])
async def test_a_partition_released_with_waiting_records_forgets_their_turns(kind: str) -> None:
    bridge = FakeBridge({0: 10})
    for o in range(10):
        bridge.records[(0, o)] = (b"{}", b"one-key")
    pipe = KeyedPipeline(max_delay=0.0)
    pipe.hold[(0, 2)] = asyncio.Event()  # never released: records 3.. wait behind it
    worker = _worker(bridge, pipe, "key")
    lanes = worker.assignment.lanes
    assert lanes is not None
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while lanes.waiting < 7:
                await asyncio.sleep(0.005)
            bridge.rebalance(kind, [0])
            while ("t", 0) in bridge.assignment or worker.assignment.tasks:
                await asyncio.sleep(0.005)
            assert len(lanes) == 0 and lanes.waiting == 0
            bridge.next[0] = 2  # assigned again: read from the committed offset
            bridge.rebalance("assign", [0])
            del pipe.hold[(0, 2)]
            while len(bridge.produced) < 10:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
    assert [o for _, o, _ in _produced(bridge)] == list(range(10))


async def test_records_waiting_for_their_key_do_not_use_up_the_partitions_bound() -> None:
    """Ten records of one key, then three of others, with a bound of 4 in flight per partition:
    the waiting records of the first key do not fill the bound, so the others run while the
    first key's first call is held."""
    bridge = FakeBridge({0: 13})
    for o in range(13):
        bridge.records[(0, o)] = (b"{}", b"hot" if o < 10 else f"k{o}".encode())
    pipe = KeyedPipeline(max_delay=0.0)
    release = pipe.hold[(0, 0)] = asyncio.Event()
    worker = make_worker(
        bridge, pipe, ordering="key", max_in_flight_per_partition=4, consume_batch=1
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while len(bridge.produced) < 3:  # k10, k11, k12
                await asyncio.sleep(0.005)
            assert {k for _, _, k in _produced(bridge)} == {"k10", "k11", "k12"}
            release.set()
            while len(bridge.produced) < 13:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
    assert [o for _, o, k in _produced(bridge) if k == "hot"] == list(range(10))
