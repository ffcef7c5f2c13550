"""What the caller tells an endpoint's adaptive concurrency limit about each call (a failed or
deadline-cut call is not an answer, and counts as overload), and that a `Router` given to the
caller is the one that orders the candidates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import Caller, CallFailed
from llm_worker.worker.calling.routing import Router
from llm_worker.worker.ops.metrics import Metrics

from .caller_fakes import RecordingLimits

REQUEST = ProviderRequest(prompt="hello there")


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=0) as running:
        yield running


async def test_each_call_is_released_as_answered_failed_or_overloaded(
    server: FakeServer, sessions: SessionPool
) -> None:
    """An answer frees its slot as `ok`; a 500 and an attempt cut short by the deadline free
    theirs as failed and overloaded, so the endpoint's limit backs off; a 400 as failed."""
    limits = RecordingLimits()
    caller = Caller(
        sessions, SecretStore(None, env={}), Metrics(), max_attempts=2, concurrency=limits
    )
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    cands = resolve({"m": row}, "m")
    await caller.call(cands, REQUEST, deadline=time.monotonic() + 10)
    server.set_profile(error_rate=1.0, error_status=400)
    with pytest.raises(CallFailed):
        await caller.call(cands, REQUEST, deadline=time.monotonic() + 10)
    assert limits.limit.released == [(True, False), (False, False)]
    limits.limit.released.clear()
    server.set_profile(error_rate=1.0, error_status=500)
    call = asyncio.create_task(caller.call(cands, REQUEST, deadline=time.monotonic() + 2))
    while server.counters()["requests"] < 3:
        await asyncio.sleep(0.01)
    server.set_profile(error_rate=0.0, latency_ms=20_000)  # the retry never answers
    with pytest.raises(CallFailed):
        await call
    # the 500s (as many as came before the profile changed) and the deadline-cut retry
    released = limits.limit.released
    assert len(released) >= 2 and set(released) == {(False, True)}


class RecordingRouter(Router):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    def order(
        self,
        candidates: Sequence[Candidate],
        objective: str | None = None,
        limited: Callable[[Candidate], bool] | None = None,
        queued: Callable[[Candidate], float] | None = None,
    ) -> Any:
        self.asked.append([c.endpoint_name for c in candidates])
        return super().order(candidates, objective, limited, queued)


async def test_the_router_given_orders_the_candidates(
    server: FakeServer, sessions: SessionPool
) -> None:
    router = RecordingRouter()
    caller = Caller(sessions, SecretStore(None, env={}), Metrics(), max_attempts=1, router=router)
    row = ModelRow(model_id="m", provider="fake", endpoint=server.endpoint(), upstream_model="m")
    await caller.call(resolve({"m": row}, "m"), REQUEST, deadline=time.monotonic() + 10)
    assert caller.router is router and router.asked == [["m/primary"]]
