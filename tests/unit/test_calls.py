"""The retry loop against the built-in fake provider over real HTTP: breaker health, loop lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from adapters.base import ProviderRequest
from adapters.fake_server import FakeServer, start_fake_server
from adapters.secrets import SecretStore
from adapters.sessions import SessionPool
from registry.models import ModelRow
from registry.resolve import resolve
from worker.breaker import BreakerBoard, BreakerConfig
from worker.calls import Caller
from worker.looplag import LoopLag
from worker.routing import health_key
from worker.telemetry import Metrics

REQUEST = ProviderRequest(prompt="hi")
# a small window so a few dozen calls make a baseline
BREAKER = BreakerConfig(min_latency_samples=20, recent=5, cooldown_s=60.0)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=5) as running:
        yield running


@pytest.fixture
async def sessions() -> AsyncIterator[SessionPool]:
    pool = SessionPool()
    yield pool
    await pool.close()


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
        await _burst_through_stall(caller, server, 0.4)
        assert lag.total >= 0.3
        assert caller.breakers.states()[key] == "closed"
    finally:
        lag.stop()


async def test_without_lag_accounting_the_same_stall_trips_it(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The control for the test above: the stall alone looks like a slow provider."""
    caller = _caller(sessions, None)
    key = await _warm_up(caller, server)
    await _burst_through_stall(caller, server, 0.4)
    assert caller.breakers.states()[key] == "open"


async def test_a_really_slow_provider_still_trips_it(
    server: FakeServer, sessions: SessionPool
) -> None:
    lag = LoopLag(interval_s=0.01)
    lag.start()
    try:
        caller = _caller(sessions, lag)
        key = await _warm_up(caller, server)
        server.set_profile(latency_ms=400)
        row = ModelRow(
            model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m"
        )
        cands = resolve({"m": row}, "m")
        await asyncio.gather(
            *(caller.call(cands, REQUEST, deadline=time.monotonic() + 10) for _ in range(8))
        )
        assert caller.breakers.states()[key] == "open"
        assert "recent mean" in caller.breakers.get(key).detail
    finally:
        lag.stop()


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


def test_loop_lag_rejects_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        LoopLag(interval_s=0)
