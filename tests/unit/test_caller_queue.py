"""Requests queued for an endpoint's concurrency slots, against the fake provider over real
HTTP: the latency objective counts the queue, a breaker that opens while requests wait turns
them to the fallback, and routing sees the provider's share of a call, not the loop's stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import Caller
from llm_worker.worker.calling.concurrency import ConcurrencyLimits
from llm_worker.worker.calling.routing import health_key
from llm_worker.worker.ops.looplag import LoopLag
from llm_worker.worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="hi")


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=5) as running:
        yield running


def _candidates(server: FakeServer, objective: str | None = None) -> list[Candidate]:
    row = ModelRow(
        model_id="m",
        provider="fake",
        endpoint=server.endpoint("p"),
        upstream_model="m",
        fallback_provider="fake",
        fallback_endpoint=server.endpoint("f"),
        fallback_model="m",
        routing_objective=objective,
    )
    return resolve({"m": row}, "m")


def _caller(sessions: SessionPool, **kw: object) -> Caller:
    return Caller(
        sessions,
        SecretStore(None, env={}),
        Metrics(),
        max_attempts=1,
        concurrency=ConcurrencyLimits(cap=4),  # four calls at a time per endpoint
        **kw,  # type: ignore[arg-type]
    )


async def _burst(caller: Caller, cands: list[Candidate], n: int) -> None:
    await asyncio.gather(
        *(caller.call(cands, REQUEST, deadline=time.monotonic() + 30) for _ in range(n))
    )


async def test_latency_objective_sends_what_queues_at_the_fast_endpoint_to_a_free_one(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", latency_ms=50)
    server.set_profile("f", latency_ms=150)
    caller = _caller(sessions)
    cands = _candidates(server, "latency")
    await _burst(caller, cands, 1)  # both measured: p first (never measured), then f
    await _burst(caller, cands, 1)
    before_p, before_f = server.counters("p")["requests"], server.counters("f")["requests"]
    assert (before_p, before_f) == (1, 1)
    await _burst(caller, cands, 40)
    p = server.counters("p")["requests"] - before_p
    f = server.counters("f")["requests"] - before_f
    # 40 at once, 4 slots each: waiting for p's slots costs more than f's 150 ms after a few
    # rounds, so f takes a share; p, three times faster, still takes the most
    assert f >= 5 and p > f, (p, f)


async def test_priority_objective_waits_for_the_primary_slot(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", latency_ms=50)
    server.set_profile("f", latency_ms=150)
    caller = _caller(sessions)
    await _burst(caller, _candidates(server), 40)
    assert server.counters("p")["requests"] == 40 and server.counters("f")["requests"] == 0


async def test_requests_queued_for_a_slot_skip_a_breaker_that_opened_meanwhile(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", latency_ms=200, error_rate=1.0, error_status=503)
    server.set_profile("f", latency_ms=5)
    breakers = BreakerBoard(BreakerConfig(min_requests=4, error_threshold=0.5, cooldown_s=60))
    caller = _caller(sessions, breakers=breakers)
    await _burst(caller, _candidates(server), 40)  # 4 call p, 36 wait for its slots
    assert breakers.is_open(health_key(_candidates(server)[0]))
    # the first four 503s opened the breaker; those queued behind them went to f without
    # calling p (before: each took its turn at p and got a 503 first)
    assert server.counters("p")["requests"] <= 8, server.counters("p")
    assert server.counters("f")["requests"] == 40


async def test_routing_sees_the_providers_share_not_the_loops_stalls(
    server: FakeServer, sessions: SessionPool
) -> None:
    lag = LoopLag(interval_s=0.005)
    lag.start()
    try:
        caller = _caller(sessions, loop_lag=lag)
        server.set_profile("p", latency_ms=5)
        cands = _candidates(server)
        for _ in range(10):
            await _burst(caller, cands, 1)
        key = health_key(cands[0])
        calls = [
            asyncio.create_task(caller.call(cands, REQUEST, deadline=time.monotonic() + 10))
            for _ in range(4)
        ]
        await asyncio.sleep(0.002)  # the requests are on the wire
        time.sleep(0.3)  # noqa: ASYNC251 - the point: a loop that cannot run for a while
        await asyncio.gather(*calls)
        ewma = caller.router.stats.latency(key)
        # four calls that each took 300 ms+ of wall time would pull a 0.2 EWMA above 0.15 s
        assert ewma is not None and ewma < 0.1, ewma
    finally:
        lag.stop()
