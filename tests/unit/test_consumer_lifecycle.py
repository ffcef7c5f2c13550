"""The consume loop's life: a stop that comes before `run()`, and a consume loop that fails
(the error is raised after the work in flight is finished, delivered and committed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from .stream_fakes import FakeBridge, FakeMsg, FakePipeline, make_worker


def stuck_pipeline(records: int) -> FakePipeline:
    """A pipeline whose first `records` offsets never finish (until released by hand)."""
    pipeline = FakePipeline()
    for o in range(records):
        pipeline.hold[o] = asyncio.Event()
    return pipeline


async def test_a_stop_before_run_begins_takes_nothing_and_run_returns() -> None:
    """A SIGTERM between building the worker and running it."""
    bridge = FakeBridge({0: 10})
    worker = make_worker(bridge, FakePipeline())
    worker.stop()
    await asyncio.wait_for(worker.run(), 10)
    assert worker.stats()["consumed"] == 0
    assert bridge.next[0] == 0 and bridge.produced == []


class FailingBridge(FakeBridge):
    """The consumer fails once every record was taken."""

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        if self.next[0] == self.end[0]:
            raise RuntimeError("consumer closed")
        return await super().fetch(n, timeout)


async def test_a_failing_consume_loop_finishes_its_work_commits_it_and_raises() -> None:
    bridge = FailingBridge({0: 8})
    worker = make_worker(
        bridge, FakePipeline(delay=0.2), commit_interval_s=3600.0, shutdown_timeout_s=30.0
    )
    with pytest.raises(RuntimeError, match="consumer closed"):
        await asyncio.wait_for(worker.run(), 20)
    # the eight were running when the loop failed: finished, delivered and committed
    assert sorted(bridge.produced) == sorted(f"0:{o}".encode() for o in range(8))
    assert bridge.commits[-1] == {("t", 0): 8}


async def test_the_revoke_when_the_consumer_closes_after_run_neither_waits_nor_commits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`run()` settled and committed everything; the revoke that closing the consumer fires
    returns at once, without a round trip to the loop: even a close made on the loop's own
    thread (which a settle on the loop would block until the hook timed out) is not held."""
    bridge = FakeBridge({0: 8})
    worker = make_worker(bridge, FakePipeline(), commit_interval_s=3600.0, shutdown_timeout_s=0.1)
    task = asyncio.create_task(worker.run())
    while len(bridge.produced) < 8:
        await asyncio.sleep(0.005)
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert bridge.commits[-1] == {("t", 0): 8}
    commits = len(bridge.commits)
    with caplog.at_level("INFO", logger="llm_worker"):
        assert worker.assignment.on_revoke([("t", 0)]) == {}  # on the loop's thread
    assert len(bridge.commits) == commits
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


class RoundRobinBridge(FakeBridge):
    """Serves the partitions in turn, one record each, as a broker's fetches interleave."""

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        out: list[FakeMsg] = []
        for p in sorted(self.next):
            if (
                len(out) < n
                and ("t", p) not in self.paused
                and ("t", p) in self.assignment
                and self.next[p] < self.end[p]
            ):
                out.append(FakeMsg("t", p, self.next[p], b"{}", None))
                self.next[p] += 1
        if not out:
            await asyncio.sleep(timeout)
        return out


async def test_the_automatic_per_partition_bound_shares_the_limit_between_partitions() -> None:
    """`max_in_flight_per_partition` 0: each partition may hold twice its share of
    `max_in_flight` (here 256 over 4 partitions: 128), so one busy partition cannot take it
    all: it is paused at 128 while the worker has room for 98 more."""
    bridge = RoundRobinBridge({0: 1000, 1: 10, 2: 10, 3: 10})
    pipeline = stuck_pipeline(1000)
    worker = make_worker(
        bridge, pipeline, max_in_flight=256, max_in_flight_per_partition=0, consume_batch=16
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while ("t", 0) not in bridge.paused:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # it stays paused: nothing more is taken
        assert worker.in_flight == 128 + 30
    finally:
        worker.stop(deadline_s=0.0)
        await task
    assert pipeline.peak[0] == 128


class LoggingBridge(FakeBridge):
    def __init__(self, backlog: dict[int, int]) -> None:
        super().__init__(backlog)
        self.events: list[object] = []

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        out = await super().fetch(n, timeout)
        self.events += [m.offset() for m in out]
        return out

    async def pause(self, parts: list[tuple[str, int]]) -> None:
        self.events.append(("pause", sorted(parts)))
        await super().pause(parts)


async def test_a_worker_with_room_for_one_more_takes_it_before_holding_anything() -> None:
    bridge = LoggingBridge({0: 10, 1: 0})  # partition 1: assigned, nothing read from it yet
    pipeline = stuck_pipeline(10)
    worker = make_worker(bridge, pipeline, max_in_flight=4, consume_batch=1)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while not bridge.paused:  # full for HOLD_AFTER_S: holds
                await asyncio.sleep(0.005)
    finally:
        worker.stop(deadline_s=0.0)
        await task
    # the fourth was taken while there was room for it; then every assigned partition is held,
    # the one not read from yet too (its fetched records would wait in memory)
    assert bridge.events[:5] == [0, 1, 2, 3, ("pause", [("t", 0), ("t", 1)])]


async def test_a_partition_assigned_while_the_worker_is_full_gives_one_record_then_is_held() -> (
    None
):
    bridge = LoggingBridge({0: 10, 1: 10})
    bridge.assignment = frozenset({("t", 0)})  # partition 1 comes while the worker is full
    pipeline = stuck_pipeline(10)
    worker = make_worker(bridge, pipeline, max_in_flight=4, consume_batch=4)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while ("t", 0) not in bridge.paused:
                await asyncio.sleep(0.005)
            bridge.rebalance("assign", [1])
            while ("t", 1) not in bridge.paused:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert worker.in_flight == 5  # the full worker's poll takes at most one
    finally:
        worker.stop(deadline_s=0.0)
        await task


class ResumeLoggingBridge(LoggingBridge):
    def __init__(self, backlog: dict[int, int]) -> None:
        super().__init__(backlog)
        self.worker_in_flight: Callable[[], int] = lambda: -1

    async def resume(self, parts: list[tuple[str, int]]) -> None:
        self.events.append(("resume", self.worker_in_flight()))
        await super().resume(parts)


async def test_held_partitions_are_resumed_once_the_worker_is_three_quarters_full() -> None:
    """A full worker holds its partitions; they stay held while it is more than 3/4 full
    (a resume refetches: not worth it for one or two free slots) and are resumed at 3/4."""
    bridge = ResumeLoggingBridge({0: 20})
    pipeline = stuck_pipeline(20)
    worker = make_worker(
        bridge, pipeline, max_in_flight=8, max_in_flight_per_partition=100, consume_batch=8
    )
    bridge.worker_in_flight = lambda: worker.in_flight
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while not bridge.paused:
                await asyncio.sleep(0.005)
            for o in range(8):  # finish one at a time until the partition is resumed
                pipeline.hold[o].set()
                while worker.in_flight > 7 - o:
                    await asyncio.sleep(0.005)
                calls = bridge.consume_calls  # a whole pass of the loop at this level:
                while bridge.consume_calls < calls + 2:
                    await asyncio.sleep(0.005)
                resumes = [e for e in bridge.events if isinstance(e, tuple) and e[0] == "resume"]
                if resumes:
                    break
    finally:
        worker.stop(deadline_s=0.0)
        await task
    assert resumes[:1] == [("resume", 6)]


async def _limit_after(records: dict[tuple[int, int], tuple[bytes, bytes | None]]) -> int:
    bridge = FakeBridge({0: len(records)})
    bridge.records = records
    worker = make_worker(
        bridge,
        FakePipeline(),
        max_in_flight=1000,
        max_in_flight_per_partition=1000,
        max_in_flight_bytes=1_000_000,
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.stats()["consumed"] < len(records):
                await asyncio.sleep(0.005)
            calls = bridge.consume_calls
            while bridge.consume_calls < calls + 2:
                await asyncio.sleep(0.005)
        return int(worker.stats()["in_flight_limit"])
    finally:
        worker.stop()
        await task


async def test_a_records_key_counts_toward_the_in_flight_bytes_budget_like_its_value() -> None:
    big = b"k" * 10_000
    keyed = await _limit_after({(0, o): (b"{}", big) for o in range(300)})
    valued = await _limit_after({(0, o): (big, b"{}") for o in range(300)})
    assert keyed == valued < 1000  # the budget, not max_in_flight, bounds both


async def test_finished_tasks_are_not_kept_while_the_partition_stays_assigned() -> None:
    """Memory stays bounded on a long-lived assignment: a task's done callback drops it from
    its partition's set (a revoke waits only for the running ones)."""
    bridge = FakeBridge({0: 300, 1: 300})
    worker = make_worker(bridge, FakePipeline())
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(bridge.produced) < 600 or worker.in_flight:
                await asyncio.sleep(0.005)
        kept = worker.assignment.partition_tasks()
    finally:
        worker.stop()
        await task
    assert kept == {("t", 0): 0, ("t", 1): 0}


async def test_a_task_that_fails_is_logged_with_its_exception_and_a_cancelled_one_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The last resort for a bug: `_handle` and the outbox catch their errors, so a task
    given to `_spawn` (as the outbox gives its redeliveries) fails only by a bug; that is
    logged with its traceback. Tasks cancelled at the stop deadline are not errors."""
    bridge = FakeBridge({0: 6})
    pipeline = FakePipeline()
    pipeline.hold[5] = asyncio.Event()  # still running at the stop: cancelled
    worker = make_worker(bridge, pipeline, shutdown_timeout_s=0.2)

    async def bug() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level("INFO", logger="llm_worker"):
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            while len(bridge.produced) < 5:
                await asyncio.sleep(0.005)
        worker.assignment.spawn(("t", 0), bug())
        await asyncio.sleep(0.05)
        worker.stop()
        await task
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in failed] == ["message task failed"]
    assert failed[0].exc_info is not None and str(failed[0].exc_info[1]) == "a bug"
    assert worker.stats()["consumed"] == 6 and len(bridge.produced) == 5
