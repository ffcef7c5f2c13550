"""The retry loop's waits (`worker.calling.caller`), against the scripted provider and the
hand-set clock of `caller_fakes.py`: a wait for rate-limit capacity moves the deadline, a
request whose every candidate's breaker is open waits for the half-open probe (or, in `fail`
mode, at most one cooldown), and a deadline passed while waiting ends the request."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llm_worker.adapters.errors import ServerError
from llm_worker.adapters.sessions import SessionPool
from llm_worker.worker.calling.breaker import BreakerConfig
from llm_worker.worker.calling.caller import (
    CAPACITY_WAIT_S,
    CallFailed,
    CircuitOpen,
    estimate_tokens,
)
from llm_worker.worker.calling.routing import endpoint_key

from .caller_fakes import REQUEST, RecordingLimits, Setup, answer, server_error

# one failure opens a breaker; its cooldown is short in real time, the sleeps being real
TRIP = BreakerConfig(consecutive_failures=1, cooldown_s=0.01)


@pytest.mark.parametrize("wait", [10.0, 0.5])  # longer than the whole deadline, and short
async def test_a_wait_for_capacity_moves_the_deadline_and_is_traced(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool, wait: float
) -> None:
    s = Setup(monkeypatch, sessions)
    s.limiter.wait = wait  # capacity, not failure
    s.provider.script = {"http://p": [answer()]}
    res = await s.call(deadline_s=5.0, tenant="acme")
    assert res.candidate is s.primary and res.attempts == 1
    assert s.observer.events == [("ratelimit_wait", "m/primary", {"wait_s": wait})]
    wanted = {
        "endpoint": endpoint_key(s.primary),
        "model_id": "m",
        "rpm": 600,
        "tpm": 90_000,
        "tenant": "acme",
        "tokens": estimate_tokens(REQUEST, 100),
        "priority": 1,  # normal: the prompt and the row said none
    }
    assert s.limiter.acquired == [wanted]
    # however long the wait, never past the final deadline
    assert s.limiter.deadlines == [pytest.approx(100.0 + 5.0 + CAPACITY_WAIT_S)]
    # with a fallback, routing asks whether the primary has room, with the same
    assert s.limiter.asked and all(a == wanted for a in s.limiter.asked)


async def test_a_retry_wait_past_the_deadline_ends_the_request_before_calling(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.took = 1.0
    s.retry_wait = 10.0
    s.provider.script = {"http://p": [server_error(), answer()]}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.provider.called == ["http://p"]
    err = info.value.error
    assert type(err) is ServerError and err.status == 503
    assert err.message == "upstream broke; request deadline passed after 1 attempts and 0.0s held"
    assert info.value.attempts == 1 and info.value.candidate is s.primary


async def test_an_open_breaker_holds_the_request_until_its_probe(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_worker.holds")
    s = Setup(monkeypatch, sessions, breaker=TRIP)
    s.observer.ticks = {"circuit_open": 1.0}  # the cooldown passes while it waits
    s.provider.script = {"http://p": [server_error(), answer()]}
    res = await s.call(cands=[s.primary])
    assert s.provider.called == ["http://p", "http://p"]  # the second one the probe
    assert res.attempts == 2 and res.candidate is s.primary
    assert s.observer.events == [
        ("held", "m/primary", {"reason": "retry_backoff", "wait_s": 0.0}),
        ("circuit_open", "m/primary", {}),
        ("held", "m/primary", {"reason": "circuit_open", "wait_s": 0.0}),
    ]
    assert s.calls("circuit_open", "m/primary") == 1
    held = [m for m in caplog.messages if "holding requests" in m]
    assert len(held) == 2
    assert held[0] == (
        "endpoint fake:http://p#u: holding requests"
        " (circuit_open: circuit open: 1 failures in a row)"
    )
    assert held[1] == (
        "endpoint fake:http://p#u: no longer holding requests: 1 held over 1.0 s, longest 1.0 s"
    )
    assert s.caller.held == 0 and s.caller.circuit_waiting == 0


async def test_a_request_that_finds_every_breaker_open_ends_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=BreakerConfig(consecutive_failures=1, cooldown_s=1e3))
    s.provider.script = {"http://p": [server_error()], "http://f": [server_error()]}
    s.pass_wait = 100.0
    with pytest.raises(CallFailed):
        await s.call(deadline_s=5.0)  # both fail once: both breakers open
    s.observer.ticks = {"circuit_open": 100.0}  # the deadline passes while it waits
    with pytest.raises(CallFailed) as info:
        await s.call(deadline_s=0.01)
    assert s.provider.called == ["http://p", "http://f"]  # no call in the second request
    err = info.value.error
    assert type(err) is CircuitOpen
    assert err.message == (
        "circuit open for m/primary; request deadline passed after 0 attempts and 0.0s held"
    )
    assert info.value.attempts == 0 and info.value.candidate is None


async def test_fail_mode_ends_with_circuit_open_after_one_cooldown(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=TRIP, wait_when_open=False)
    s.provider.script = {"http://p": [server_error(), server_error()]}
    s.observer.ticks = {"circuit_open": 0.004}  # less than the cooldown (0.01) per wait
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=60.0)
    # the first failure opened the breaker; the request waited for one cooldown, then the
    # probe failed and opened it again, and after another cooldown it gave up
    assert s.provider.called == ["http://p", "http://p"]
    err = info.value.error
    assert type(err) is CircuitOpen and err.message == "circuit open for m/primary"
    assert info.value.attempts == 2 and info.value.candidate is s.primary
    waits = [e[2]["reason"] for e in s.observer.events if e[0] == "held"]
    assert waits.count("circuit_open") >= 2


async def test_a_request_queued_for_a_slot_finds_the_breaker_opened_meanwhile(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=BreakerConfig(consecutive_failures=1))
    s.caller.concurrency = slots = RecordingLimits(cap=4)  # four calls at a time per endpoint
    s.provider.gate = asyncio.Event()
    s.provider.script = {"http://p": [server_error() for _ in range(4)]}
    s.observer.ticks = {"circuit_open": 100.0}  # the deadline passes while they wait
    calls = [asyncio.create_task(s.call(cands=[s.primary], deadline_s=0.05)) for _ in range(5)]
    while len(s.provider.called) < 4:  # four calls take the endpoint's four slots
        await asyncio.sleep(0)
    s.provider.gate.set()  # they fail; the first failure opens the breaker
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert len(s.provider.called) == 4  # the fifth, queued for a slot, did not call
    failed = [o for o in outcomes if isinstance(o, CallFailed)]
    assert len(failed) == 5
    queued = [f for f in failed if f.attempts == 0]
    assert len(queued) == 1 and type(queued[0].error) is CircuitOpen
    assert queued[0].candidate is s.primary
    assert len(slots.limit.released) == 5  # every slot freed, and none as an answer
    assert not any(ok for ok, _ in slots.limit.released)
