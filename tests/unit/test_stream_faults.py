"""Faults that must not stop the stream (issue 8): poison records too large to produce, a
worker that is full, lost partitions, fatal client errors, rebalances that race commits, and a
shutdown whose delivery reports never come."""

from __future__ import annotations

import asyncio
import itertools
import time

import msgspec

from llm_worker.worker.messages import Completion
from llm_worker.worker.records import InputRecord, Outcome

from .stream_fakes import FakeBridge, FakePipeline, make_worker, run_until

_completion = msgspec.json.Decoder(Completion)


class ErrorPipeline(FakePipeline):
    """Answers every record at once with an error completion that keeps the record's key, as
    the real pipeline does for invalid input."""

    def begin(self, rec: InputRecord) -> Outcome:  # type: ignore[override]
        comp = Completion(id=f"{rec.partition}:{rec.offset}", model="m", status="error")
        return Outcome(
            topic="out",
            value=msgspec.json.encode(comp),
            key=rec.key,
            headers=[("traceparent", b"00-abc")],
            completion=comp,
        )


class DeadLetterPipeline(FakePipeline):
    """Dead-letters every record with its original value, key and headers."""

    def begin(self, rec: InputRecord) -> Outcome:  # type: ignore[override]
        return Outcome(
            topic="dlq",
            value=rec.value or b"",
            key=rec.key,
            headers=[("llm_worker.reason", b"invalid_json"), ("llm_worker.source", b"t/0/0")],
            dlq_reason="invalid_json",
        )


async def _heartbeat(ticks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


async def test_an_outcome_too_large_because_of_its_key_neither_freezes_nor_blocks() -> None:
    """A prompt with a ~1 MB Kafka key: its error completion keeps the key and is refused at
    once. It must be replaced by a record without the key, the loop must keep ticking, and the
    partition must move on."""
    bridge = FakeBridge({0: 3})
    bridge.records[(0, 1)] = (b"{}", b"k" * 999_850)
    worker = make_worker(bridge, ErrorPipeline())
    ticks: list[float] = []
    stop = asyncio.Event()
    beat = asyncio.create_task(_heartbeat(ticks, stop))
    try:
        await run_until(
            worker, lambda: bool(bridge.commits) and bridge.commits[-1] == {("t", 0): 3}
        )
    finally:
        stop.set()
        await beat
    assert len(bridge.produced) == 3
    by_id = {_completion.decode(v).id: (v, k) for _t, v, k, _h in bridge.sent}
    value, key = by_id["0:1"]
    comp = _completion.decode(value)
    assert comp.error is not None
    assert comp.error.type == "output_too_large" and "key (999850 bytes) was dropped" in (
        comp.error.message
    )
    assert key is None
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 1.0  # never frozen
    assert worker.stats()["shrunk"] == 1


async def test_a_dead_letter_too_large_for_the_dlq_is_truncated_not_retried_forever() -> None:
    bridge = FakeBridge({0: 2})
    bridge.records[(0, 0)] = (b"x" * 999_990, b"key-0")
    worker = make_worker(bridge, DeadLetterPipeline())
    await run_until(worker, lambda: bool(bridge.commits) and bridge.commits[-1] == {("t", 0): 2})
    [(_topic, value, key, headers)] = [r for r in bridge.sent if r[1].startswith(b"x")]
    hdrs = dict(headers)
    assert 0 < len(value) < 999_990 and value == b"x" * len(value)
    assert hdrs["llm_worker.truncated"] == b"999990"
    assert hdrs["llm_worker.reason"] == b"invalid_json"  # why it was dead-lettered is kept
    assert key == b"key-0"


async def test_a_small_producer_limit_still_gets_a_record_that_fits() -> None:
    bridge = FakeBridge({0: 1})
    bridge.max_message_bytes = 4_000
    bridge.records[(0, 0)] = (b"y" * 50_000, b"z" * 3_000)
    worker = make_worker(bridge, DeadLetterPipeline())
    await run_until(worker, lambda: bool(bridge.commits) and bridge.commits[-1] == {("t", 0): 1})
    _topic, value, key, headers = bridge.sent[0]
    assert key is None and 0 < len(value) < 4_000
    assert dict(headers)["llm_worker.key_dropped"] == b"3000"


async def test_a_full_worker_keeps_polling_and_holds_its_partitions() -> None:
    """Full of work whose delivery reports do not come (an output topic with no leader): the
    worker must keep calling consume (rebalances, the poll interval) with every partition
    paused, and take no more than one record past its bound."""
    bridge = FakeBridge({0: 100, 1: 100})
    bridge.hold_acks = True
    worker = make_worker(bridge, FakePipeline(), max_in_flight=10)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while bridge.paused != {("t", 0), ("t", 1)}:
                await asyncio.sleep(0.005)
        calls = bridge.consume_calls
        await asyncio.sleep(0.5)
        assert bridge.consume_calls >= calls + 3  # still polling
        assert bridge.paused == {("t", 0), ("t", 1)}  # held
        assert worker.stats()["in_flight"] <= 11
    finally:
        bridge.hold_acks = False
        worker.stop()
        await task


async def test_lost_partitions_drop_their_work_and_commit_nothing() -> None:
    bridge = FakeBridge({0: 5, 1: 5})
    pipeline = FakePipeline()
    for off in range(5):
        pipeline.hold[off] = asyncio.Event()  # everything waits: nothing finishes
    worker = make_worker(bridge, pipeline)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.counters["consumed"] < 10:
                await asyncio.sleep(0.005)
        bridge.rebalance("lost", [0])
        async with asyncio.timeout(10):
            while worker.assignment.counters["lost"] < 1:
                await asyncio.sleep(0.005)
        assert worker.stats()["in_flight"] == 5  # partition 0's five tasks were cancelled
        for ev in pipeline.hold.values():
            ev.set()
        async with asyncio.timeout(10):
            while not bridge.commits or ("t", 1) not in bridge.commits[-1]:
                await asyncio.sleep(0.005)
        assert all(("t", 0) not in c for c in bridge.commits)  # nothing for the lost one
    finally:
        worker.stop()
        await task


async def test_a_commit_computed_before_a_rebalance_is_not_applied_after_it() -> None:
    """Offsets of partition 0 finish in one assignment; it is revoked and assigned again
    before they are committed: the stale offsets must not be committed into the new epoch."""
    bridge = FakeBridge({0: 4})
    worker = make_worker(bridge, FakePipeline(), commit_interval_s=3600)  # no periodic commit
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(bridge.produced) < 4:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        pending = worker.assignment.tracker.pending_commits()  # computed now ...
        bridge.epochs[("t", 0)] += 1  # ... then the partition came back in a new assignment
        assert await bridge.commit(pending) == {}
    finally:
        worker.stop()
        await task


async def test_a_fatal_client_error_stops_at_once_and_commits_only_what_was_acknowledged() -> None:
    bridge = FakeBridge({0: 6})
    bridge.hold_acks = True  # the producer is broken: reports never come
    worker = make_worker(bridge, FakePipeline(), shutdown_timeout_s=30)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while worker.counters["consumed"] < 6:
            await asyncio.sleep(0.005)
    started = time.monotonic()
    bridge.fatal_hook("_FATAL: idempotent producer fenced")
    async with asyncio.timeout(10):
        await task
    assert time.monotonic() - started < 5  # not the 30 s shutdown timeout
    assert worker.fatal is not None and "fenced" in worker.fatal
    assert all(not c for c in bridge.commits)  # nothing was acknowledged
    assert bridge.flushed == 0  # no point flushing a broken producer


async def test_shutdown_has_one_deadline_when_reports_never_come() -> None:
    bridge = FakeBridge({0: 4})
    bridge.hold_acks = True
    worker = make_worker(bridge, FakePipeline(), shutdown_timeout_s=0.5)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        while worker.stats()["in_flight"] < 4 or len(bridge.acks) < 4:
            await asyncio.sleep(0.005)
    started = time.monotonic()
    worker.stop()
    await task
    # the deadline, then a flush of at least a moment; never a second full wait
    assert time.monotonic() - started < 0.5 + 1.0 + 1.0
    # a revoke during close has nothing left to wait for
    assert await asyncio.to_thread(worker.assignment.on_revoke, [("t", 0)]) == {}


async def test_a_revoke_that_outlives_its_callback_never_drops_the_next_assignment() -> None:
    bridge = FakeBridge({0: 3})
    pipeline = FakePipeline()
    pipeline.hold[0] = asyncio.Event()  # offset 0 never finishes before the hook gives up
    worker = make_worker(bridge, pipeline, shutdown_timeout_s=0.2)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker.counters["consumed"] < 3:
                await asyncio.sleep(0.005)
        old = worker.assignment.tracker.get(("t", 0))
        assert await asyncio.to_thread(worker.assignment.on_revoke, [("t", 0)]) == {}  # abandoned
        # a new assignment starts: its offsets object must survive any late cleanup
        new = worker.assignment.tracker.part("t", 0, epoch=2)
        assert new is not old
        worker.assignment.forget([("t", 0)], {("t", 0): old})
        assert worker.assignment.tracker.get(("t", 0)) is new
    finally:
        pipeline.hold[0].set()
        worker.stop()
        await task


async def test_a_partition_comes_back_unpaused_after_a_rebalance() -> None:
    """Paused at its bound when revoked, then assigned again: it must be read to its end."""
    bridge = FakeBridge({0: 200})
    pipeline = FakePipeline()
    gate = asyncio.Event()
    for off in range(200):
        pipeline.hold[off] = gate
    worker = make_worker(bridge, pipeline, max_in_flight_per_partition=8, shutdown_timeout_s=0.2)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while ("t", 0) not in bridge.paused:
                await asyncio.sleep(0.005)
        bridge.rebalance("revoke", [0])
        bridge.rebalance("assign", [0])
        bridge.next[0] = 0  # the new assignment starts from the committed offset (none)
        async with asyncio.timeout(10):
            while bridge.epochs[("t", 0)] < 2:
                await asyncio.sleep(0.005)
        gate.set()
        async with asyncio.timeout(20):
            while not bridge.commits or bridge.commits[-1].get(("t", 0)) != 200:
                await asyncio.sleep(0.01)
    finally:
        gate.set()
        worker.stop()
        await task
