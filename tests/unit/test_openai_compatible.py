"""The OpenAI-compatible adapter against a local server that speaks OpenAI's wire format."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters import ADAPTER_NAMES, SessionPool, get_adapter
from llm_worker.adapters.base import Message, ProviderRequest, Target
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.fake import FakeAdapter
from llm_worker.adapters.openai_compatible import OpenAIAdapter, OpenAICompatibleAdapter
from llm_worker.adapters.secrets import Secret

API_KEY = "sk-test-6f1c2b9e0d4a4c1e8b7d"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(text: str = "Hello!", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        "system_fingerprint": "fp_test",
    }
    body.update(extra)
    return body


def openai_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers={"x-request-id": f"req-{status}"})


class Upstream:
    """The provider side: records what arrives, answers with whatever the test scripted."""

    def __init__(self) -> None:
        self.endpoint = ""
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.reply: Handler = self.ok

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(completion(), headers={"x-request-id": "req-ok-1"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append((request.path, dict(request.headers), body))
        return await self.reply(request)

    @property
    def last_json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.received[-1][2])
        return decoded

    @property
    def last_headers(self) -> dict[str, str]:
        return self.received[-1][1]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    yield up
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def target(endpoint: str, **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": "openai_compatible",
        "endpoint": endpoint,
        "model": "gpt-test",
        "endpoint_name": "primary:test",
        "api_key": Secret("test-key", API_KEY),
        "timeout_ms": 5_000,
    }
    fields.update(overrides)
    return Target(**fields)


CHAT = ProviderRequest(messages=(Message("system", "be brief"), Message("user", "hi")))
adapter = OpenAICompatibleAdapter()


async def test_success_maps_text_finish_reason_usage_and_request_id(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    result = await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert result.text == "Hello!"
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (11, 3)
    assert result.request_id == "req-ok-1"
    assert upstream.received[-1][0] == "/v1/chat/completions"


async def test_request_id_falls_back_to_the_body_id(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def no_header(request: web.Request) -> web.StreamResponse:
        return web.json_response(completion(usage=None))

    upstream.reply = no_header
    result = await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert result.request_id == "chatcmpl-abc123"
    assert (result.input_tokens, result.output_tokens) == (0, 0)


async def test_payload_caps_max_tokens_omits_none_and_sends_the_key(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    request = ProviderRequest(messages=CHAT.messages, max_tokens=500, temperature=0.2)
    await adapter.complete(session, target(upstream.endpoint, max_tokens=100), request)
    assert upstream.last_json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 100,
        "temperature": 0.2,
    }
    assert upstream.last_headers["Authorization"] == f"Bearer {API_KEY}"
    assert upstream.last_headers["Content-Type"] == "application/json"


async def test_prompt_form_becomes_one_user_message_with_the_target_default(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    request = ProviderRequest(prompt="tell me", top_p=0.9, stop=("\n", "END"), seed=42)
    await adapter.complete(session, target(upstream.endpoint, max_tokens=64), request)
    assert upstream.last_json == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": 64,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "seed": 42,
    }


async def test_smaller_request_max_tokens_is_kept_and_no_key_means_no_header(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    request = ProviderRequest(prompt="x", max_tokens=10)
    await adapter.complete(
        session, target(upstream.endpoint, max_tokens=100, api_key=None), request
    )
    assert upstream.last_json["max_tokens"] == 10
    assert "Authorization" not in upstream.last_headers
    await adapter.complete(session, target(upstream.endpoint, api_key=None), CHAT)
    assert "max_tokens" not in upstream.last_json


STATUSES = [
    (400, BadRequest, False),
    (401, AuthError, False),
    (403, AuthError, False),
    (404, NotFound, False),
    (408, ServerError, True),
    (409, ServerError, True),
    (429, RateLimited, True),
    (500, ServerError, True),
    (503, ServerError, True),
    (529, Overloaded, True),
]


@pytest.mark.parametrize(("status", "cls", "retryable"), STATUSES)
async def test_error_status_maps_to_its_class(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    status: int,
    cls: type[ProviderError],
    retryable: bool,
) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return openai_error(status, f"upstream said {status}", "some_error", "some_code")

    upstream.reply = fail
    with pytest.raises(ProviderError) as info:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    exc = info.value
    assert type(exc) is cls
    assert exc.status == status
    assert exc.request_id == f"req-{status}"
    assert exc.retryable is retryable
    assert (exc.provider, exc.model) == ("openai_compatible", "gpt-test")
    assert f"upstream said {status}" in str(exc)


async def test_429_carries_retry_after(upstream: Upstream, session: aiohttp.ClientSession) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        response = openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded")
        response.headers["Retry-After"] = "3"
        return response

    upstream.reply = limited
    with pytest.raises(RateLimited) as info:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert info.value.retry_after == 3.0


async def test_retry_after_ms_is_preferred(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        response = openai_error(503, "busy", "server_error")
        response.headers["retry-after-ms"] = "250"
        response.headers["Retry-After"] = "9"
        return response

    upstream.reply = limited
    with pytest.raises(ServerError) as info:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert info.value.retry_after == 0.25


@pytest.mark.parametrize(
    ("message", "code", "cls"),
    [
        ("This model's maximum context length is 8192 tokens.", "context_length_exceeded", None),
        ("This model's maximum context length is 8192 tokens.", None, None),
        ("The response was filtered due to the prompt.", "content_filter", ContentFiltered),
        ("Invalid 'temperature': expected a number.", "invalid_value", BadRequest),
    ],
)
async def test_400_bodies_are_refined(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    message: str,
    code: str | None,
    cls: type[ProviderError] | None,
) -> None:
    async def fail(request: web.Request) -> web.StreamResponse:
        return openai_error(400, message, "invalid_request_error", code)

    upstream.reply = fail
    with pytest.raises(BadRequest) as info:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert type(info.value) is (cls or ContextLengthExceeded)
    assert not info.value.retryable


async def test_html_error_body_gives_a_short_readable_message(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body></html>"

    async def gateway(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text=page, content_type="text/html")

    upstream.reply = gateway
    with pytest.raises(ServerError) as info:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert info.value.status == 502
    assert "502 Bad Gateway" in info.value.message
    assert "<html" not in info.value.message
    assert len(info.value.message) <= 210


async def test_malformed_200_body_is_a_retryable_server_error(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    bodies = [b"not json at all", b'{"choices": []}', b'{"object": "chat.completion"}', b""]
    for body in bodies:

        async def broken(request: web.Request, body: bytes = body) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/json")

        upstream.reply = broken
        with pytest.raises(ServerError, match="malformed response") as info:
            await adapter.complete(session, target(upstream.endpoint), CHAT)
        assert info.value.status == 200
        assert info.value.retryable  # a glitch in transfer, not the request's fault


async def test_timeout_is_a_provider_timeout(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.0)
        return web.json_response(completion())

    upstream.reply = slow
    with pytest.raises(ProviderTimeout) as info:
        await adapter.complete(session, target(upstream.endpoint, timeout_ms=200), CHAT)
    assert info.value.retryable
    assert isinstance(info.value.__cause__, TimeoutError)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_a_connection_failure(session: aiohttp.ClientSession) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionFailed) as info:
        await adapter.complete(session, target(endpoint), CHAT)
    assert info.value.retryable
    assert info.value.__cause__ is not None


async def test_cancellation_is_not_translated(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(2.0)
        return web.json_response(completion())

    upstream.reply = slow
    task = asyncio.create_task(adapter.complete(session, target(upstream.endpoint), CHAT))
    await asyncio.wait_for(started.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_api_key_never_appears_in_errors(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def echo_key(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return openai_error(401, f"Incorrect API key provided: {auth}", "invalid_request_error")

    async def echo_key_html(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return web.Response(status=500, text=f"<p>bad {auth}</p>", content_type="text/html")

    async def echo_key_200(request: web.Request) -> web.StreamResponse:
        return web.Response(text=request.headers.get("Authorization", ""))

    errors: list[ProviderError] = []
    for reply in (echo_key, echo_key_html, echo_key_200):
        upstream.reply = reply
        with pytest.raises(ProviderError) as info:
            await adapter.complete(session, target(upstream.endpoint), CHAT)
        errors.append(info.value)
    with pytest.raises(ProviderError) as refused:
        await adapter.complete(session, target(f"http://127.0.0.1:{free_port()}/v1"), CHAT)
    errors.append(refused.value)
    assert isinstance(errors[0], AuthError)
    for exc in errors:
        for text in (str(exc), repr(exc), exc.message, str(exc.request_id), str(exc.args)):
            assert API_KEY not in text


async def test_neither_messages_nor_prompt_is_a_bad_request(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(BadRequest):
        await adapter.complete(session, target("http://127.0.0.1:9/v1"), ProviderRequest())


def test_openai_defaults_to_the_public_endpoint() -> None:
    empty = target("")
    assert OpenAIAdapter().endpoint_for(empty) == "https://api.openai.com/v1"
    assert OpenAIAdapter().endpoint_for(target("https://gw.example/v1")) == "https://gw.example/v1"
    assert OpenAICompatibleAdapter().endpoint_for(empty) == ""


async def test_openai_compatible_without_endpoint_is_a_bad_request(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(BadRequest, match="no endpoint"):
        await adapter.complete(session, target(""), CHAT)


def test_get_adapter_returns_one_instance_per_name() -> None:
    assert {"openai", "openai_compatible", "fake"} <= set(ADAPTER_NAMES)
    for name in ADAPTER_NAMES:
        assert get_adapter(name) is get_adapter(name)
        assert get_adapter(name).name == name
    assert isinstance(get_adapter("openai"), OpenAIAdapter)
    assert isinstance(get_adapter("fake"), FakeAdapter)
    with pytest.raises(KeyError, match="openai_compatible"):
        get_adapter("nope")


async def test_session_pool_shares_one_session_per_origin(upstream: Upstream) -> None:
    pool = SessionPool(limit_per_host=8)
    try:
        first = pool.get(upstream.endpoint)
        assert pool.get(upstream.endpoint.replace("/v1", "/other/v1")) is first
        assert pool.get("http://127.0.0.1:1/v1") is not first
        result = await adapter.complete(first, target(upstream.endpoint), CHAT)
        assert result.text == "Hello!"
        assert pool.stats()["sessions"] == 2
        with pytest.raises(ValueError):
            pool.get("not a url")
    finally:
        await pool.close()
    await pool.close()  # idempotent
    assert first.closed
    assert pool.stats()["sessions"] == 0
    with pytest.raises(RuntimeError):
        pool.get(upstream.endpoint)


def test_session_pool_constructor_does_no_io() -> None:
    pool = SessionPool()  # no running loop needed: sessions are created lazily
    assert pool.stats()["sessions"] == 0
    assert pool.stats()["limit_per_host"] == 256
