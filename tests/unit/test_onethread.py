"""`OneThread`: calls run in order on one thread of their own; results and exceptions come back
to the awaiting coroutine; a cancelled wait leaves the call to finish."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llm_worker.worker.stream.onethread import OneThread


async def test_calls_run_in_order_on_one_thread_that_is_not_the_loops() -> None:
    runner = OneThread("t")
    seen: list[tuple[int, str]] = []

    def job(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    results = await asyncio.gather(*(runner.call(lambda i=i: job(i)) for i in range(50)))
    runner.close()
    assert results == [i * 2 for i in range(50)]
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"t"}


async def test_an_exception_reaches_the_caller() -> None:
    runner = OneThread("t")

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await runner.call(boom)
    assert await runner.call(lambda: 7) == 7  # the thread lives on
    runner.close()


async def test_a_cancelled_wait_lets_the_call_finish_and_the_next_one_run() -> None:
    runner = OneThread("t")
    done = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        done.set()

    task = asyncio.create_task(runner.call(slow))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await runner.call(lambda: "next") == "next"
    assert done.is_set()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        await runner.call(lambda: None)
