"""Flow control (`worker.stream.flow`): which partitions the consume loop pauses and resumes,
holding every partition while the worker is full, waiting for room, and how many messages may
be in flight (adaptive target, cap, memory budget, the automatic per-partition bound)."""

from __future__ import annotations

import asyncio

import pytest

from llm_worker.worker.stream.flow import MIN_PER_PARTITION, FlowControl, InFlightLimits, Room

A, B, C = ("t", 0), ("t", 1), ("t", 2)


class Consumer:
    """Records what the flow control asked of the consumer, and the paused-partitions gauge."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []
        self.gauge: list[int] = []

    async def pause(self, keys: list[tuple[str, int]]) -> None:
        self.calls.append(("pause", sorted(keys)))

    async def resume(self, keys: list[tuple[str, int]]) -> None:
        self.calls.append(("resume", sorted(keys)))

    def flow(self, per: int = 10) -> FlowControl:
        return FlowControl(
            pause=self.pause, resume=self.resume, max_per_partition=per, on_change=self.gauge.append
        )


async def test_a_partition_pauses_at_the_bound_once_and_resumes_at_half() -> None:
    c = Consumer()
    flow = c.flow(per=10)
    counts = {A: 9, B: 10, C: 11}
    await flow.apply([A, B, C], lambda t, p: counts[(t, p)], crowded=False)
    assert c.calls == [("pause", [B, C])]
    assert c.gauge == [2]
    await flow.apply([A, B, C], lambda t, p: counts[(t, p)], crowded=False)
    assert c.calls == [("pause", [B, C])]  # paused already: not again, no gauge update
    assert c.gauge == [2]
    counts.update({B: 6, C: 5})  # half of 10 is 5
    await flow.apply([A, B, C], lambda t, p: counts[(t, p)], crowded=False)
    assert c.calls[1:] == [("resume", [C])]
    assert flow.paused == {B} and c.gauge == [2, 1]


async def test_pausing_and_resuming_in_one_pass() -> None:
    c = Consumer()
    flow = c.flow(per=4)
    counts = {A: 4, B: 0}
    await flow.apply([A, B], lambda t, p: counts[(t, p)], crowded=False)
    counts.update({A: 2, B: 4})
    await flow.apply([A, B], lambda t, p: counts[(t, p)], crowded=False)
    assert c.calls == [("pause", [A]), ("pause", [B]), ("resume", [A])]
    assert flow.paused == {B} and c.gauge == [1, 1]


async def test_without_a_gauge_flow_control_still_works() -> None:
    c = Consumer()
    flow = FlowControl(pause=c.pause, resume=c.resume, max_per_partition=2)
    await flow.apply([A], lambda t, p: 2, crowded=False)
    await flow.hold_all([B])
    flow.forget([A, B])
    assert c.calls == [("pause", [A]), ("pause", [B])] and flow.paused == set()


async def test_held_partitions_stay_paused_while_the_worker_is_crowded() -> None:
    c = Consumer()
    flow = c.flow(per=10)
    await flow.apply([A, B], lambda t, p: 10 if (t, p) == A else 0, crowded=False)
    await flow.hold_all([A, B, C])  # A is paused already
    assert c.calls == [("pause", [A]), ("pause", [B, C])]
    assert flow.held == {B, C} and flow.paused == {A, B, C} and c.gauge == [1, 3]
    await flow.apply([A, B, C], lambda t, p: 0, crowded=True)
    assert c.calls[2:] == [("resume", [A])]  # paused for its own count: resumed
    assert flow.paused == {B, C}
    await flow.apply([A, B, C], lambda t, p: 0, crowded=False)  # room again
    assert c.calls[3:] == [("resume", [B, C])]
    assert flow.paused == set() and flow.held == set() and c.gauge == [1, 3, 2, 0]


async def test_holding_when_everything_is_paused_already_does_nothing() -> None:
    c = Consumer()
    flow = c.flow(per=1)
    await flow.apply([A], lambda t, p: 1, crowded=False)
    await flow.hold_all([A])
    assert c.calls == [("pause", [A])] and c.gauge == [1] and flow.held == set()


async def test_lost_partitions_are_forgotten() -> None:
    c = Consumer()
    flow = c.flow(per=1)
    await flow.apply([A], lambda t, p: 1, crowded=False)
    await flow.hold_all([A, B, C])
    flow.forget([A, B])
    assert flow.paused == {C} and flow.held == {C} and c.gauge[-1] == 1


# -- room in a full worker -----------------------------------------------------------------------
async def test_room_is_there_at_once_below_the_limit() -> None:
    room = Room(lambda: 8, lambda: 7)
    assert await room.within(0)


async def test_room_comes_when_work_drops_to_three_quarters() -> None:
    n = [8]
    room = Room(lambda: 8, lambda: n[0])
    waiter = asyncio.create_task(room.within(30))
    await asyncio.sleep(0)
    n[0] = 7
    room.wake()  # 7 > 6: not yet (room for a batch, not one record)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    n[0] = 6
    room.wake()
    for _ in range(5):  # a few turns of the loop, not the 30 s timeout
        await asyncio.sleep(0)
    assert waiter.done() and waiter.result()


async def test_waiting_for_room_ends_at_the_timeout_and_says_whether_there_is_some() -> None:
    n = [8]
    room = Room(lambda: 8, lambda: n[0])
    assert not await room.within(0.01)
    waiter = asyncio.create_task(room.within(0.05))
    await asyncio.sleep(0)
    n[0] = 7  # work ended without a wake()
    assert await waiter


async def test_stopping_opens_every_waiter() -> None:
    room = Room(lambda: 8, lambda: 8)
    waiters = [asyncio.create_task(room.within(30)) for _ in range(2)]
    await asyncio.sleep(0)
    room.open()
    for _ in range(5):  # a few turns of the loop, not the 30 s timeout
        await asyncio.sleep(0)
    assert [w.done() and w.result() for w in waiters] == [False, False]
    assert all(w.done() for w in waiters)


# -- how many messages may be in flight ----------------------------------------------------------
def _flow() -> FlowControl:
    return Consumer().flow(per=999)


def test_the_adaptive_target_within_the_cap() -> None:
    target = [50]
    limits = InFlightLimits(cap=100, target=lambda: target[0], per_partition=7, bytes_budget=0)
    flow = _flow()
    assert limits.now(4, flow) == 50
    target[0] = 150
    assert limits.now(4, flow) == 100
    assert flow.per == 999  # a configured per-partition bound is left alone


def test_the_memory_budget_bounds_it_by_the_average_record_size() -> None:
    limits = InFlightLimits(
        cap=10_000, target=lambda: 10_000, per_partition=7, bytes_budget=1 << 20
    )
    assert limits.now(1, _flow()) == 1024  # 1 MiB of 1 KiB records, the first guess
    for _ in range(500):
        limits.seen(8 * 1024)  # each moves the average 1 % of the way
    assert limits.avg_bytes == pytest.approx(8 * 1024 - 7 * 1024 * 0.99**500)
    assert limits.now(1, _flow()) == int((1 << 20) / limits.avg_bytes) == 128
    for _ in range(2000):
        limits.seen(10 << 20)  # huge records: still at least MIN_PER_PARTITION
    assert limits.now(1, _flow()) == MIN_PER_PARTITION


@pytest.mark.parametrize(
    ("limit", "owned", "per"),
    [(1000, 4, 500), (1000, 3, 667), (1000, 0, 2000), (1000, 1, 2000), (40, 4, MIN_PER_PARTITION)],
)
def test_the_automatic_per_partition_bound_is_twice_a_fair_share(
    limit: int, owned: int, per: int
) -> None:
    limits = InFlightLimits(cap=limit, target=lambda: 10**9, per_partition=0, bytes_budget=0)
    flow = _flow()
    assert limits.now(owned, flow) == limit
    assert flow.per == per


async def test_room_comes_when_the_limit_grows_though_no_work_ends() -> None:
    """An endpoint's limit doubles before its first answer (nothing ends for seconds): the
    wait sees the new limit within `RECHECK_S`, not at its timeout."""
    limit = [8]
    room = Room(lambda: 8, lambda: 8, refresh=lambda: limit[0])
    waiter = asyncio.create_task(room.within(30))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    limit[0] = 16
    assert await asyncio.wait_for(waiter, 1)
