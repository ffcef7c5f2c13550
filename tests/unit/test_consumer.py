"""Worker core with fakes: commit only after delivery, bounded in-flight with pause/resume."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from confluent_kafka import KafkaError

from llm_worker.worker.messages import Completion
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream.kafka_conf import consume_ready

from .stream_fakes import FakeBridge, FakePipeline, make_worker, run_until


async def test_commit_never_passes_an_unfinished_message() -> None:
    bridge = FakeBridge({0: 10})
    pipeline = FakePipeline()
    pipeline.hold[3] = asyncio.Event()  # offset 3 is slow; 0-2 and 4-9 finish first
    worker = make_worker(bridge, pipeline)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(bridge.produced) < 9:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # several commit intervals pass
        assert bridge.commits and max(c[("t", 0)] for c in bridge.commits) == 3
        pipeline.hold[3].set()
        async with asyncio.timeout(10):
            while not bridge.commits or bridge.commits[-1].get(("t", 0)) != 10:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task


async def test_failed_delivery_is_retried_and_offset_waits_for_it() -> None:
    bridge = FakeBridge({0: 3})
    bridge.fail_next_produce = 2
    worker = make_worker(bridge, FakePipeline())
    await run_until(worker, lambda: len(bridge.produced) == 3)
    assert worker.stats()["delivery_retries"] == 2
    assert bridge.commits[-1] == {("t", 0): 3}


async def test_a_failing_delivery_is_visible_until_it_works_again() -> None:
    """`llm_worker_delivery_failing` and `/readyz` (`delivery_failing`, `delivery_error`)
    say that outcomes are not reaching their topic, for as long as that lasts."""
    bridge = FakeBridge({0: 1})
    bridge.fail_next_produce = 4  # the first produce and three retries (0.1, 0.2, 0.4 s)
    worker = make_worker(bridge, FakePipeline())
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while not worker.stats()["delivery_failing"]:
                await asyncio.sleep(0.01)
        assert "Message timed out" in worker.stats()["delivery_error"]
        assert worker._metrics.registry.get_sample_value("llm_worker_delivery_failing") == 1
        async with asyncio.timeout(30):
            while len(bridge.produced) < 1:
                await asyncio.sleep(0.01)
        assert worker.stats()["delivery_failing"] == 0
        assert worker.stats()["delivery_error"] is None
    finally:
        worker.stop()
        await task


async def test_partitions_pause_at_the_bound_and_resume_until_everything_is_done() -> None:
    bridge = FakeBridge({0: 200, 1: 200})
    pipeline = FakePipeline(delay=0.002)
    worker = make_worker(bridge, pipeline, max_in_flight_per_partition=8, consume_batch=4)
    # done, and no partition left paused while the worker still runs
    await run_until(worker, lambda: len(bridge.produced) == 400 and not bridge.paused)
    assert bridge.pause_calls > 0 and bridge.resume_calls > 0
    # bounded: at most the bound plus one consume batch in flight per partition
    assert max(pipeline.peak.values()) <= 8 + 4
    # each commit names the partitions that moved: on a slow machine partition 0 can finish
    # (and be committed) before partition 1's last commit
    last = {tp: off for commit in bridge.commits for tp, off in commit.items()}
    assert last == {("t", 0): 200, ("t", 1): 200}


async def test_shutdown_waits_for_in_flight_work_then_commits() -> None:
    bridge = FakeBridge({0: 5})
    worker = make_worker(bridge, FakePipeline(delay=0.2))
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while worker.counters["consumed"] < 5:
            await asyncio.sleep(0.005)
    worker.stop()  # all five are mid-call
    await task
    assert len(bridge.produced) == 5
    assert bridge.commits[-1] == {("t", 0): 5}


async def test_shutdown_abandons_work_past_the_deadline_without_committing_it() -> None:
    bridge = FakeBridge({0: 3})
    pipeline = FakePipeline()
    pipeline.hold[1] = asyncio.Event()  # never released
    worker = make_worker(bridge, pipeline, shutdown_timeout_s=0.2)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while len(bridge.produced) < 2:
            await asyncio.sleep(0.005)
    worker.stop()
    await task
    assert max(c[("t", 0)] for c in bridge.commits) == 1  # offset 1 will be redelivered


async def test_a_full_worker_takes_nothing_more_until_work_ends() -> None:
    """Slow work (a provider, a rate limit) fills the worker: it stops taking records at the
    global bound, holds no more than that, and carries on when work drains."""
    bridge = FakeBridge({0: 30, 1: 30})
    pipeline = FakePipeline()
    release = asyncio.Event()
    for off in range(30):
        pipeline.hold[off] = release
    worker = make_worker(bridge, pipeline, max_in_flight=10, max_in_flight_per_partition=100)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.stats()["in_flight"] < 10:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        assert worker.stats()["in_flight"] == 10  # bounded: nothing more was taken
        assert worker.counters["consumed"] == 10
        release.set()
        async with asyncio.timeout(10):
            while len(bridge.produced) < 60:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task


class SyncPipeline:
    """Answers every record in `begin` (as a dedup window hit is): no provider call."""

    def __init__(self) -> None:
        self.finished = 0

    def begin(self, rec: InputRecord) -> Outcome:
        comp = Completion(id=f"{rec.partition}:{rec.offset}", model="m", status="ok")
        return Outcome(topic="out", value=comp.id.encode(), key=None, headers=None, completion=comp)

    async def finish(self, pending: Any) -> Outcome:  # pragma: no cover - never pending
        raise AssertionError("a synchronous answer has no second step")


async def test_answers_ready_at_once_take_no_task_and_commit_only_after_their_ack() -> None:
    bridge = FakeBridge({0: 5})
    bridge.hold_acks = True
    worker = make_worker(bridge, SyncPipeline())  # type: ignore[arg-type]
    created = 0
    original = worker.assignment.spawn

    def counting_spawn(key: Any, coro: Any) -> None:
        nonlocal created
        created += 1
        original(key, coro)

    worker.assignment.spawn = counting_spawn  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(bridge.produced) < 5:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # several commit intervals, no delivery report yet
        assert worker.stats()["in_flight"] == 5
        assert all(c.get(("t", 0), 0) == 0 for c in bridge.commits)
        bridge.hold_acks = False
        bridge.release_acks()
        async with asyncio.timeout(10):
            while not bridge.commits or bridge.commits[-1].get(("t", 0)) != 5:
                await asyncio.sleep(0.005)
        assert worker.stats()["completed"] == 5 and worker.stats()["in_flight"] == 0
        assert created == 0
    finally:
        worker.stop()
        await task


async def test_unacknowledged_answers_count_against_the_in_flight_bound() -> None:
    bridge = FakeBridge({0: 30, 1: 30})
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
        await asyncio.sleep(0.3)
        assert worker.counters["consumed"] == 10  # bounded: nothing more until acks come
        bridge.hold_acks = False
        bridge.release_acks()
        async with asyncio.timeout(10):
            while worker.stats()["completed"] < 60:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
    for part in (0, 1):
        assert max(c.get(("t", part), 0) for c in bridge.commits) == 30


async def test_shutdown_and_revoke_wait_for_delivery_reports_of_ready_answers() -> None:
    bridge = FakeBridge({0: 4, 1: 4})
    bridge.hold_acks = True
    worker = make_worker(
        bridge,
        SyncPipeline(),  # type: ignore[arg-type]
        shutdown_timeout_s=5.0,
        commit_interval_s=60.0,  # only the revoke and the shutdown commit
    )
    worker.assignment.on_assign([("t", 0), ("t", 1)])
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while len(bridge.produced) < 8:
            await asyncio.sleep(0.005)
    # a revoke settles partition 1: it waits for the reports, then says what to commit
    settle = asyncio.create_task(worker.assignment.settle([("t", 1)]))
    await asyncio.sleep(0.1)
    assert not settle.done()
    worker.stop()  # shutdown waits too
    await asyncio.sleep(0.1)
    assert not task.done()
    bridge.hold_acks = False
    bridge.release_acks()
    async with asyncio.timeout(10):
        assert await settle == {("t", 1): 4}
        await task
    assert bridge.commits[-1] == {("t", 0): 4}  # partition 1 was committed by its revoke


async def test_consume_returns_what_is_ready_without_waiting_for_a_full_batch() -> None:
    class Consumer:
        def __init__(self) -> None:
            self.queue = [object() for _ in range(3)]
            self.calls: list[tuple[int, float]] = []

        def consume(self, n: int, timeout: float) -> list[object]:
            self.calls.append((n, timeout))
            out, self.queue = self.queue[:n], self.queue[n:]
            return out

    c = Consumer()
    assert len(consume_ready(c, 500, 0.05)) == 3  # type: ignore[arg-type]
    assert c.calls == [(500, 0)]  # no wait for the other 497
    c.queue = []
    assert consume_ready(c, 500, 0.05) == []  # type: ignore[arg-type]
    assert c.calls[1:] == [(500, 0), (1, 0.05)]  # empty: wait for the first one only


async def test_an_answer_too_large_for_the_broker_becomes_an_output_too_large_error() -> None:
    bridge = FakeBridge({0: 1})
    bridge.fail_next_produce = 1
    bridge.fail_code = KafkaError.MSG_SIZE_TOO_LARGE
    worker = make_worker(bridge, SyncPipeline())  # type: ignore[arg-type]
    await run_until(worker, lambda: len(bridge.produced) == 1)
    sent = msgspec.json.decode(bridge.produced[0])
    assert sent["id"] == "0:0" and sent["status"] == "error"
    assert sent["error"]["type"] == "output_too_large"
    assert worker.stats()["delivery_retries"] == 1
    assert bridge.commits[-1] == {("t", 0): 1}
