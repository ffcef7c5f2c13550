"""The built-in fake provider, driven through the `fake` adapter and its admin API."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.errors import (
    ConnectionFailed,
    Overloaded,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.secrets import Secret
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

ROOT = Path(__file__).resolve().parents[2]
fake = get_adapter("fake")


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def target(server: FakeServer, profile: str = "default", **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": "fake",
        "endpoint": server.endpoint(profile),
        "model": "fake-model",
        "endpoint_name": f"fake:{profile}",
        "timeout_ms": 5_000,
    }
    fields.update(overrides)
    return Target(**fields)


def ask(text: str, max_tokens: int | None = None) -> ProviderRequest:
    messages = (Message("system", "you are a test"), Message("user", text))
    return ProviderRequest(messages=messages, max_tokens=max_tokens)


async def test_answer_is_deterministic_from_the_request(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    first = await fake.complete(session, target(server), ask("hello  fake world"))
    again = await fake.complete(session, target(server), ask("hello  fake world"))
    assert first.text == "[fake:fake-model] hello  fake world"
    assert first.finish_reason == "stop"
    assert (first.input_tokens, first.output_tokens) == (7, 4)
    assert (again.text, again.input_tokens, again.output_tokens) == (
        first.text,
        first.input_tokens,
        first.output_tokens,
    )
    assert first.request_id and again.request_id and first.request_id != again.request_id


async def test_answer_is_cut_to_max_tokens_words(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    result = await fake.complete(session, target(server), ask("one two three four", 3))
    assert result.text == "[fake:fake-model] one two"
    assert result.finish_reason == "length"
    assert result.output_tokens == 3
    capped = await fake.complete(session, target(server, max_tokens=2), ask("one two three"))
    assert capped.text == "[fake:fake-model] one"


async def test_prompt_form_answers_the_prompt(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    result = await fake.complete(session, target(server), ProviderRequest(prompt="plain"))
    assert result.text == "[fake:fake-model] plain"


@pytest.mark.parametrize(("status", "cls"), [(500, ServerError), (503, ServerError)])
async def test_error_rate_one_fails_every_call_with_the_configured_status(
    session: aiohttp.ClientSession, status: int, cls: type[ServerError]
) -> None:
    async with await start_fake_server(error_rate=1.0, error_status=status) as server:
        for _ in range(20):
            with pytest.raises(cls) as info:
                await fake.complete(session, target(server), ask("x"))
            assert info.value.status == status
            assert info.value.request_id
        assert server.counters() == {"requests": 20, "errors": 20}


async def test_injected_429_carries_retry_after(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.set_profile(error_rate=1.0, error_status=429, retry_after_s=2)
    with pytest.raises(RateLimited) as info:
        await fake.complete(session, target(server), ask("x"))
    assert info.value.retry_after == 2.0


async def test_profiles_are_independent(server: FakeServer, session: aiohttp.ClientSession) -> None:
    server.set_profile("broken", error_rate=1.0, error_status=500)
    with pytest.raises(ServerError):
        await fake.complete(session, target(server, "broken"), ask("x"))
    ok = await fake.complete(session, target(server), ask("x"))
    fresh = await fake.complete(session, target(server, "fresh"), ask("y"))
    assert (ok.text, fresh.text) == ("[fake:fake-model] x", "[fake:fake-model] y")
    assert server.counters("broken") == {"requests": 1, "errors": 1}
    assert server.counters("default") == {"requests": 1, "errors": 0}
    assert server.counters("fresh") == {"requests": 1, "errors": 0}


async def test_admin_config_changes_take_effect_live(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    admin = f"{server.url}/admin/config"
    async with session.post(f"{admin}/default", json={"error_rate": 1.0, "error_status": 529}) as r:
        assert r.status == 200
        assert (await r.json())["error_status"] == 529
    with pytest.raises(Overloaded) as info:
        await fake.complete(session, target(server), ask("x"))
    assert info.value.status == 529
    async with session.get(admin) as r:
        profiles = (await r.json())["profiles"]
    assert profiles["default"]["error_rate"] == 1.0
    assert profiles["default"]["errors"] == 1
    async with session.post(f"{admin}/default", json={"error_rate": 0}) as r:
        assert r.status == 200
    assert (await fake.complete(session, target(server), ask("x"))).finish_reason == "stop"


@pytest.mark.parametrize(
    "body", [{"error_rate": 2}, {"latency_ms": -1}, {"error_status": 200}, {"colour": 1}, [1]]
)
async def test_admin_rejects_invalid_settings(
    server: FakeServer, session: aiohttp.ClientSession, body: Any
) -> None:
    async with session.post(f"{server.url}/admin/config/default", json=body) as r:
        assert r.status == 400
        assert "error" in await r.json()
    assert server.config()["profiles"]["default"]["error_rate"] == 0.0


async def test_counters_count_and_reset(server: FakeServer, session: aiohttp.ClientSession) -> None:
    for _ in range(3):
        await fake.complete(session, target(server), ask("x"))
    server.set_profile(error_rate=1.0)
    for _ in range(2):
        with pytest.raises(ServerError):
            await fake.complete(session, target(server), ask("x"))
    assert server.counters() == {"requests": 5, "errors": 2}
    async with session.post(f"{server.url}/admin/reset") as r:
        assert r.status == 200
    assert server.counters() == {"requests": 0, "errors": 0}


async def test_latency_is_applied(server: FakeServer, session: aiohttp.ClientSession) -> None:
    server.set_profile("slow", latency_ms=2_000)
    with pytest.raises(ProviderTimeout):
        await fake.complete(session, target(server, "slow", timeout_ms=200), ask("x"))


async def test_unreadable_request_is_a_400(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{server.url}/v1/chat/completions", data=b"{nope") as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert server.counters() == {"requests": 1, "errors": 1}


async def test_models_and_health(server: FakeServer, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{server.url}/v1/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["fake-model"]
    async with session.get(f"{server.url}/eu/v1/models") as r:
        assert r.status == 200
    async with session.get(f"{server.url}/health") as r:
        assert (await r.json()) == {"status": "ok"}


async def test_run_fake_server_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    code = (
        "from devkit.fake_server import run_fake_server; "
        "run_fake_server('127.0.0.1', 0, latency_ms=1, error_rate=0.0, error_status=500, "
        "profiles={'down': {'error_rate': 1.0, 'error_status': 503}})"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = line.split()[4]
        assert url.startswith("http://127.0.0.1:")
        probe = Target(provider="fake", endpoint=f"{url}/v1", model="m", endpoint_name="cli")
        assert (await fake.complete(session, probe, ask("hi"))).text == "[fake:m] hi"
        down = Target(provider="fake", endpoint=f"{url}/down/v1", model="m", endpoint_name="cli")
        with pytest.raises(ServerError):
            await fake.complete(session, down, ask("hi"))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_request_log_keeps_arrivals_and_concurrency_per_profile(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.set_profile("slow", latency_ms=100)
    await asyncio.gather(
        *(fake.complete(session, target(server, "slow"), ask("x")) for _ in range(4))
    )
    await fake.complete(session, target(server), ask("y"))
    slow = server.log("slow")
    assert len(slow) == 4 and [r.at for r in slow] == sorted(r.at for r in slow)
    assert max(r.in_flight for r in slow) == 4  # all four were there at once
    assert [r.in_flight for r in server.log()] == [1]
    assert server.config()["profiles"]["slow"]["requests"] == 4  # the admin API is unchanged
    server.reset()
    assert server.log("slow") == []


async def test_every_request_is_logged_with_its_times(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.set_profile("slow", latency_ms=50)
    await fake.complete(session, target(server, "slow", api_key=Secret("k", "k-1")), ask("first"))
    server.set_profile("slow", error_rate=1.0, error_status=429)
    with pytest.raises(RateLimited):
        await fake.complete(session, target(server, "slow"), ask("second"))
    await fake.complete(session, target(server), ask("elsewhere"))
    calls = server.calls("slow")
    assert [(c.text, c.status, c.model) for c in calls] == [
        ("first", 200, "fake-model"),
        ("second", 429, "fake-model"),
    ]
    assert calls[0].authorization == "Bearer k-1" and calls[1].authorization is None
    first = calls[0]
    assert first.answered is not None and first.answered - first.arrived >= 0.05
    assert calls[1].arrived >= first.answered
    assert [c.text for c in server.calls(None)] == ["first", "second", "elsewhere"]
    server.reset()
    assert server.calls(None) == []


async def _raw_post(server: FakeServer, profile: str) -> tuple[int, bytes, int | None]:
    """Status, body and declared length of one chat call, read without the adapter."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{server.endpoint(profile)}/chat/completions", json=body) as resp,
    ):
        return resp.status, await resp.read(), resp.content_length


@pytest.mark.parametrize("fault", ["malformed", "truncated"])
async def test_malformed_and_truncated_bodies_are_200s_that_do_not_parse(
    server: FakeServer, fault: str
) -> None:
    server.set_profile("f", **{f"{fault}_rate": 1.0})
    status, body, length = await _raw_post(server, "f")
    assert status == 200 and length == len(body) > 10  # the HTTP exchange itself is whole
    with pytest.raises(ValueError):
        json.loads(body)
    if fault == "truncated":
        assert body.startswith(b'{"id":"chatcmpl-fake-')
    assert [c.fault for c in server.calls("f")] == [fault]
    assert server.counters("f") == {"requests": 1, "errors": 1}


async def test_reset_cuts_the_response_body_mid_way(server: FakeServer) -> None:
    server.set_profile("f", reset_rate=1.0)
    with pytest.raises(aiohttp.ClientPayloadError):
        await _raw_post(server, "f")
    with pytest.raises(ConnectionFailed):  # retryable for every adapter
        async with aiohttp.ClientSession() as client:
            await fake.complete(client, target(server, "f"), ask("x"))


async def test_hang_answers_nothing_until_the_client_gives_up(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.set_profile("f", hang_rate=1.0)
    with pytest.raises(ProviderTimeout):
        await fake.complete(session, target(server, "f", timeout_ms=300), ask("x"))
    for _ in range(50):  # the server sees the closed connection and lets the request go
        if all(c.answered is not None for c in server.calls("f")):
            break
        await asyncio.sleep(0.05)
    (call,) = server.calls("f")
    assert call.fault == "hang" and call.answered is not None
    assert call.answered - call.arrived >= 0.3


async def test_fault_rates_are_checked(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="hang_rate must be between 0 and 1"):
        server.set_profile("f", hang_rate=2.0)
