"""One contract, every adapter: each provider faked by a local server speaking its wire format.

A `Profile` knows one provider's side of the wire: where it expects the request and the key,
the exact body it documents for two standard requests, and how it answers (success, error).
Every test below runs once per profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

from llm_worker.adapters import ADAPTER_NAMES, get_adapter
from llm_worker.adapters.base import Adapter, Message, ProviderRequest, Target
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.secrets import Secret

API_KEY = "sk-contract-5e0f7a1c9b3d4e2f8a6b"
MODEL = "test-model"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FULL = ProviderRequest(
    messages=(
        Message("system", "be brief"),
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "again"),
    ),
    max_tokens=500,
    temperature=0.2,
    top_p=0.9,
    stop=("END",),
    seed=7,
)
PROMPT = ProviderRequest(prompt="tell me")
TWO_SYSTEMS = ProviderRequest(
    messages=(Message("system", "rule one"), Message("system", "rule two"), Message("user", "hi"))
)


class Profile:
    """OpenAI's chat completions; other providers override what differs."""

    provider = "openai_compatible"
    path = "/v1/chat/completions"
    suffix = "/v1"  # the target's endpoint is the server's base URL + this
    key_header = "Authorization"
    key_prefix = "Bearer "
    request_id_header = "x-request-id"
    finish = {"stop": "stop", "length": "length"}
    headers: dict[str, str] = {"Content-Type": "application/json"}
    malformed: tuple[bytes, ...] = (b'{"choices": []}', b'{"object": "chat.completion"}')

    def __init__(self, provider: str | None = None) -> None:
        self.provider = provider or self.provider

    @property
    def id(self) -> str:
        return self.provider

    @property
    def adapter(self) -> Adapter:
        return get_adapter(self.provider)

    def endpoint(self, base: str) -> str:
        return base + self.suffix

    def key_value(self) -> str:
        return self.key_prefix + API_KEY

    def success(self, text: str, finish: str | None, tokens: tuple[int, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]},
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "api_error", "param": None, "code": None}}

    def full_payload(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
            # OpenAI and Azure: max_tokens is deprecated and refused by the reasoning models
            self.max_tokens_key: 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["END"],
            "seed": 7,
        }

    @property
    def max_tokens_key(self) -> str:
        openai = self.provider in ("openai", "azure_openai")
        return "max_completion_tokens" if openai else "max_tokens"

    def prompt_payload(self) -> dict[str, Any]:
        return {"model": MODEL, "messages": [{"role": "user", "content": "tell me"}]}

    def two_systems_payload(self) -> dict[str, Any]:
        system = [{"role": "system", "content": c} for c in ("rule one", "rule two")]
        return {"model": MODEL, "messages": [*system, {"role": "user", "content": "hi"}]}


class Azure(Profile):
    provider = "azure_openai"
    path = "/openai/deployments/test-model/chat/completions?api-version=2024-10-21"
    suffix = key_prefix = ""
    key_header = "api-key"

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": str(status), "message": message}}


class HFChat(Profile):
    provider = "huggingface"
    suffix = ""

    @property
    def id(self) -> str:
        return "huggingface-chat"

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message, "error_type": "generation"}


class HFGenerate(HFChat):
    path = suffix = "/generate"
    finish = {"stop": "eos_token", "length": "length"}
    malformed = (b"[]", b'{"details": {}}', b'{"generated_text": 5}', b"[1, 2]")

    @property
    def id(self) -> str:
        return "huggingface-generate"

    def success(self, text: str, finish: str | None, tokens: tuple[int, int]) -> dict[str, Any]:
        prefill = [{"id": i, "text": "t", "logprob": None} for i in range(tokens[0])]
        details = {"finish_reason": finish, "generated_tokens": tokens[1], "prefill": prefill}
        return {"generated_text": text, "details": {**details, "seed": None, "tokens": []}}

    def full_payload(self) -> dict[str, Any]:
        inputs = "system: be brief\nuser: hi\nassistant: hello\nuser: again\nassistant:"
        parameters = {"max_new_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop": ["END"]}
        return {"inputs": inputs, "parameters": {**parameters, "seed": 7, "details": True}}

    def prompt_payload(self) -> dict[str, Any]:
        return {"inputs": "tell me", "parameters": {"details": True}}

    def two_systems_payload(self) -> dict[str, Any]:
        inputs = "system: rule one\nsystem: rule two\nuser: hi\nassistant:"
        return {"inputs": inputs, "parameters": {"details": True}}


class Anthropic(Profile):
    provider = "anthropic"
    path = "/v1/messages"
    suffix = key_prefix = ""
    key_header = "x-api-key"
    request_id_header = "request-id"
    finish = {"stop": "end_turn", "length": "max_tokens"}
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    malformed = (b'{"id": "msg_1", "type": "message"}', b'{"content": "oops"}')
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    kinds |= {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}

    def success(self, text: str, finish: str | None, tokens: tuple[int, int]) -> dict[str, Any]:
        return {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": text}],
            "stop_reason": finish,
            "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        kind = self.kinds.get(status, "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def full_payload(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "max_tokens": 100,
            "system": "be brief",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
        }

    def prompt_payload(self) -> dict[str, Any]:
        user = {"role": "user", "content": "tell me"}
        return {"model": MODEL, "max_tokens": 1024, "messages": [user]}

    def two_systems_payload(self) -> dict[str, Any]:
        user = {"role": "user", "content": "hi"}
        return {
            "model": MODEL,
            "max_tokens": 1024,
            "system": "rule one\n\nrule two",
            "messages": [user],
        }


class Gemini(Profile):
    provider = "gemini"
    path = "/v1beta/models/test-model:generateContent"
    suffix = key_prefix = ""
    key_header = "x-goog-api-key"
    finish = {"stop": "STOP", "length": "MAX_TOKENS"}
    malformed = (b"{}", b'{"candidates": []}', b'{"candidates": "none"}')
    statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
    statuses |= {404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}

    def success(self, text: str, finish: str | None, tokens: tuple[int, int]) -> dict[str, Any]:
        content = {"role": "model", "parts": [{"text": text}]}
        usage = {"promptTokenCount": tokens[0], "candidatesTokenCount": tokens[1]}
        return {
            "candidates": [{"content": content, "finishReason": finish, "index": 0}],
            "usageMetadata": {**usage, "totalTokenCount": sum(tokens)},
            "modelVersion": MODEL,
        }

    def error(self, status: int, message: str) -> dict[str, Any]:
        grpc = self.statuses.get(status, "UNAVAILABLE")
        return {"error": {"code": status, "message": message, "status": grpc}}

    def full_payload(self) -> dict[str, Any]:
        return {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "again"}]},
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {
                "maxOutputTokens": 100,
                "temperature": 0.2,
                "topP": 0.9,
                "stopSequences": ["END"],
                "seed": 7,
            },
        }

    def prompt_payload(self) -> dict[str, Any]:
        return {"contents": [{"role": "user", "parts": [{"text": "tell me"}]}]}

    def two_systems_payload(self) -> dict[str, Any]:
        system = {"parts": [{"text": "rule one"}, {"text": "rule two"}]}
        user = {"role": "user", "parts": [{"text": "hi"}]}
        return {"contents": [user], "systemInstruction": system}


PROFILES = [
    Profile("openai"),
    Profile("openai_compatible"),
    Profile("fake"),
    Azure(),
    Anthropic(),
    HFChat(),
    HFGenerate(),
    Gemini(),
]


class Upstream:
    """The provider side: records what arrives, answers with whatever the test scripted."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.base = ""
        self.received: list[tuple[str, CIMultiDict[str], bytes]] = []
        self.reply: Handler = self.ok

    async def ok(self, request: web.Request) -> web.StreamResponse:
        body = self.profile.success("Hello!", self.profile.finish["stop"], (11, 3))
        return web.json_response(body, headers={self.profile.request_id_header: "req-ok-1"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append((request.path_qs, CIMultiDict(request.headers), await request.read()))
        return await self.reply(request)

    @property
    def last_json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.received[-1][2])
        return decoded

    def target(self, **overrides: Any) -> Target:
        fields: dict[str, Any] = {
            "provider": self.profile.provider,
            "endpoint": self.profile.endpoint(self.base),
            "model": MODEL,
            "endpoint_name": "primary:contract",
            "api_key": Secret("contract-key", API_KEY),
            "timeout_ms": 5_000,
        }
        fields.update(overrides)
        return Target(**fields)

    async def call(self, request: ProviderRequest = FULL, **overrides: Any) -> Any:
        async with aiohttp.ClientSession() as session:
            return await self.profile.adapter.complete(session, self.target(**overrides), request)


@contextlib.asynccontextmanager
async def serve(profile: Profile) -> AsyncIterator[Upstream]:
    """A local server playing `profile`'s provider for the duration of the block."""
    up = Upstream(profile)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield up
    finally:
        await runner.cleanup()


@pytest.fixture(params=PROFILES, ids=lambda p: p.id)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    async with serve(request.param) as up:
        yield up


def replying(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    """A handler answering `body` as JSON (bytes and str are sent as they are)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes | str):
            return web.Response(body=body, status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return reply


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("finish", ["stop", "length"])
async def test_success_maps_text_usage_finish_reason_and_request_id(
    upstream: Upstream, finish: str
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = upstream.profile.success("Hi there", upstream.profile.finish[finish], (21, 4))
        return web.json_response(body, headers={upstream.profile.request_id_header: "req-7"})

    upstream.reply = answer
    result = await upstream.call(max_tokens=100)
    assert result.text == "Hi there"
    assert result.finish_reason == finish
    assert (result.input_tokens, result.output_tokens) == (21, 4)
    assert result.request_id == "req-7"


async def test_request_goes_to_the_documented_path_with_the_documented_body(
    upstream: Upstream,
) -> None:
    profile = upstream.profile
    await upstream.call(FULL, max_tokens=100)
    path, headers, _ = upstream.received[-1]
    assert path == profile.path
    assert upstream.last_json == profile.full_payload()
    assert headers[profile.key_header] == profile.key_value()
    for name, value in profile.headers.items():
        assert headers[name] == value
    assert API_KEY not in path
    await upstream.call(PROMPT)
    assert upstream.last_json == profile.prompt_payload()


async def test_system_prompts_go_where_the_provider_wants_them(upstream: Upstream) -> None:
    await upstream.call(TWO_SYSTEMS)
    assert upstream.last_json == upstream.profile.two_systems_payload()


async def test_no_key_means_no_key_header(upstream: Upstream) -> None:
    await upstream.call(PROMPT, api_key=None)
    assert upstream.profile.key_header not in upstream.received[-1][1]


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
    upstream: Upstream, status: int, cls: type[ProviderError], retryable: bool
) -> None:
    profile = upstream.profile

    async def fail(request: web.Request) -> web.StreamResponse:
        headers = {profile.request_id_header: f"req-{status}"}
        if status == 429:
            headers["Retry-After"] = "3"
        body = profile.error(status, f"upstream said {status}")
        return web.json_response(body, status=status, headers=headers)

    upstream.reply = fail
    with pytest.raises(ProviderError) as info:
        await upstream.call()
    exc = info.value
    assert type(exc) is cls
    assert exc.status == status
    assert exc.request_id == f"req-{status}"
    assert exc.retryable is retryable
    assert (exc.provider, exc.model) == (profile.adapter.name, MODEL)
    assert f"upstream said {status}" in str(exc)
    assert exc.retry_after == (3.0 if status == 429 else None)


async def test_html_error_body_gives_a_short_readable_message(upstream: Upstream) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body></html>"

    async def gateway(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text=page, content_type="text/html")

    upstream.reply = gateway
    with pytest.raises(ServerError) as info:
        await upstream.call()
    assert info.value.status == 502
    assert "502 Bad Gateway" in info.value.message
    assert "<html" not in info.value.message
    assert len(info.value.message) <= 210


async def test_malformed_200_body_is_a_retryable_server_error(upstream: Upstream) -> None:
    for body in (b"not json at all", b"", b"<html>ok</html>", *upstream.profile.malformed):

        async def broken(request: web.Request, body: bytes = body) -> web.StreamResponse:
            return web.Response(body=body, content_type="application/json")

        upstream.reply = broken
        with pytest.raises(ServerError, match="malformed response") as info:
            await upstream.call()
        assert info.value.status == 200, body
        assert info.value.retryable, body  # a glitch in transfer, not the request's fault


async def test_timeout_is_a_provider_timeout(upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2.0)
        return await upstream.ok(request)

    upstream.reply = slow
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderTimeout) as info:
        await upstream.call(timeout_ms=200)
    assert loop.time() - started < 1.5
    assert info.value.retryable
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_connection_refused_is_a_connection_failure(upstream: Upstream) -> None:
    upstream.base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed) as info:
        await upstream.call()
    assert info.value.retryable
    assert info.value.__cause__ is not None


async def test_cancellation_is_not_translated(upstream: Upstream) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(2.0)
        return await upstream.ok(request)

    upstream.reply = slow
    task = asyncio.create_task(upstream.call())
    await asyncio.wait_for(started.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_neither_messages_nor_prompt_is_a_bad_request(upstream: Upstream) -> None:
    with pytest.raises(BadRequest):
        await upstream.call(ProviderRequest())
    assert upstream.received == []


async def test_api_key_never_appears_in_errors(upstream: Upstream) -> None:
    profile = upstream.profile

    def echoed(request: web.Request) -> str:
        return request.headers.get(profile.key_header, "")

    async def in_json(request: web.Request) -> web.StreamResponse:
        body = profile.error(401, f"Incorrect API key provided: {echoed(request)}")
        return web.json_response(body, status=401, headers={"x-request-id": echoed(request)})

    async def in_html(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=500, text=f"<p>bad {echoed(request)}</p>", content_type="text/html"
        )

    async def in_200(request: web.Request) -> web.StreamResponse:
        return web.Response(text=echoed(request))

    errors: list[ProviderError] = []
    for reply in (in_json, in_html, in_200):
        upstream.reply = reply
        with pytest.raises(ProviderError) as info:
            await upstream.call()
        errors.append(info.value)
    assert isinstance(errors[0], AuthError)
    upstream.base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProviderError) as refused:
        await upstream.call()
    errors.append(refused.value)
    assert len(upstream.received) == 3
    for exc in errors:
        for text in (str(exc), repr(exc), exc.message, str(exc.request_id), str(exc.args)):
            assert API_KEY not in text


def test_every_registered_adapter_is_under_contract() -> None:
    assert set(ADAPTER_NAMES) == {p.provider for p in PROFILES}
    for name in ADAPTER_NAMES:
        assert get_adapter(name) is get_adapter(name)
        assert get_adapter(name).name == name
