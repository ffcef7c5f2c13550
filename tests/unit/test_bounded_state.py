"""State stays bounded under churn (issue 15): 1,000 registry rows come and go, each called
once, and 10,000 tenants pass through: after a sweep, what is kept per endpoint, model and
tenant, and the metric series, are those of the rows that are left."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import generate_latest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import Caller
from llm_worker.worker.calling.concurrency import ConcurrencyLimits
from llm_worker.worker.calling.ratelimit import Limit, RateLimiter, RateRequest
from llm_worker.worker.housekeeping import Housekeeping
from llm_worker.worker.ops.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as server:
        yield server


def _rows(fake: FakeServer, ids: range) -> dict[str, ModelRow]:
    return {
        f"m{i}": ModelRow(
            model_id=f"m{i}", provider="fake", endpoint=fake.endpoint(f"p{i}"), upstream_model="u"
        )
        for i in ids
    }


async def test_rows_that_come_and_go_leave_nothing_behind(fake: FakeServer) -> None:
    clock = Clock()
    rows = _rows(fake, range(1000))
    metrics = Metrics()
    limiter = RateLimiter(default_tenant=Limit(rpm=6_000_000), clock=clock)
    async with SessionPool() as sessions:
        caller = Caller(
            sessions,
            SecretStore(None, env={}),
            metrics,
            max_attempts=1,
            limiter=limiter,
            concurrency=ConcurrencyLimits(cap=100),
        )

        def resolve_now(model_id: str) -> list[Candidate]:
            return resolve(rows, model_id)

        for i, model_id in enumerate(list(rows)):
            await caller.call(
                resolve_now(model_id),
                ProviderRequest(prompt="hi"),
                deadline=time.monotonic() + 10,
                tenant=f"tenant-{i % 10}",
            )
        for t in range(10_000):  # tenants that came once
            ask = RateRequest(endpoint="e", model_id="x", tenant=f"t{t}", tokens=1)
            limiter.has_capacity(ask)
            await limiter.acquire(ask)
        before = len(generate_latest(metrics.registry).splitlines())
        assert len(caller.breakers.states()) == 1000
        rows = _rows(fake, range(990, 1010))  # 990 removed, 10 kept, 10 new
        clock.now += 3600  # every bucket full again
        house = Housekeeping(
            rows=lambda: rows,
            resolve=resolve_now,
            caller=caller,
            sessions=sessions,
            metrics=metrics,
            forget_outcome_children=lambda: None,
        )
        removed = await house.sweep()
        after = generate_latest(metrics.registry).decode()
        assert removed >= 990
        assert len(caller.breakers.states()) <= 20
        assert len(caller.router.stats.snapshot()) <= 20
        assert len(caller.concurrency.by_endpoint) <= 20
        assert len(caller.router.choices) <= 20
        sizes = limiter.sizes()
        assert sizes.tenants == 0 and sizes.models <= 20 and sizes.endpoints <= 20
        assert 'endpoint="m5/primary"' not in after and len(after.splitlines()) < before
        # what is left still counts: a kept row's calls are exported again after the sweep
        await caller.call(
            resolve_now("m995"), ProviderRequest(prompt="hi"), deadline=time.monotonic() + 10
        )
        assert 'endpoint="m995/primary"' in generate_latest(metrics.registry).decode()
