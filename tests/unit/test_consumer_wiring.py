"""The consume loop's wiring, unit-tested: what `Worker` reports before it runs, the paused
partitions gauge, the outcome recorder and in-flight bytes budget it is given, and a full
worker woken by a delivery report (not by a timeout)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from confluent_kafka import KafkaError

from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream import consumer

from .stream_fakes import FakeBridge, FakeMsg, FakePipeline, make_worker, run_until
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


class FlushRecordingBridge(FakeBridge):
    def __init__(self, backlog: dict[int, int]) -> None:
        super().__init__(backlog)
        self.flush_timeouts: list[float] = []
        self.commit_error: Exception | None = None

    async def flush(self, timeout: float) -> int:
        self.flush_timeouts.append(timeout)
        return await super().flush(timeout)

    async def commit(
        self, offsets: dict[tuple[str, int], tuple[int, int]]
    ) -> dict[tuple[str, int], int]:
        if self.commit_error is not None:
            raise self.commit_error
        return await super().commit(offsets)


async def test_the_shutdown_flush_gets_what_is_left_of_the_deadline_and_at_least_the_floor() -> (
    None
):
    bridge = FlushRecordingBridge({0: 1})
    worker = make_worker(bridge, SyncPipeline(), shutdown_timeout_s=30.0)  # type: ignore[arg-type]
    await run_until(worker, lambda: bridge.commits and bridge.commits[-1] == {("t", 0): 1})
    assert len(bridge.flush_timeouts) == 1
    assert 20.0 < bridge.flush_timeouts[0] <= 30.0  # the rest of the 30 s deadline
    worker = make_worker(bridge, SyncPipeline())  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0)
    worker.stop(deadline_s=0.0)
    await task
    assert bridge.flush_timeouts[1] == consumer.FLUSH_FLOOR_S


async def test_outcomes_still_undelivered_at_shutdown_are_counted_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = FakeBridge({0: 2})
    bridge.hold_acks = True  # the reports never come
    worker = make_worker(bridge, SyncPipeline(), shutdown_timeout_s=0.1)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="llm_worker"):
        await run_until(worker, lambda: len(bridge.produced) == 2)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "2 outcome records not delivered at shutdown" in said
    assert all(c.get(("t", 0), 0) == 0 for c in bridge.commits)  # nothing acknowledged


async def test_failing_commits_are_logged_with_their_reason_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = FlushRecordingBridge({0: 1})
    bridge.commit_error = RuntimeError("broker unreachable")
    worker = make_worker(bridge, SyncPipeline())  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="llm_worker"):
        await run_until(
            worker,
            lambda: any("will retry" in r.getMessage() for r in caplog.records),
        )
    said = [r.getMessage() for r in caplog.records]
    assert "offset commit failed (will retry): broker unreachable" in said
    assert "final offset commit failed: broker unreachable" in said
    assert bridge.flush_timeouts  # the commit failing does not skip the flush before it


class StampedMsg(FakeMsg):
    def __init__(self, offset: int, *, ts: tuple[int, int], err: KafkaError | None = None) -> None:
        super().__init__("t", 0, offset, b'{"p": 1}', b"k")
        self._ts, self._err = ts, err

    def timestamp(self) -> tuple[int, int]:
        return self._ts

    def headers(self) -> list[tuple[str, bytes]]:  # type: ignore[override]
        return [("h", b"v")]

    def error(self) -> KafkaError | None:  # type: ignore[override]
        return self._err


class ServingBridge(FakeBridge):
    """Serves the messages given, once, then nothing."""

    def __init__(self, msgs: list[FakeMsg]) -> None:
        super().__init__({0: 0})
        self.msgs = msgs

    async def fetch(self, n: int, timeout: float) -> list[FakeMsg]:
        out, self.msgs = self.msgs[:n], self.msgs[n:]
        if not out:
            await asyncio.sleep(timeout)
        return out


class SeeingPipeline(SyncPipeline):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[InputRecord] = []

    def begin(self, rec: InputRecord) -> Outcome:
        self.seen.append(rec)
        return super().begin(rec)


async def test_the_pipeline_gets_each_record_as_consumed_and_errors_are_logged_not_processed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = ServingBridge(
        [
            StampedMsg(0, ts=(1, 1700000000123)),  # a create time
            StampedMsg(1, ts=(0, 0)),  # no timestamp
            StampedMsg(2, ts=(0, 0), err=KafkaError(KafkaError._PARTITION_EOF)),
            StampedMsg(3, ts=(0, 0), err=KafkaError(KafkaError._TRANSPORT, "broker down")),
        ]
    )
    pipeline = SeeingPipeline()
    worker = make_worker(bridge, pipeline)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="llm_worker"):
        await run_until(worker, lambda: worker.stats()["completed"] == 2)
    first = InputRecord(
        topic="t",
        partition=0,
        offset=0,
        value=b'{"p": 1}',
        key=b"k",
        headers=[("h", b"v")],
        timestamp_ms=1700000000123,
    )
    assert pipeline.seen == [first, msgspec.structs.replace(first, offset=1, timestamp_ms=None)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "llm_worker"]
    assert len(warnings) == 1 and warnings[0].startswith("consume error: ")
    assert "broker down" in warnings[0]  # the end of a partition is no error
    assert worker.counters["consumed"] == 2
    consumed = worker._metrics.registry.get_sample_value("llm_worker_messages_consumed_total")
    assert consumed == 4  # every message polled
    assert bridge.commits[-1] == {("t", 0): 2}


class FailingPipeline:
    """Offset 0 fails in `begin`, offset 1 in `finish`, offset 2 succeeds."""

    def __init__(self) -> None:
        self.errors: list[tuple[int, str]] = []

    def begin(self, rec: InputRecord) -> InputRecord:
        if rec.offset == 0:
            raise ValueError("bad begin")
        return rec

    async def finish(self, rec: InputRecord) -> Outcome:
        if rec.offset == 1:
            raise ValueError("bad finish")
        return Outcome(topic="out", value=b"ok", key=None, headers=None)

    def internal_error(self, rec: InputRecord, exc: BaseException) -> Outcome:
        self.errors.append((rec.offset, str(exc)))
        return Outcome(topic="out", value=f"internal {rec.offset}".encode(), key=None, headers=None)


async def test_an_unexpected_error_answers_its_record_with_an_internal_error_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = FakeBridge({0: 3})
    pipeline = FailingPipeline()
    worker = make_worker(bridge, pipeline)  # type: ignore[arg-type]
    with caplog.at_level("ERROR", logger="llm_worker"):
        await run_until(worker, lambda: bridge.commits and bridge.commits[-1] == {("t", 0): 3})
    assert pipeline.errors == [(0, "bad begin"), (1, "bad finish")]
    assert sorted(bridge.produced) == [b"internal 0", b"internal 1", b"ok"]
    logged = [r for r in caplog.records if "unexpected error processing record" in r.getMessage()]
    assert [(r.partition, r.offset, str(r.exc_info[1])) for r in logged] == [  # type: ignore[attr-defined,index]
        (0, 0, "bad begin"),
        (0, 1, "bad finish"),
    ]


class SameBug(FailingPipeline):
    """Every record fails in `finish`, at the same line."""

    def begin(self, rec: InputRecord) -> InputRecord:
        return rec

    async def finish(self, rec: InputRecord) -> Outcome:
        raise KeyError(f"bug at {rec.offset}")


async def test_a_bug_hitting_many_records_is_logged_once_and_answers_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 21: a traceback per message (one bug, thousands of records) buries the log."""
    bridge = FakeBridge({0: 5})
    pipeline = SameBug()
    worker = make_worker(bridge, pipeline)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG", logger="llm_worker"):
        await run_until(worker, lambda: bridge.commits and bridge.commits[-1] == {("t", 0): 5})
    assert [offset for offset, _ in pipeline.errors] == [0, 1, 2, 3, 4]  # each answered
    logged = [r for r in caplog.records if "unexpected error processing record" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "logged once" in logged[0].getMessage()


async def test_stats_count_commits_partitions_and_what_the_rate_limits_hold() -> None:
    bridge = FakeBridge({0: 3, 1: 2})
    pipeline = FakePipeline()
    pipeline.hold[1] = asyncio.Event()  # offset 1 of each partition waits: two commits at least
    worker = make_worker(bridge, pipeline, rate_limited=lambda: 3)

    def committed() -> dict[tuple[str, int], int]:
        return {tp: off for commit in bridge.commits for tp, off in commit.items()}

    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while committed() != {("t", 0): 1, ("t", 1): 1}:
                await asyncio.sleep(0.005)
            pipeline.hold[1].set()
            while committed() != {("t", 0): 3, ("t", 1): 2}:
                await asyncio.sleep(0.005)
    finally:
        worker.stop()
        await task
    stats = worker.stats()
    made = sum(1 for c in bridge.commits if c)
    assert made >= 2 and stats["commits"] == made
    assert worker._metrics.registry.get_sample_value("llm_worker_offset_commits_total") == made
    assert stats["partitions"] == 2 and stats["held"] == 3
    assert stats["in_flight"] == 0 and stats["paused_partitions"] == 0
    assert {"in_flight_limit", "consumed", "completed"} <= stats.keys()
