"""The dedup window's store at its edges (a hand-set clock): a window under a second still
keeps answers, an answer exactly the byte cap fits, entries that fill the cap exactly evict
nothing, a negative bound is refused and a zero one keeps nothing, and every counter (hits,
expiries, evictions, failures, takeovers, bytes) counts every event."""

from __future__ import annotations

import asyncio

import pytest

from llm_worker.worker.dedup import DedupWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _answer(value: str) -> str:
    return value


async def _store(window: DedupWindow[str], key: str, value: str) -> None:
    got, shared = await window.run(key, lambda: _answer(value), len)
    assert (got, shared) == (value, False)


async def test_a_window_under_a_second_keeps_answers_for_that_long() -> None:
    clock = Clock()
    window: DedupWindow[str] = DedupWindow(window_s=0.5, clock=clock)
    await _store(window, "k", "answer")
    clock.now += 0.4
    assert window.get("k") == "answer"
    clock.now += 0.2
    assert window.get("k") is None
    assert window.stats().expirations == 1 and window.stats().bytes == 0


async def test_an_answer_of_exactly_the_byte_cap_is_kept_and_exact_fits_evict_nothing() -> None:
    window: DedupWindow[str] = DedupWindow(window_s=60, max_bytes=100, clock=Clock())
    await _store(window, "whole", "x" * 100)
    assert window.get("whole") == "x" * 100 and window.stats().too_big == 0
    await _store(window, "too-big", "x" * 101)
    assert window.stats().too_big == 1 and window.get("too-big") is None
    window.clear()
    await _store(window, "a", "a" * 50)
    await _store(window, "b", "b" * 50)  # 100 bytes in all: both fit
    assert window.get("a") and window.get("b")
    assert window.stats().evictions == 0 and window.stats().bytes == 100


async def test_every_eviction_and_expiry_is_counted_and_their_bytes_freed() -> None:
    clock = Clock()
    window: DedupWindow[str] = DedupWindow(window_s=10, max_entries=2, clock=clock)
    for key, size in zip("abcd", (1, 2, 30, 400), strict=True):  # two at most: a and b go
        await _store(window, key, key * size)
    assert window.stats().evictions == 2
    assert window.stats().entries == 2 and window.stats().bytes == 430
    clock.now += 10  # c and d expire now, exactly; the next store prunes both
    await _store(window, "e", "e" * 7)
    stats = window.stats()
    assert stats.expirations == 2 and stats.entries == 1 and stats.bytes == 7


async def test_a_window_of_one_entry_keeps_the_latest_answer() -> None:
    window: DedupWindow[str] = DedupWindow(window_s=60, max_entries=1, clock=Clock())
    await _store(window, "a", "first")
    assert window.get("a") == "first"
    await _store(window, "b", "second")
    assert window.get("a") is None and window.get("b") == "second"


@pytest.mark.parametrize("bounds", [{"max_entries": -1}, {"max_bytes": -1}])
def test_a_negative_bound_is_refused(bounds: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"^max_entries and max_bytes must be >= 0$"):
        DedupWindow(**bounds)


@pytest.mark.parametrize("bounds", [{"max_entries": 0}, {"max_bytes": 0}])
async def test_a_zero_bound_is_accepted_and_keeps_nothing(bounds: dict[str, int]) -> None:
    window: DedupWindow[str] = DedupWindow(window_s=60, clock=Clock(), **bounds)
    await _store(window, "k", "answer")
    assert window.get("k") is None and len(window) == 0


async def test_every_hit_expiry_failure_and_takeover_is_counted() -> None:
    clock = Clock()
    window: DedupWindow[str] = DedupWindow(window_s=10, clock=clock)
    for key in "abcd":
        await _store(window, key, "x")
    assert window.get("a") == "x" and window.get("a") == "x"
    for _ in range(2):
        assert await window.run("a", lambda: _answer("y"), len) == ("x", True)
    assert window.stats().hits == 4
    clock.now += 10  # exactly `window_s` after they arrived: no longer served
    assert window.get("a") is None and window.get("b") is None
    assert await window.run("c", lambda: _answer("new"), len) == ("new", False)
    assert await window.run("d", lambda: _answer("new"), len) == ("new", False)
    assert window.stats().expirations == 4

    async def fail() -> str:
        raise RuntimeError("provider down")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await window.run("e", fail, len)
    assert window.stats().failures == 2

    async def never() -> str:
        await asyncio.Event().wait()
        return "never"

    for key in ("f", "g"):  # a cancelled leader: its follower takes over
        leader = asyncio.create_task(window.run(key, never, len))
        await asyncio.sleep(0)
        follower = asyncio.create_task(window.run(key, lambda: _answer("mine"), len))
        await asyncio.sleep(0)
        leader.cancel()
        assert await follower == ("mine", False)
    assert window.stats().takeovers == 2
