"""The consume loop's life: a stop that comes before `run()`, and a consume loop that fails
(the error is raised after the work in flight is finished, delivered and committed)."""

from __future__ import annotations

import asyncio

import pytest

from .stream_fakes import FakeBridge, FakeMsg, FakePipeline, make_worker


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

    async def consume(self, n: int, timeout: float) -> list[FakeMsg]:
        if self.next[0] == self.end[0]:
            raise RuntimeError("consumer closed")
        return await super().consume(n, timeout)


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
