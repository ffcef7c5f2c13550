"""When a held request wakes (`worker.calling.caller`), against the scripted provider and the
hand-set clock of `caller_fakes.py`: a request in retry backoff is woken early by a breaker
that closes, and by nothing else; a request held for an open breaker sleeps until that
breaker's retry time (it does not spin), or until a breaker closes. Also the other
waits: a wait for a concurrency slot moves the deadline like one for rate-limit capacity, a
deadline passed while waiting ends the request with the reason of its pass, and the queue
penalty the `latency` objective adds to an endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llm_worker.adapters.errors import ProviderTimeout
from llm_worker.adapters.sessions import SessionPool
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import CallFailed, CircuitOpen
from llm_worker.worker.calling.concurrency import AdaptiveLimit, ConcurrencyLimits
from llm_worker.worker.calling.routing import health_key

from .caller_fakes import Clock, RecordingLimits, Setup, answer, server_error

# two failures in a row open a breaker: one failed call of the request under test does not
TWO = BreakerConfig(consecutive_failures=2, cooldown_s=60.0)
# two requests fail twice each and their endpoint's breaker stays closed
TEN = BreakerConfig(consecutive_failures=10, cooldown_s=60.0)
# one failure opens a breaker, and one probe that answers closes it
ONE = BreakerConfig(consecutive_failures=1, cooldown_s=60.0, probes=1)


async def until(done: Callable[[], bool], turns: int = 1000) -> None:
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition did not come true")


async def settle(turns: int = 100) -> None:
    """Let every task that can run, run (a woken request calls within a few turns)."""
    for _ in range(turns):
        await asyncio.sleep(0)


def open_breaker(board: BreakerBoard, key: str) -> None:
    for _ in range(board.config.consecutive_failures):
        board.record(key, False, 0.0)
    assert board.get(key).state == "open"


async def test_a_request_in_retry_backoff_wakes_when_a_breaker_closes_and_not_before(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=TWO)
    s.pass_sleep = 60.0  # a long backoff (real seconds): only a wake-up ends it in time
    s.provider.script = {"http://p": [server_error(), answer()]}
    board = s.caller.breakers
    open_breaker(board, "other")
    board.get("other").reset()  # a close before the request: only later ones wake it
    task = asyncio.create_task(s.call(cands=[s.primary]))
    await until(lambda: s.caller.holds.waiting["retry_backoff"] == 1)
    open_breaker(board, "other")
    await settle()
    assert s.provider.called == ["http://p"]  # a breaker opening does not wake it
    board.get("other").reset()
    res = await asyncio.wait_for(task, 5.0)  # a breaker closing does, long before 60 s
    assert res.attempts == 2 and s.provider.called == ["http://p", "http://p"]
    assert s.caller.held == 0


async def test_every_held_request_wakes_and_the_time_held_adds_up(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    """Two requests in retry backoff both wake when a breaker closes; each hold's time (on the
    clock) is traced, and at the deadline the message says how long the request was held in
    all."""
    s = Setup(monkeypatch, sessions, breaker=TEN)
    s.pass_sleep = 60.0
    s.provider.script = {"http://p": [server_error()] * 5}
    board = s.caller.breakers
    first = asyncio.create_task(s.call(cands=[s.primary], deadline_s=60.0))
    second = asyncio.create_task(s.call(cands=[s.primary], deadline_s=600.0))
    for called in (4, 5):
        await until(lambda: s.caller.holds.waiting["retry_backoff"] == 2)
        s.clock.now += 40.25  # time passes while they are held
        open_breaker(board, "other")
        board.get("other").reset()  # every held request wakes, and calls again
        await until(lambda n=called: len(s.provider.called) == n)  # type: ignore[misc]
    with pytest.raises(CallFailed) as info:  # its deadline passed while it was held
        await asyncio.wait_for(first, 5.0)
    assert info.value.error.message == (
        "upstream broke; request deadline passed after 2 attempts and 80.5s held"
    )
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    held = [e[2]["wait_s"] for e in s.observer.events if e[0] == "held"]
    assert held == [40.25] * 4


async def test_a_request_held_for_an_open_breaker_sleeps_until_its_retry_time(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=ONE)
    s.provider.script = {"http://p": [answer()]}
    board = s.caller.breakers
    open_breaker(board, health_key(s.primary))  # its probe is 60 s away on the clock
    task = asyncio.create_task(s.call(cands=[s.primary], deadline_s=600.0))
    await until(lambda: s.caller.circuit_waiting == 1)
    await asyncio.sleep(0.1)  # real time: a request that re-checks every few ms would by now
    assert s.calls("circuit_open", "m/primary") == 1
    assert s.caller.circuit_waiting == 1 and not task.done()
    s.clock.now += 60.0  # the cooldown is over (on this clock; the real timer is not)
    open_breaker(board, "other")
    board.get("other").reset()  # a breaker closing makes the held requests look again
    res = await asyncio.wait_for(task, 5.0)
    assert res.attempts == 1 and s.provider.called == ["http://p"]  # the probe answered
    assert board.get(health_key(s.primary)).state == "closed"


async def test_by_default_a_request_waits_past_a_failed_probe(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    """`wait_when_open` is the default: a request outlives more than one cooldown (in `fail`
    mode it would end with `circuit_open` after the first)."""
    s = Setup(monkeypatch, sessions, breaker=ONE)
    s.provider.script = {"http://p": [server_error(), answer()]}
    board, primary = s.caller.breakers, health_key(s.primary)
    open_breaker(board, primary)
    task = asyncio.create_task(s.call(cands=[s.primary], deadline_s=600.0))
    for opened in (1, 2):  # the first probe fails and opens the breaker again
        await until(lambda: s.caller.circuit_waiting == 1)
        assert board.get(primary).opened == opened
        s.clock.now += 60.0
        open_breaker(board, "other")
        board.get("other").reset()
        if opened == 1:
            await until(lambda: len(s.provider.called) == 1)
    res = await asyncio.wait_for(task, 5.0)
    assert res.attempts == 2 and s.provider.called == ["http://p", "http://p"]


class SlowLimit(AdaptiveLimit):
    """A slot taken after a wait of `wait` seconds on the clock."""

    def __init__(self, clock: Clock, wait: float) -> None:
        super().__init__(cap=4)
        self.clock, self.wait = clock, wait

    def try_acquire(self) -> bool:
        return False  # never at once: every slot comes after the wait

    async def acquire(self, timeout: float | None = None, priority: int = 1) -> float:
        if timeout is not None and self.wait > timeout:  # none comes in time
            self.clock.now += timeout
            raise TimeoutError
        assert super().try_acquire()
        self.clock.now += self.wait
        return self.wait


class SlowSlots(ConcurrencyLimits):
    def __init__(self, clock: Clock, wait: float) -> None:
        super().__init__(cap=4)
        self.limit = SlowLimit(clock, wait)

    def get(self, key: str) -> AdaptiveLimit:
        return self.limit


async def test_an_answer_frees_its_slot_with_the_calls_latency(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.concurrency = slots = RecordingLimits(cap=4)
    s.provider.took = 1.5  # on the clock
    s.provider.script = {"http://p": [answer()]}
    res = await s.call(cands=[s.primary])
    assert res.latency_ms == 1500.0
    assert slots.limit.released == [(True, False)] and slots.limit.latencies == [1.5]


async def test_a_cancelled_call_frees_its_slot_as_no_answer(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.concurrency = slots = RecordingLimits(cap=4)
    s.provider.gate = asyncio.Event()  # never set: the call is in progress until cancelled
    task = asyncio.create_task(s.call(cands=[s.primary]))
    await until(lambda: s.provider.called == ["http://p"])
    assert slots.limit.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.limit.released == [(False, False)] and slots.limit.in_use == 0


async def test_a_wait_for_a_concurrency_slot_moves_the_deadline(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=2)
    s.caller.concurrency = SlowSlots(s.clock, wait=10.0)  # longer than the whole deadline
    s.provider.script = {"http://p": [server_error(), answer()]}
    res = await s.call(cands=[s.primary], deadline_s=5.0)
    assert res.candidate is s.primary and res.attempts == 2
    assert s.remaining == [5.0]  # the retry still has all of its 5 s


async def test_a_wait_for_a_slot_ends_at_the_final_deadline_saying_so(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=2)
    s.caller.capacity_wait_s = 12.0
    s.caller.concurrency = SlowSlots(s.clock, wait=10.0)
    s.provider.script = {"http://p": [server_error(), answer()]}
    with pytest.raises(CallFailed) as info:  # 10 s for the first slot, the second past 5 + 12
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.clock.now == pytest.approx(100.0 + 5.0 + 12.0)  # it ended there, not before
    err = info.value.error
    assert err.type == "timeout" and err.retryable
    assert err.message.startswith("no concurrency slot at m/primary for 7.0s")
    assert err.message.endswith("request deadline passed after 1 attempts and 0.0s held")
    assert s.provider.called == ["http://p"]


async def test_a_deadline_passed_while_waiting_for_capacity_ends_with_the_pass_reason(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    """The primary's breaker is half-open with its one probe out, so the router keeps it
    first and the pass finds it refusing; the fallback's wait for capacity then runs past the
    deadline (the loop was slow). The request ends with `circuit_open`, the reason no call
    was made, not with a bare timeout."""
    config = BreakerConfig(consecutive_failures=1, cooldown_s=10.0, probes=1)
    s = Setup(monkeypatch, sessions, breaker=config)
    board, primary = s.caller.breakers, health_key(s.primary)
    open_breaker(board, primary)
    s.clock.now += 10.0
    assert board.allow(primary)  # another request's probe, still out
    s.limiter.late = 100.0
    with pytest.raises(CallFailed) as info:
        await s.call(deadline_s=5.0)
    assert s.provider.called == []
    assert [a["endpoint"] for a in s.limiter.acquired] == ["http://f"]
    err = info.value.error
    assert type(err) is CircuitOpen
    assert err.message == (
        "circuit open for m/primary; request deadline passed after 0 attempts and 0.0s held"
    )


async def test_a_half_open_breaker_with_its_probe_out_sends_the_request_on_at_once(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    config = BreakerConfig(consecutive_failures=1, cooldown_s=10.0, probes=1)
    s = Setup(monkeypatch, sessions, breaker=config)
    board, primary = s.caller.breakers, health_key(s.primary)
    open_breaker(board, primary)
    s.clock.now += 10.0
    assert board.allow(primary)  # another request's probe, still out: the router keeps it first
    s.provider.script = {"http://f": [answer()]}
    res = await asyncio.wait_for(s.call(), 5.0)  # not held until the probe's cooldown
    assert res.candidate is s.fallback and s.provider.called == ["http://f"]
    assert s.observer.events == [("circuit_open", "m/primary", {})]


async def test_a_call_cut_by_the_deadline_counts_as_an_attempt(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.gate = asyncio.Event()  # never set: the provider does not answer
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=0.05)
    err = info.value.error
    assert type(err) is ProviderTimeout
    assert err.message == "request deadline passed during an attempt"  # nothing said before
    assert info.value.attempts == 1 and info.value.candidate is s.primary


async def test_a_wait_between_attempts_is_given_the_time_left(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=2)
    s.provider.took = 1.0
    s.provider.script = {"http://p": [server_error(), answer()]}
    res = await s.call(cands=[s.primary], deadline_s=60.0)
    assert res.attempts == 2
    assert s.remaining == [59.0]  # the deadline, less the second the first attempt took


async def test_the_latency_objective_counts_the_queue_in_rounds_of_the_slots(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.concurrency = limits = ConcurrencyLimits(cap=4)
    queued = s.caller._queued
    assert queued(s.primary) == 0.0  # never called: no queue
    lim = limits.get(health_key(s.primary))
    assert lim.slots == 4
    for _ in range(3):
        assert lim.try_acquire()
    assert queued(s.primary) == 0.0  # a slot is free
    assert lim.try_acquire()
    assert queued(s.primary) == 0.25  # full: a new call waits one round of four
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(2)]
    await until(lambda: lim.waiting == 2)
    assert queued(s.primary) == 0.75  # behind two more: three rounds of four
    lim.release(ok=True, latency_s=0.1)  # the slot goes to the first waiter
    await until(lambda: lim.waiting == 1)
    assert queued(s.primary) == 0.5
    lim.release(ok=True, latency_s=0.1)
    await asyncio.gather(*waiters)
    assert queued(s.fallback) == 0.0  # each endpoint its own queue
