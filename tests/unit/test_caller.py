"""The retry loop against the built-in fake provider over real HTTP: latency judgement and loop
lag, every breaker open (wait, or fail after a cooldown), shared endpoint limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import Caller, CallFailed
from llm_worker.worker.calling.ratelimit import Limit, RateLimiter
from llm_worker.worker.calling.routing import health_key
from llm_worker.worker.config import load_settings
from llm_worker.worker.ops.looplag import LoopLag
from llm_worker.worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="hi")
# a small window so a few dozen calls make a baseline
BREAKER = BreakerConfig(min_latency_samples=20, recent=5, cooldown_s=60.0, min_baseline_s=0)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=5) as running:
        yield running


def _caller(sessions: SessionPool, lag: LoopLag | None) -> Caller:
    return Caller(
        sessions,
        SecretStore(None, env={}),
        Metrics(),
        max_attempts=2,
        breakers=BreakerBoard(BREAKER),
        loop_lag=lag,
    )


async def _warm_up(caller: Caller, server: FakeServer) -> str:
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    cands = resolve({"m": row}, "m")
    for _ in range(30):
        await caller.call(cands, REQUEST, deadline=time.monotonic() + 10)
    return health_key(cands[0])


async def _burst_through_stall(caller: Caller, server: FakeServer, stall_s: float) -> None:
    """Eight calls in flight while the loop is blocked (a GC pause, a busy loop)."""
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    cands = resolve({"m": row}, "m")
    calls = [
        asyncio.create_task(caller.call(cands, REQUEST, deadline=time.monotonic() + 10))
        for _ in range(8)
    ]
    await asyncio.sleep(0.002)  # the requests are on the wire
    time.sleep(stall_s)  # noqa: ASYNC251 - the point: a loop that cannot run for a while
    await asyncio.gather(*calls)


async def test_a_stalled_loop_does_not_trip_the_latency_breaker(
    server: FakeServer, sessions: SessionPool
) -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        caller = _caller(sessions, lag)
        key = await _warm_up(caller, server)
        await _burst_through_stall(caller, server, 0.8)
        assert lag.total >= 0.7
        assert not caller.breakers.get(key).latency.is_demoted
    finally:
        lag.stop()


async def test_without_lag_accounting_the_same_stall_trips_it(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The control for the test above: the stall alone looks like a slow provider."""
    caller = _caller(sessions, None)
    key = await _warm_up(caller, server)
    await _burst_through_stall(caller, server, 0.8)
    assert caller.breakers.get(key).latency.is_demoted


async def test_a_really_slow_provider_still_trips_it(
    server: FakeServer, sessions: SessionPool
) -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        caller = _caller(sessions, lag)
        key = await _warm_up(caller, server)
        server.set_profile(latency_ms=900)
        row = ModelRow(
            model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m"
        )
        cands = resolve({"m": row}, "m")
        await asyncio.gather(
            *(caller.call(cands, REQUEST, deadline=time.monotonic() + 10) for _ in range(8))
        )
        # demoted, never opened: latency alone stops no call
        assert caller.breakers.get(key).latency.is_demoted
        assert "recent median" in caller.breakers.get(key).latency.detail
        assert caller.breakers.states()[key] == "closed"
    finally:
        lag.stop()


class SteadyLag:
    """A loop that is late `share` of the time, steadily (a saturated worker)."""

    def __init__(self) -> None:
        self.share = 0.0
        self._mark = time.monotonic()
        self._total = 0.0

    def mark(self) -> float:
        now = time.monotonic()
        self._total += self.share * (now - self._mark)
        self._mark = now
        return self._total

    def since(self, mark: float) -> float:
        return self.mark() - mark


async def test_calls_made_on_a_saturated_loop_are_not_judged_on_latency(
    server: FakeServer, sessions: SessionPool
) -> None:
    lag = SteadyLag()
    caller = _caller(sessions, cast(LoopLag, lag))
    key = await _warm_up(caller, server)
    server.set_profile(latency_ms=1500)
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    cands = resolve({"m": row}, "m")

    async def burst() -> None:
        await asyncio.gather(
            *(caller.call(cands, REQUEST, deadline=time.monotonic() + 10) for _ in range(8))
        )

    # late 60% of the time: even net of the lag the calls look slow, but the loop was
    # saturated, so the latency is more the worker's than the provider's
    lag.share = 0.6
    await burst()
    assert not caller.breakers.get(key).latency.is_demoted
    assert caller.breakers.get(key).stats().requests >= 38  # the outcomes still count
    # a loop late 30% of the time (a loaded host) still judges: the slowness is the provider's
    lag.share = 0.3
    await burst()
    assert caller.breakers.get(key).latency.is_demoted


async def test_loop_lag_counts_a_blocking_pause() -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.05)
        quiet = lag.total
        time.sleep(0.2)  # noqa: ASYNC251
        await asyncio.sleep(0.03)
        assert quiet < 0.05
        assert 0.15 <= lag.total - quiet < 0.5
    finally:
        lag.stop()


async def test_loop_lag_counts_no_lateness_from_before_the_mark() -> None:
    """A call that starts right after a stall (its tick not yet fired) is not charged for it."""
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # noqa: ASYNC251
        mark = lag.mark()  # the overdue tick has not fired: its lateness so far is in the mark
        await asyncio.sleep(0.03)
        assert lag.total >= 0.15  # the tick fired and counted the stall...
        assert lag.since(mark) < 0.05  # ...which happened before the mark
    finally:
        lag.stop()


def test_loop_lag_rejects_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLag(interval_s=0)


# -- every candidate open: wait for the half-open probe, or fail after one cooldown ------------
TRIP_FAST = BreakerConfig(min_requests=4, error_threshold=0.5, cooldown_s=2.0, probes=1)


async def _tripped(
    server: FakeServer, sessions: SessionPool, *, wait: bool | None, recover: bool = True
) -> tuple[Caller, list[Candidate]]:
    """A caller whose only endpoint's breaker has just opened; `wait=None`: the default."""
    mode = {} if wait is None else {"wait_when_open": wait}
    caller = Caller(
        sessions,
        SecretStore(None, env={}),
        Metrics(),
        max_attempts=1,
        breakers=BreakerBoard(TRIP_FAST),
        **mode,  # type: ignore[arg-type]
    )
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    cands = resolve({"m": row}, "m")
    server.set_profile(error_rate=1.0, latency_ms=0)
    # four requests fail once each; held, they wait for the breaker that their failures opened
    failed = await asyncio.gather(
        *(caller.call(cands, REQUEST, deadline=time.monotonic() + 0.5) for _ in range(4)),
        return_exceptions=True,
    )
    assert all(isinstance(f, CallFailed) for f in failed), failed
    assert caller.breakers.states()[health_key(cands[0])] == "open"
    if recover:
        server.set_profile(error_rate=0.0)  # the provider is back; the breaker does not know yet
    return caller, cands


async def test_all_open_waits_for_the_half_open_probe_by_default(
    server: FakeServer, sessions: SessionPool
) -> None:
    caller, cands = await _tripped(server, sessions, wait=None)
    before = server.counters()["requests"]
    t0 = time.monotonic()
    # more waiters than probe slots: one probes, the rest go when it closes the breaker
    calls = [
        asyncio.create_task(caller.call(cands, REQUEST, deadline=time.monotonic() + 20))
        for _ in range(5)
    ]
    await asyncio.sleep(0.2)
    assert caller.circuit_waiting == 5 and caller.held == 5  # what pauses the partitions
    results = await asyncio.gather(*calls)
    waited = time.monotonic() - t0
    assert all(r.result.text for r in results)
    assert waited >= 1.5  # about the 2 s cooldown, not at once
    assert server.counters()["requests"] - before == 5  # one probe, then the four others
    assert caller.breakers.states()[health_key(cands[0])] == "closed"
    assert caller.circuit_waiting == 0 and caller.held == 0
    assert caller.holds.seconds["circuit_open"] >= 5 * 1.5


async def test_fail_mode_fails_with_circuit_open_after_one_cooldown(
    server: FakeServer, sessions: SessionPool
) -> None:
    caller, cands = await _tripped(server, sessions, wait=False, recover=False)
    before = server.counters()["requests"]
    t0 = time.monotonic()
    outcomes = await asyncio.gather(
        *(caller.call(cands, REQUEST, deadline=time.monotonic() + 20) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, CallFailed) for o in outcomes)
    failed = [o for o in outcomes if isinstance(o, CallFailed)]
    assert {f.error.type for f in failed} == {"circuit_open"}
    # the one that made the probe names the endpoint it called; the others called none
    assert [f.candidate for f in failed if f.attempts] == cands
    assert time.monotonic() - t0 >= 1.5  # not at once: a backlog is not drained into errors
    assert server.counters()["requests"] - before == 1  # the half-open probe, and it failed
    assert caller.held == 0


async def test_fail_mode_still_goes_when_the_probe_succeeds(
    server: FakeServer, sessions: SessionPool
) -> None:
    caller, cands = await _tripped(server, sessions, wait=False)
    result = await caller.call(cands, REQUEST, deadline=time.monotonic() + 20)
    assert result.result.text and result.attempts == 1


async def test_waiting_for_a_probe_ends_at_the_deadline(
    server: FakeServer, sessions: SessionPool
) -> None:
    caller, cands = await _tripped(server, sessions, wait=True)
    t0 = time.monotonic()
    with pytest.raises(CallFailed) as info:
        await caller.call(cands, REQUEST, deadline=time.monotonic() + 0.5)  # < the cooldown
    assert info.value.error.type == "circuit_open"
    assert "request deadline passed" in str(info.value.error)
    assert time.monotonic() - t0 >= 0.45
    assert caller.circuit_waiting == 0


# -- endpoint rate limits are shared by every row that points at the endpoint ----------------
async def test_endpoint_limit_is_shared_by_rows_on_one_endpoint(
    server: FakeServer, sessions: SessionPool
) -> None:
    env = {"LLM_WORKER_ENDPOINT_LIMITS": json.dumps({server.endpoint() + "/": {"rpm": 120}})}
    configured = load_settings(env).limits("endpoint")  # the trailing slash is dropped
    limiter = RateLimiter(
        endpoints={k: Limit(rpm=r, tpm=t) for k, (r, t) in configured.items()}, burst_s=0.5
    )
    caller = Caller(sessions, SecretStore(None, env={}), Metrics(), max_attempts=1, limiter=limiter)
    rows = {
        m: ModelRow(model_id=m, provider="fake", endpoint=server.endpoint(), upstream_model=m)
        for m in ("a", "b")
    }
    t0 = time.monotonic()
    # 2/s with a burst of 1: six calls, three per row, take about 2.5 s together
    await asyncio.gather(
        *(
            caller.call(resolve(rows, m), REQUEST, deadline=time.monotonic() + 10)
            for m in ("a", "b", "a", "b", "a", "b")
        )
    )
    assert time.monotonic() - t0 >= 2.0
    assert limiter.stats().delayed >= 5


async def test_a_rate_limited_primary_spills_to_a_fallback_with_room(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", latency_ms=5)
    server.set_profile("f", latency_ms=5)
    limiter = RateLimiter(endpoints={server.endpoint("p"): Limit(rpm=6)})  # 1 per 10 s
    caller = Caller(sessions, SecretStore(None, env={}), Metrics(), max_attempts=1, limiter=limiter)
    row = ModelRow(
        model_id="m",
        provider="fake",
        endpoint=server.endpoint("p"),
        upstream_model="m",
        fallback_provider="fake",
        fallback_endpoint=server.endpoint("f"),
        fallback_model="m",
    )
    cands = resolve({"m": row}, "m")
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(caller.call(cands, REQUEST, deadline=time.monotonic() + 10) for _ in range(6))
    )
    assert time.monotonic() - t0 < 5.0  # nobody waited 10 s for the primary's bucket
    assert [r.candidate.fallback for r in results].count(False) == 1
    assert server.counters("p")["requests"] == 1 and server.counters("f")["requests"] == 5


async def test_a_deadline_that_cuts_an_attempt_short_reports_the_providers_last_error(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The provider answered 500; the retry was still waiting when the deadline came: the
    error completion says 500 (what the provider did), not `timeout` (what the deadline did)."""
    caller = _caller(sessions, None)
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    server.set_profile(error_rate=1.0, error_status=500, latency_ms=0)
    call = asyncio.create_task(
        caller.call(resolve({"m": row}, "m"), REQUEST, deadline=time.monotonic() + 3)
    )
    while server.counters()["requests"] < 1:
        await asyncio.sleep(0.01)
    server.set_profile(error_rate=0.0, latency_ms=20_000)  # the next attempt never answers
    with pytest.raises(CallFailed) as info:
        await call
    assert server.counters()["requests"] >= 2  # the deadline ended an attempt in progress
    assert info.value.error.type == "server_error"
    assert "request deadline passed" in str(info.value.error)
    assert info.value.candidate is not None  # the error names the endpoint it came from
    assert info.value.candidate.endpoint_name == "m/primary"
