"""Streaming over OpenAI's chat-completions wire format: golden streams from OpenAI's documented
examples served by a tiny server, the failures a stream can end in, and the fake provider's
stream against its own whole answer (the contract the worker relies on: a streamed answer is
field for field the answer `complete` gives)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters.azure_openai import AzureOpenAIAdapter
from llm_worker.adapters.base import (
    Message,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    StreamDelta,
    Target,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.adapters.errors import (
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    Overloaded,
    ProviderTimeout,
    RateLimited,
    ResponseTooLarge,
    ServerError,
)
from llm_worker.adapters.fake import FakeAdapter
from llm_worker.adapters.openai_compatible import OpenAIAdapter, OpenAICompatibleAdapter
from llm_worker.adapters.secrets import Secret
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

API_KEY = "sk-test-4b1d9e0c7a2f5e8d"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
adapter = OpenAICompatibleAdapter()


def events(*chunks: Any) -> list[bytes]:
    """Each chunk as one `data:` event (dicts as JSON, strings as they are)."""
    return [
        b"data: " + (c.encode() if isinstance(c, str) else msgspec.json.encode(c)) + b"\n\n"
        for c in chunks
    ]


# -- golden streams ---------------------------------------------------------------------------
# The chat completion chunk object, as the API reference documents it
# (platform.openai.com/docs/api-reference/chat-streaming/streaming): a first chunk with the role
# and empty content, content chunks, a chunk with an empty delta and the finish reason; with
# `stream_options: {"include_usage": true}` every chunk has `"usage": null` and one more chunk,
# `choices` empty, carries the usage before `data: [DONE]` (the `stream_options` parameter of
# platform.openai.com/docs/api-reference/chat/create, and the cookbook's "How to stream
# completions", section 4).


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}
WORDS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
TEXT_STREAM = events(
    chunk({"role": "assistant", "content": ""}, usage=None),
    *(chunk({"content": w}, usage=None) for w in WORDS),
    chunk({}, "stop", usage=None),
    {**chunk({}), "choices": [], "usage": USAGE},
    "[DONE]",
)

# The function-calling guide's streaming example (platform.openai.com/docs/guides/
# function-calling, "Streaming"): the call's id and name come first with empty arguments, then
# pieces of the arguments with id and name null, then the finish reason `tool_calls`.
ARGUMENT_PIECES = ['{"', "location", '":"', "Paris", ",", " France", '"}']


def tool_delta(index: int, piece: str, call_id: str | None = None, name: str | None = None) -> Any:
    function = {"arguments": piece, "name": name}
    kind = "function" if call_id else None
    return {"tool_calls": [{"index": index, "id": call_id, "function": function, "type": kind}]}


TOOL_STREAM = events(
    chunk({"role": "assistant", "content": None}),
    chunk(tool_delta(0, "", "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather")),
    *(chunk(tool_delta(0, p)) for p in ARGUMENT_PIECES),
    chunk({}, "tool_calls"),
    "[DONE]",
)


# -- the server -------------------------------------------------------------------------------


class Upstream:
    """Answers every POST with what the test scripted; keeps what arrived."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.reply: Handler = self.ok

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return await write_stream(request, TEXT_STREAM)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(msgspec.json.decode(await request.read()))
        return await self.reply(request)

    @property
    def endpoint(self) -> str:
        return self.url + "/v1"


async def write_stream(
    request: web.Request,
    chunks: Sequence[bytes],
    *,
    pause: float = 0.0,
    then: str = "end",
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """`chunks` written one by one (`pause` apart), then the stream ends (`end`), the
    connection is aborted (`abort`) or left open for a while (`hang`)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "x-request-id": "req-stream-1"}
        | (headers or {})
    )
    await response.prepare(request)
    for i, piece in enumerate(chunks):
        if i and pause:
            await asyncio.sleep(pause)
        await response.write(piece)
    if then == "abort" and request.transport is not None:
        request.transport.abort()
        return response
    if then == "hang":
        await asyncio.sleep(2)
    await response.write_eof()
    return response


def replying(chunks: Sequence[bytes], **options: Any) -> Handler:
    async def reply(request: web.Request) -> web.StreamResponse:
        return await write_stream(request, chunks, **options)

    return reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
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
        "model": "gpt-4o-mini",
        "endpoint_name": "primary:test",
        "api_key": Secret("test-key", API_KEY),
        "timeout_ms": 5_000,
    }
    fields.update(overrides)
    return Target(**fields)


CHAT = ProviderRequest(messages=(Message("user", "hi"),))
WEATHER = Tool(
    "get_weather",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)


async def stream(
    session: aiohttp.ClientSession,
    tgt: Target,
    request: ProviderRequest = CHAT,
    using: OpenAICompatibleAdapter = adapter,
) -> tuple[ProviderResult, list[StreamDelta]]:
    deltas: list[StreamDelta] = []
    result = await using.stream(session, tgt, request, deltas.append)
    return result, deltas


def joined_calls(deltas: list[StreamDelta]) -> dict[int, tuple[str, str, str]]:
    """The tool calls the deltas add up to: index -> (id, name, arguments text)."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call = calls.setdefault(piece.index, ["", "", ""])
            call[0] = piece.id or call[0]
            call[1] = piece.name or call[1]
            call[2] += piece.arguments
    return {i: (c[0], c[1], c[2]) for i, c in calls.items()}


# -- the request ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["openai", "llama_cpp"])
async def test_the_body_asks_for_a_stream_and_its_usage(
    upstream: Upstream, session: aiohttp.ClientSession, dialect: str
) -> None:
    await stream(session, target(upstream.endpoint, dialect=dialect))
    body = upstream.bodies[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    plain = msgspec.json.decode(adapter.build_body(target(upstream.endpoint), CHAT))
    assert "stream" not in plain and "stream_options" not in plain
    assert {k: v for k, v in body.items() if not k.startswith("stream")} == plain


def test_openai_streams_with_its_own_token_cap_field() -> None:
    tgt = target("https://api.openai.com/v1", provider="openai", max_tokens=50)
    body = msgspec.json.decode(OpenAIAdapter().build_stream_body(tgt, CHAT))
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("endpoint", "options"),
    [
        ("https://r.openai.azure.com", {"include_usage": True}),  # the default 2024-10-21
        (
            "https://r.openai.azure.com/openai?api-version=2025-01-01-preview",
            {"include_usage": True},
        ),
        ("https://r.openai.azure.com/openai?api-version=2024-06-01", None),  # refuses the field
    ],
)
def test_azure_asks_for_usage_only_where_its_api_version_takes_it(
    endpoint: str, options: dict[str, bool] | None
) -> None:
    body = msgspec.json.decode(
        AzureOpenAIAdapter().build_stream_body(target(endpoint, provider="azure_openai"), CHAT)
    )
    assert body["stream"] is True
    assert body.get("stream_options") == options


# -- golden streams ---------------------------------------------------------------------------


async def test_documented_text_stream_with_usage(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    result, deltas = await stream(session, target(upstream.endpoint))
    assert [d.text for d in deltas] == WORDS
    assert result.text == "".join(WORDS) == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (19, 10)
    assert (result.cached_input_tokens, result.reasoning_tokens) == (4, 2)
    assert result.response_id == "chatcmpl-123"
    assert result.response_model == "gpt-4o-mini"
    assert result.request_id == "req-stream-1"
    assert result.tool_calls == ()


async def test_the_answer_id_stands_in_for_a_missing_request_id_header(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    async def no_header(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in TEXT_STREAM:
            await response.write(piece)
        await response.write_eof()
        return response

    upstream.reply = no_header
    result, _ = await stream(session, target(upstream.endpoint))
    assert result.request_id == "chatcmpl-123"


async def test_documented_tool_call_stream(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(TOOL_STREAM)
    request = ProviderRequest(messages=CHAT.messages, tools=(WEATHER,))
    result, deltas = await stream(session, target(upstream.endpoint), request)
    assert all(d.text == "" for d in deltas)
    first = deltas[0].tool_calls[0]
    assert (first.index, first.id, first.name, first.arguments) == (
        0,
        "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "get_weather",
        "",
    )
    assert [d.tool_calls[0].arguments for d in deltas[1:]] == ARGUMENT_PIECES
    assert all(d.tool_calls[0].id is None and d.tool_calls[0].name is None for d in deltas[1:])
    assert result.tool_calls == (
        ToolCall("call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}),
    )
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    assert (result.input_tokens, result.output_tokens) == (0, 0)  # no usage chunk was asked


async def test_parallel_tool_calls_interleaved_by_index(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(
        events(
            chunk(tool_delta(0, "", "call_a", "get_weather")),
            chunk(tool_delta(1, "", "call_b", "get_weather")),
            chunk(tool_delta(0, '{"location":')),
            chunk(tool_delta(1, '{"location":"Oslo"}')),
            chunk(tool_delta(0, '"Rome"}')),
            chunk({}, "tool_calls"),
            "[DONE]",
        )
    )
    result, deltas = await stream(session, target(upstream.endpoint))
    assert joined_calls(deltas) == {
        0: ("call_a", "get_weather", '{"location":"Rome"}'),
        1: ("call_b", "get_weather", '{"location":"Oslo"}'),
    }
    assert result.tool_calls == (
        ToolCall("call_a", "get_weather", {"location": "Rome"}),
        ToolCall("call_b", "get_weather", {"location": "Oslo"}),
    )


async def test_arguments_that_are_no_json_object_are_kept_unparsed(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(
        events(
            chunk(tool_delta(0, "", "call_x", "get_weather")),
            chunk(tool_delta(0, "not json")),
            chunk({}, "tool_calls"),
        )
    )
    result, _ = await stream(session, target(upstream.endpoint))
    assert result.tool_calls == (ToolCall("call_x", "get_weather", {}, unparsed="not json"),)


async def test_usage_on_the_finish_chunk_and_the_deprecated_finish_name(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    # llama.cpp's server puts usage on the chunk with the finish reason; `function_call` is
    # the deprecated name of `tool_calls`, normalised as `parse_result` does
    upstream.reply = replying(
        events(
            chunk({"content": "x"}),
            chunk({}, "function_call", usage={"prompt_tokens": 3, "completion_tokens": 1}),
            "[DONE]",
        )
    )
    result, _ = await stream(session, target(upstream.endpoint))
    assert result.finish_reason == "tool_calls"
    assert (result.input_tokens, result.output_tokens) == (3, 1)


async def test_done_ends_the_read_even_when_the_connection_stays_open(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(TEXT_STREAM, then="hang")
    result = await asyncio.wait_for(stream(session, target(upstream.endpoint)), 1.5)
    assert result[0].text == "Hello! How can I help you today?"


async def test_a_stream_that_ends_after_its_finish_reason_without_done_is_whole(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(events(chunk({"content": "ok"}), chunk({}, "length")))
    result, deltas = await stream(session, target(upstream.endpoint))
    assert (result.text, result.finish_reason) == ("ok", "length")
    assert [d.text for d in deltas] == ["ok"]


async def test_keep_alive_comments_and_crlf_framing(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    framed = [e.replace(b"\n", b"\r\n") for e in TEXT_STREAM]
    upstream.reply = replying([b": keep-alive\r\n\r\n", *framed])
    result, _ = await stream(session, target(upstream.endpoint))
    assert result.text == "Hello! How can I help you today?"


# -- failures ---------------------------------------------------------------------------------


def error_event(kind: str, code: Any, message: str) -> bytes:
    return events({"error": {"message": message, "type": kind, "param": None, "code": code}})[0]


@pytest.mark.parametrize(
    ("kind", "code", "message", "cls", "status"),
    [
        ("server_error", None, "The server had an error", ServerError, 500),
        ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached", RateLimited, 429),
        (
            "invalid_request_error",
            "context_length_exceeded",
            "maximum context length is 128000 tokens",
            ContextLengthExceeded,
            400,
        ),
        ("BadRequestError", 400, "vLLM: bad request", BadRequest, 400),  # vLLM's numeric code
        ("overloaded_error", None, "Overloaded", Overloaded, 529),
        ("weird", None, "no status known", ServerError, 500),
    ],
)
async def test_an_error_event_mid_stream_is_classified_like_an_error_body(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    kind: str,
    code: Any,
    message: str,
    cls: type[Exception],
    status: int,
) -> None:
    upstream.reply = replying([*TEXT_STREAM[:3], error_event(kind, code, message)])
    deltas: list[StreamDelta] = []
    with pytest.raises(cls) as caught:
        await adapter.stream(session, target(upstream.endpoint), CHAT, deltas.append)
    assert type(caught.value) is cls
    assert message[:20] in str(caught.value)
    assert getattr(caught.value, "status", None) == status
    assert [d.text for d in deltas] == ["Hello", "!"]  # what came before was given on


async def test_an_error_event_never_shows_the_api_key(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying([error_event("server_error", None, f"bad key {API_KEY}")])
    with pytest.raises(ServerError) as caught:
        await stream(session, target(upstream.endpoint))
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("then", ["end", "abort"])
async def test_a_stream_cut_before_its_finish_is_a_connection_failure(
    upstream: Upstream, session: aiohttp.ClientSession, then: str
) -> None:
    upstream.reply = replying(TEXT_STREAM[:4], then=then)
    with pytest.raises(ConnectionFailed):
        await stream(session, target(upstream.endpoint))


async def test_a_stall_longer_than_the_idle_limit_is_a_timeout_that_says_so(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(TEXT_STREAM[:3], then="hang")
    with pytest.raises(ProviderTimeout, match="stalled") as caught:
        await stream(session, target(upstream.endpoint, stream_idle_ms=200))
    assert "200 ms" in str(caught.value)


async def test_slow_events_within_the_idle_limit_are_no_stall(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(TEXT_STREAM, pause=0.05)
    result, _ = await stream(session, target(upstream.endpoint, stream_idle_ms=400))
    assert result.finish_reason == "stop"


async def test_a_stream_over_the_byte_cap_is_too_large(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying(TEXT_STREAM)
    with pytest.raises(ResponseTooLarge):
        await stream(session, target(upstream.endpoint, max_response_bytes=600))


async def test_a_malformed_chunk_is_a_retryable_server_error(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    upstream.reply = replying([TEXT_STREAM[0], b'data: {"choices": 7}\n\n'])
    with pytest.raises(ServerError, match="malformed stream"):
        await stream(session, target(upstream.endpoint))


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, RateLimited),
        (
            400,
            {"error": {"message": "too long", "code": "context_length_exceeded"}},
            ContextLengthExceeded,
        ),
        (503, {"error": {"message": "busy", "type": "server_error"}}, ServerError),
    ],
)
async def test_a_refused_stream_is_classified_as_for_complete(
    upstream: Upstream,
    session: aiohttp.ClientSession,
    status: int,
    body: dict[str, Any],
    cls: type[Exception],
) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers={"Retry-After": "3"})

    upstream.reply = refuse
    with pytest.raises(cls) as streamed:
        await stream(session, target(upstream.endpoint))
    with pytest.raises(cls) as completed:
        await adapter.complete(session, target(upstream.endpoint), CHAT)
    assert str(streamed.value) == str(completed.value)
    assert getattr(streamed.value, "retry_after", None) == getattr(
        completed.value, "retry_after", None
    )


async def test_a_json_answer_instead_of_a_stream_is_one_delta(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    answer = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "whole answer",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location":"X"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }

    async def whole(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer)

    upstream.reply = whole
    result, deltas = await stream(session, target(upstream.endpoint))
    assert len(deltas) == 1
    assert deltas[0].text == result.text == "whole answer"
    assert joined_calls(deltas) == {0: ("call_1", "get_weather", '{"location":"X"}')}
    assert result == await adapter.complete(session, target(upstream.endpoint), CHAT)


async def test_azure_streams_through_its_deployment_url_and_refuses_a_filtered_answer(
    upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    azure = AzureOpenAIAdapter()
    # Azure's stream opens with a chunk carrying only prompt_filter_results (no choices, no id)
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
    first["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
    upstream.reply = replying(events(first, chunk({}, "content_filter"), "[DONE]"))
    tgt = target(upstream.url, provider="azure_openai")
    with pytest.raises(ContentFiltered):
        await stream(session, tgt, using=azure)
    upstream.reply = replying([*events(first), *TEXT_STREAM[1:]])
    result, _ = await stream(session, tgt, using=azure)
    assert result.text == "Hello! How can I help you today?"
    assert result.response_id == "chatcmpl-123"


# -- the fake provider: a stream is the same answer as complete --------------------------------


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


def fake_target(server: FakeServer, **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": "fake",
        "endpoint": server.endpoint(),
        "model": "fake-model",
        "endpoint_name": "fake:default",
        "timeout_ms": 5_000,
    }
    return Target(**(fields | overrides))


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "n": {"type": "integer", "minimum": 3}},
    "required": ["city", "n"],
}
FAKE_REQUESTS = {
    "text": ProviderRequest(
        messages=(Message("system", "be a test"), Message("user", "  hello   big\tworld "))
    ),
    "cut": ProviderRequest(prompt="one two three four five", max_tokens=3),
    "tool": ProviderRequest(
        prompt="call the tool please", tools=(WEATHER,), tool_choice=ToolChoice("required")
    ),
    "tool_result": ProviderRequest(
        messages=(
            Message("user", "use the tool"),
            Message(
                "assistant", None, tool_calls=(ToolCall("c1", "get_weather", {"location": "X"}),)
            ),
            Message("tool", "sunny and 21 degrees", tool_call_id="c1"),
        ),
        tools=(WEATHER,),
    ),
    "json_schema": ProviderRequest(
        prompt="give json", response_format=ResponseFormat("json_schema", "out", SCHEMA)
    ),
    "json_object": ProviderRequest(
        prompt="give an object", response_format=ResponseFormat("json_object")
    ),
}


def same_answer(result: ProviderResult) -> ProviderResult:
    """The result without what differs per request (its number: ids)."""
    calls = tuple(msgspec.structs.replace(c, id="") for c in result.tool_calls)
    return msgspec.structs.replace(result, request_id=None, response_id=None, tool_calls=calls)


@pytest.mark.parametrize("name", list(FAKE_REQUESTS))
async def test_the_fake_streams_the_same_answer_as_it_completes(
    fake_server: FakeServer, session: aiohttp.ClientSession, name: str
) -> None:
    fake = FakeAdapter()
    request = FAKE_REQUESTS[name]
    streamed, deltas = await stream(session, fake_target(fake_server), request, using=fake)
    completed = await fake.complete(session, fake_target(fake_server), request)
    assert same_answer(streamed) == same_answer(completed)
    assert streamed.request_id and streamed.request_id.startswith("fake-")
    assert streamed.response_id and streamed.response_id.startswith("chatcmpl-fake-")
    assert "".join(d.text for d in deltas) == streamed.text
    assert joined_calls(deltas) == {
        i: (c.id, c.name, msgspec.json.encode(c.arguments).decode())
        for i, c in enumerate(streamed.tool_calls)
    }
    assert [c.streamed for c in fake_server.calls()] == [True, False]
    if name in ("text", "tool_result"):
        assert len(deltas) > 2  # word by word, not one delta


async def test_the_fake_streams_word_by_word_in_openais_shape(
    fake_server: FakeServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "a b"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with session.post(fake_server.endpoint() + "/chat/completions", json=body) as resp:
        assert resp.content_type == "text/event-stream"
        assert resp.headers["x-request-id"].startswith("fake-")
        raw = (await resp.read()).decode()
    datas = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert datas[-1] == "[DONE]"
    chunks = [msgspec.json.decode(d) for d in datas[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert words == ["[fake:fake-model]", " a", " b"]
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}

    del body["stream_options"]  # no usage chunk unless asked
    async with session.post(fake_server.endpoint() + "/chat/completions", json=body) as resp:
        raw = (await resp.read()).decode()
    datas = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    last = msgspec.json.decode(datas[-2])
    assert last["choices"][0]["finish_reason"] == "stop" and "usage" not in last


async def test_the_fake_stream_cut_by_its_profile_is_a_connection_failure(
    fake_server: FakeServer, session: aiohttp.ClientSession
) -> None:
    fake_server.set_profile("default", stream_break_after=2)
    deltas: list[StreamDelta] = []
    with pytest.raises(ConnectionFailed):
        await FakeAdapter().stream(
            session, fake_target(fake_server), FAKE_REQUESTS["text"], deltas.append
        )
    assert [d.text for d in deltas] == ["[fake:fake-model]"]


async def test_the_fake_stream_paced_slower_than_the_idle_limit_stalls(
    fake_server: FakeServer, session: aiohttp.ClientSession
) -> None:
    fake_server.set_profile("default", token_delay_ms=300)
    with pytest.raises(ProviderTimeout, match="stalled"):
        await stream(
            session,
            fake_target(fake_server, stream_idle_ms=100),
            FAKE_REQUESTS["text"],
            FakeAdapter(),
        )


async def test_a_first_byte_slower_than_the_idle_limit_is_no_stall_within_the_row_timeout(
    fake_server: FakeServer, session: aiohttp.ClientSession
) -> None:
    """The row's `timeout_ms` bounds the wait for the answer's headers; the idle limit only the
    gaps between reads once it streams."""
    fake_server.set_profile("default", latency_ms=300)
    result, deltas = await stream(
        session,
        fake_target(fake_server, stream_idle_ms=100, timeout_ms=5_000),
        FAKE_REQUESTS["text"],
        FakeAdapter(),
    )
    assert result.finish_reason == "stop" and "".join(d.text for d in deltas) == result.text


async def test_no_headers_within_the_row_timeout_is_a_timeout(
    fake_server: FakeServer, session: aiohttp.ClientSession
) -> None:
    fake_server.set_profile("default", latency_ms=500)
    with pytest.raises(ProviderTimeout, match="no answer within 200 ms"):
        await stream(
            session,
            fake_target(fake_server, stream_idle_ms=10_000, timeout_ms=200),
            FAKE_REQUESTS["text"],
            FakeAdapter(),
        )


async def test_a_finished_stream_leaves_its_connection_for_the_next_call(
    fake_server: FakeServer,
) -> None:
    """After `[DONE]` the response is read to its end, so the pooled connection is used again
    (against a real provider: no new TLS handshake per streamed call)."""
    created = 0

    async def on_create(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(trace_configs=[trace]) as own:
        for _ in range(3):
            result, _deltas = await stream(
                own, fake_target(fake_server), FAKE_REQUESTS["text"], FakeAdapter()
            )
            assert result.finish_reason == "stop"
    assert created == 1
