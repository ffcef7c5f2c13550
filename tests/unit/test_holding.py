"""The fault policy: retryable failures are held and tried again until the deadline; terminal
errors end a request at once. Pure rules with a fake clock, then the retry loop against the
built-in fake provider over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.errors import RateLimited, ServerError
from llm_worker.adapters.retry import MAX_RETRY_AFTER
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import PASS_BACKOFF_CAP_S, Caller, CallFailed, pass_delay
from llm_worker.worker.calling.holds import Holds
from llm_worker.worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="hi")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- pure rules ------------------------------------------------------------------------------
def test_pass_delay_grows_per_pass_up_to_the_cap() -> None:
    rng = random.Random(3)
    err = ServerError("boom")
    firsts = [pass_delay(1, err, rng=rng) for _ in range(200)]
    assert all(0.25 <= d <= 0.5 for d in firsts)  # equal jitter: never next to nothing
    later = [pass_delay(p, err, rng=rng) for p in range(2, 40) for _ in range(20)]
    assert max(later) <= PASS_BACKOFF_CAP_S
    assert min(pass_delay(30, err, rng=rng) for _ in range(100)) >= PASS_BACKOFF_CAP_S / 2


def test_pass_delay_honours_retry_after_within_its_cap() -> None:
    assert pass_delay(1, RateLimited("slow down", retry_after=7.0)) == 7.0
    assert pass_delay(1, RateLimited("slow down", retry_after=3600.0)) == MAX_RETRY_AFTER
    assert pass_delay(1, RateLimited("slow down", retry_after=0.01)) >= 0.25


def test_holds_count_waits_and_log_one_line_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    holds = Holds(clock=clock)
    caplog.set_level(logging.INFO, logger="llm_worker.holds")
    first = holds.join("ep", "circuit_open", "circuit open: 20/20 failed")
    second = holds.join("ep", "circuit_open", "circuit open: 20/20 failed")
    assert first is second
    with holds.wait("circuit_open"), holds.wait("circuit_open"):
        assert holds.waiting == {"circuit_open": 2, "retry_backoff": 0} and holds.total == 2
        clock.now += 3.0
    assert holds.total == 0 and holds.seconds["circuit_open"] == 6.0
    holds.leave(first, 100.0)
    assert [r.getMessage() for r in caplog.records] == [
        "endpoint ep: holding requests (circuit_open: circuit open: 20/20 failed)"
    ]
    clock.now += 1.0
    holds.leave(second, 100.0)
    assert caplog.records[-1].getMessage() == (
        "endpoint ep: no longer holding requests: 2 held over 4.0 s, longest 4.0 s"
    )
    assert holds.stats().episodes == 0
    again = holds.join("ep", "retry_backoff", "server_error 500")  # a new episode
    assert again is not first
    assert "(retry_backoff: server_error 500)" in caplog.records[-1].getMessage()


# -- the retry loop --------------------------------------------------------------------------
NEVER_OPENS = BreakerConfig(min_requests=1_000_000)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=2) as running:
        yield running


def _caller(sessions: SessionPool, max_attempts: int = 1) -> Caller:
    return Caller(
        sessions,
        SecretStore(None, env={}),
        Metrics(),
        max_attempts=max_attempts,
        breakers=BreakerBoard(NEVER_OPENS),
    )


def _cands(server: FakeServer, primary: str, fallback: str | None = None) -> list[Candidate]:
    extra: dict[str, Any] = {}
    if fallback is not None:
        extra = {
            "fallback_provider": "fake",
            "fallback_endpoint": server.endpoint(fallback),
            "fallback_model": "m",
        }
    row = ModelRow(
        model_id="m",
        provider="fake",
        endpoint=server.endpoint(primary),
        upstream_model="m",
        **extra,
    )
    return resolve({"m": row}, "m")


async def _until(cond: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_retryable_failures_are_held_until_the_provider_recovers(
    server: FakeServer, sessions: SessionPool
) -> None:
    """One candidate, one attempt allowed: a stream does not give up after the attempts but
    waits and tries again, and answers when the provider is back."""
    server.set_profile("p", error_rate=1.0, error_status=503, retry_after_s=0)
    caller = _caller(sessions)
    call = asyncio.create_task(
        caller.call(_cands(server, "p"), REQUEST, deadline=time.monotonic() + 30)
    )
    await _until(lambda: server.counters("p")["requests"] >= 3)
    assert not call.done()
    await _until(lambda: caller.held == 1)  # between attempts: held, not failed
    assert caller.holds.waiting["retry_backoff"] in (0, 1)
    server.set_profile("p", error_rate=0.0)
    result = await call
    assert result.result.text and result.attempts >= 4  # every attempt counted
    assert result.attempts == server.counters("p")["requests"]
    assert caller.holds.seconds["retry_backoff"] > 0 and caller.held == 0


async def test_a_retryable_failure_that_lasts_ends_at_the_deadline(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", error_rate=1.0, error_status=500)
    caller = _caller(sessions)
    with pytest.raises(CallFailed) as info:
        await caller.call(_cands(server, "p"), REQUEST, deadline=time.monotonic() + 1.5)
    err = info.value.error
    assert err.type == "server_error" and err.retryable and err.status == 500
    assert "request deadline passed" in str(err)
    assert info.value.attempts >= 2  # tried again after the one attempt allowed
    assert info.value.attempts == server.counters("p")["requests"]


@pytest.mark.parametrize("status", [400, 401])
async def test_terminal_errors_end_the_request_at_once(
    server: FakeServer, sessions: SessionPool, status: int
) -> None:
    server.set_profile("p", error_rate=1.0, error_status=status)
    caller = _caller(sessions, max_attempts=3)
    with pytest.raises(CallFailed) as info:
        await caller.call(_cands(server, "p"), REQUEST, deadline=time.monotonic() + 30)
    assert info.value.error.type == {400: "bad_request", 401: "auth_error"}[status]
    assert info.value.attempts == 1 and server.counters("p")["requests"] == 1  # no retry
    assert caller.holds.seconds == {"circuit_open": 0.0, "retry_backoff": 0.0}


async def test_a_terminal_candidate_is_dropped_and_a_retryable_one_waited_for(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", error_rate=1.0, error_status=401)
    server.set_profile("f", error_rate=1.0, error_status=503, retry_after_s=0)
    caller = _caller(sessions)
    call = asyncio.create_task(
        caller.call(_cands(server, "p", "f"), REQUEST, deadline=time.monotonic() + 30)
    )
    await _until(lambda: server.counters("f")["requests"] >= 3)
    server.set_profile("f", error_rate=0.0)
    result = await call
    assert result.candidate.fallback
    assert server.counters("p")["requests"] == 1  # a 401 is not tried again
    assert result.attempts == 1 + server.counters("f")["requests"]


async def test_retry_after_is_honoured_between_tries(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", error_rate=1.0, error_status=429, retry_after_s=1.0)
    caller = _caller(sessions)
    call = asyncio.create_task(
        caller.call(_cands(server, "p"), REQUEST, deadline=time.monotonic() + 30)
    )
    await _until(lambda: server.counters("p")["requests"] >= 1)
    server.set_profile("p", error_rate=0.0)
    assert (await call).attempts == 2
    first, second = server.log("p")
    assert second.at - first.at >= 0.95  # the provider's own measure: not before Retry-After
