"""The consume loop's wiring, unit-tested: what `Worker` reports before it runs, the paused
partitions gauge, the outcome recorder and in-flight bytes budget it is given, and a full
worker woken by a delivery report (not by a timeout)."""

from __future__ import annotations

import asyncio

import pytest

from worker.ops.metrics import Metrics
from worker.ops.outcomes import OutcomeRecorder
from worker.stream import consumer

from .stream_fakes import FakeBridge, FakePipeline, make_worker, run_until
from .test_consumer import SyncPipeline


def test_stats_before_the_first_record_show_the_configured_limit_and_nothing_held() -> None:
    worker = make_worker(FakeBridge({0: 1}), FakePipeline(), max_in_flight=17)
    stats = worker.stats()
    assert stats["in_flight_limit"] == 17
    assert stats["held"] == 0 and stats["in_flight"] == 0
    assert stats["paused_partitions"] == 0


async def test_the_paused_partitions_gauge_follows_pauses_and_resumes() -> None:
    bridge = FakeBridge({0: 40, 1: 40})
    pipeline = FakePipeline()
    release = asyncio.Event()
    for off in range(40):
        pipeline.hold[off] = release
    worker = make_worker(bridge, pipeline, max_in_flight=64, max_in_flight_per_partition=4)

    def gauge() -> float | None:
        return worker._metrics.registry.get_sample_value("llm_worker_paused_partitions")

    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(bridge.paused) < 2:
                await asyncio.sleep(0.005)
        assert gauge() == 2  # both partitions at their bound
        release.set()
        async with asyncio.timeout(10):
            while len(bridge.produced) < 80 or bridge.paused:
                await asyncio.sleep(0.005)
        assert gauge() == 0
    finally:
        worker.stop()
        await task


async def test_the_outcome_recorder_given_counts_what_is_delivered() -> None:
    bridge = FakeBridge({0: 3})
    recorder = OutcomeRecorder(Metrics())
    worker = make_worker(bridge, SyncPipeline(), recorder=recorder)  # type: ignore[arg-type]
    await run_until(worker, lambda: recorder.counters["completed"] == 3)
    assert worker.stats()["completed"] == 3


async def test_without_a_bytes_budget_the_worker_fills_up_to_max_in_flight() -> None:
    bridge = FakeBridge({0: 100})
    pipeline = FakePipeline()
    release = asyncio.Event()
    for off in range(100):
        pipeline.hold[off] = release
    worker = make_worker(bridge, pipeline, max_in_flight=50, max_in_flight_per_partition=100)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.stats()["in_flight"] < 50:
                await asyncio.sleep(0.005)
        assert worker.stats()["in_flight_limit"] == 50
        release.set()
    finally:
        worker.stop()
        await task


async def test_a_full_worker_takes_more_as_soon_as_a_delivery_report_frees_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answered records wait only for their delivery reports: a report wakes the loop, which
    takes the next records at once (here the hold timeout is an hour: only the wake-up can)."""
    monkeypatch.setattr(consumer, "HOLD_AFTER_S", 3600.0)
    bridge = FakeBridge({0: 20})
    bridge.hold_acks = True
    worker = make_worker(
        bridge,
        SyncPipeline(),  # type: ignore[arg-type]
        max_in_flight=10,
        max_in_flight_per_partition=100,
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.counters["consumed"] < 10:
                await asyncio.sleep(0.005)
        bridge.hold_acks = False
        bridge.release_acks()
        async with asyncio.timeout(10):
            while worker.stats()["completed"] < 20:
                await asyncio.sleep(0.005)
        assert bridge.pause_calls == 0  # never held: woken, not timed out
    finally:
        worker.stop()
        await task


async def _stopped_with(deadlines: list[float | None], caplog: pytest.LogCaptureFixture) -> int:
    """Run a worker whose offset 1 never finishes, stop it with `deadlines` in turn (the
    shutdown timeout is a minute) and return the highest offset it committed."""
    bridge = FakeBridge({0: 3})
    pipeline = FakePipeline()
    pipeline.hold[1] = asyncio.Event()  # never released
    worker = make_worker(bridge, pipeline, shutdown_timeout_s=60.0)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while len(bridge.produced) < 2:
            await asyncio.sleep(0.005)
    with caplog.at_level("INFO", logger="llm_worker"):
        for deadline in deadlines:
            worker.stop(deadline_s=deadline)
        async with asyncio.timeout(10):  # far below the minute: the deadline given is kept
            await task
    return max(c[("t", 0)] for c in bridge.commits)


async def test_stop_with_a_deadline_abandons_work_at_that_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert await _stopped_with([0.1], caplog) == 1  # offset 1 will be redelivered
    said = [r.getMessage() for r in caplog.records if r.name == "llm_worker"]
    assert said.count("stop requested: no new records will be taken (deadline 0.1 s)") == 1


async def test_a_second_stop_shortens_the_deadline_but_never_extends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert await _stopped_with([None, 0.1], caplog) == 1
    assert await _stopped_with([0.1, 30.0], caplog) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "llm_worker"]
    assert said.count("stop requested: no new records will be taken (deadline 60.0 s)") == 1
    assert not any("30.0" in m for m in said)  # a later stop is not announced again
