"""The adapters through `LLM_WORKER_HTTP_CLIENT=h1`: a `SessionPool` of h1 clients against the
fake provider, each outcome classified as with aiohttp."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from llm_worker.adapters.base import Message, ProviderRequest, StreamDelta, Target
from llm_worker.adapters.errors import (
    ConnectionFailed,
    ProviderTimeout,
    RateLimited,
    ResponseTooLarge,
    ServerError,
)
from llm_worker.adapters.fake import FakeAdapter
from llm_worker.adapters.h1 import H1Client
from llm_worker.adapters.http_client import AiohttpClient, http_of
from llm_worker.adapters.secrets import Secret
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.worker.config import load_settings

KEY = "sk-h1-secret"
REQUEST = ProviderRequest(messages=(Message("user", "hello big world"),))
ADAPTER = FakeAdapter()


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


@pytest.fixture
async def pool() -> AsyncIterator[SessionPool]:
    async with SessionPool(http_client="h1", limit_per_host=4) as sessions:
        yield sessions


def target(endpoint: str, **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": "fake",
        "endpoint": endpoint,
        "model": "fake-model",
        "endpoint_name": "fake:default",
        "timeout_ms": 5_000,
        "api_key": Secret("k", KEY),
    }
    return Target(**(fields | overrides))


def test_the_setting_picks_the_client() -> None:
    assert load_settings({}).http_client == "h1"  # the default (issue 26: measured in the worker)
    assert load_settings({"LLM_WORKER_HTTP_CLIENT": "aiohttp"}).http_client == "aiohttp"
    assert load_settings({"LLM_WORKER_HTTP_CLIENT": "h1"}).http_client == "h1"
    with pytest.raises(ValueError):
        SessionPool(http_client="curl")  # type: ignore[arg-type]


async def test_the_pool_hands_out_h1_clients_per_origin(
    server: FakeServer, pool: SessionPool
) -> None:
    session = pool.get(server.endpoint())
    assert isinstance(session, H1Client)
    assert http_of(session) is session
    assert pool.get(server.endpoint("other")) is session
    assert pool.stats()["h1"] == 1
    async with aiohttp.ClientSession() as plain:
        assert isinstance(http_of(plain), AiohttpClient)


async def test_a_completion_reuses_one_connection(server: FakeServer, pool: SessionPool) -> None:
    tgt = target(server.endpoint())
    for _ in range(5):
        result = await ADAPTER.complete(pool.get(tgt.endpoint), tgt, REQUEST)
        assert result.finish_reason == "stop"
        assert result.text
    session = pool.get(tgt.endpoint)
    assert isinstance(session, H1Client)
    assert session.stats()["connections"] == 1
    call = server.calls()[-1]
    assert call.authorization == f"Bearer {KEY}"


async def test_a_stream_gives_deltas_and_leaves_its_connection(
    server: FakeServer, pool: SessionPool
) -> None:
    tgt = target(server.endpoint())
    for _ in range(3):
        deltas: list[StreamDelta] = []
        result = await ADAPTER.stream(pool.get(tgt.endpoint), tgt, REQUEST, deltas.append)
        assert result.finish_reason == "stop"
        assert "".join(d.text for d in deltas) == result.text
    session = pool.get(tgt.endpoint)
    assert isinstance(session, H1Client)
    assert session.stats()["connections"] == 1  # read to its end after [DONE]: reused


async def test_a_429_carries_its_retry_after(server: FakeServer, pool: SessionPool) -> None:
    server.set_profile("busy", error_rate=1.0, error_status=429, retry_after_s=2.0)
    tgt = target(server.endpoint("busy"))
    with pytest.raises(RateLimited) as info:
        await ADAPTER.complete(pool.get(tgt.endpoint), tgt, REQUEST)
    assert info.value.retry_after == 2.0
    assert info.value.status == 429


async def test_a_hang_is_a_timeout(server: FakeServer, pool: SessionPool) -> None:
    server.set_profile("hang", hang_rate=1.0)
    tgt = target(server.endpoint("hang"), timeout_ms=100)
    with pytest.raises(ProviderTimeout):
        await ADAPTER.complete(pool.get(tgt.endpoint), tgt, REQUEST)
    server.set_profile("late", latency_ms=1_000)  # a stream's headers: within timeout_ms too
    late = target(server.endpoint("late"), timeout_ms=100)
    with pytest.raises(ProviderTimeout, match="no answer within 100 ms"):
        await ADAPTER.stream(pool.get(late.endpoint), late, REQUEST, lambda d: None)


async def test_a_stalled_stream_is_a_timeout(server: FakeServer, pool: SessionPool) -> None:
    server.set_profile("slow", token_delay_ms=500)
    tgt = target(server.endpoint("slow"), stream_idle_ms=50)
    with pytest.raises(ProviderTimeout, match="stalled"):
        await ADAPTER.stream(pool.get(tgt.endpoint), tgt, REQUEST, lambda d: None)


async def test_a_broken_stream_is_a_connection_failure(
    server: FakeServer, pool: SessionPool
) -> None:
    server.set_profile("breaks", stream_break_after=1)
    tgt = target(server.endpoint("breaks"))
    with pytest.raises(ConnectionFailed):
        await ADAPTER.stream(pool.get(tgt.endpoint), tgt, REQUEST, lambda d: None)


async def test_a_reset_and_a_refusal_are_connection_failures(
    server: FakeServer, pool: SessionPool
) -> None:
    server.set_profile("reset", reset_rate=1.0)
    tgt = target(server.endpoint("reset"))
    with pytest.raises(ConnectionFailed):
        await ADAPTER.complete(pool.get(tgt.endpoint), tgt, REQUEST)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = target(f"http://127.0.0.1:{port}/v1?key={KEY}")
    with pytest.raises(ConnectionFailed) as info:
        await ADAPTER.complete(pool.get(gone.endpoint), gone, REQUEST)
    assert KEY not in str(info.value)


async def test_over_the_cap_and_malformed(server: FakeServer, pool: SessionPool) -> None:
    tgt = target(server.endpoint(), max_response_bytes=50)
    with pytest.raises(ResponseTooLarge):
        await ADAPTER.complete(pool.get(tgt.endpoint), tgt, REQUEST)
    server.set_profile("bad", malformed_rate=1.0)
    bad = target(server.endpoint("bad"))
    with pytest.raises(ServerError):
        await ADAPTER.complete(pool.get(bad.endpoint), bad, REQUEST)
