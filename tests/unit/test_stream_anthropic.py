"""Anthropic's Messages API streamed: the documented event streams read into the answer the
whole body gives, error events mid-stream, cut streams, and the fake's stream against its
whole answer."""

# ruff: noqa: E501 (the documented streams are kept as printed, one event per line)

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters.anthropic import AnthropicAdapter
from llm_worker.adapters.base import (
    Message,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    StreamDelta,
    Target,
    ToolChoice,
)
from llm_worker.adapters.errors import (
    BadRequest,
    ConnectionFailed,
    Overloaded,
    RateLimited,
    ServerError,
)
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

from .test_adapter_contract import Anthropic, Upstream, replying, serve
from .test_fake_anthropic import WEATHER, ask, target

adapter = AnthropicAdapter()

# -- the documented streams --------------------------------------------------------------------
# From Anthropic's "Streaming Messages" page (docs.anthropic.com/en/docs/build-with-claude/
# streaming, now platform.claude.com/docs/en/build-with-claude/streaming), as printed there.

BASIC = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""
BASIC_WHOLE = {
    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "Hello!"}],
    "model": "claude-opus-4-20250514",
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 15},
}


def _text_deltas(index: int, pieces: list[str]) -> str:
    return "".join(
        "event: content_block_delta\ndata: "
        + msgspec.json.encode({"type": "content_block_delta", "index": index, "delta": d}).decode()
        + "\n\n"
        for d in ({"type": "text_delta", "text": p} for p in pieces)
    )


# "Streaming request with tool use" (same page): a text block, then a tool_use block whose
# input arrives as input_json_delta pieces. The thirteen text deltas are written out below by
# `_text_deltas` (the page prints one event per piece, as here).
TOOL_TEXT = [
    "Okay",
    ",",
    " let",
    "'s",
    " check",
    " the",
    " weather",
    " for",
    " San",
    " Francisco",
    ",",
    " CA",
    ":",
]
TOOL_USE = (
    """event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

"""
    + _text_deltas(0, TOOL_TEXT)
    + """event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"unit\\": \\"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""
).encode()
WEATHER_INPUT = {"location": "San Francisco, CA", "unit": "fahrenheit"}
TOOL_WHOLE = {
    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-20250514",
    "content": [
        {"type": "text", "text": "".join(TOOL_TEXT)},
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": WEATHER_INPUT,
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 472, "output_tokens": 89},
}

# "Streaming request with extended thinking" (same page): a thinking block (thinking_delta,
# signature_delta) before the text; no usage in message_start or message_delta.
THINKING = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_01...", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-20250514", "stop_reason": null, "stop_sequence": null}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me solve this step by step:\\n\\n1. First break down 27 * 453"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "\\n2. 453 = 400 + 50 + 3"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: content_block_start
data: {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "27 * 453 = 12,231"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 1}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}}

event: message_stop
data: {"type": "message_stop"}

"""
THINKING_WHOLE = {
    "id": "msg_01...",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-20250514",
    "content": [
        {"type": "thinking", "thinking": "Let me solve...", "signature": "EqQB..."},
        {"type": "text", "text": "27 * 453 = 12,231"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
}

# The tool_use example's shapes with the forced JSON tool a JSON answer travels in (no
# structured outputs: `tool_choice` {"type": "tool"}, so no text block comes before it).
JSON_TOOL = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-20250514","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"place","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" \\"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":" Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""

# The page's "Error events" example: an overloaded_error arriving inside a 200 stream.
OVERLOADED = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)


# -- serving a scripted stream ------------------------------------------------------------------


def streaming(
    payload: bytes, *, chunk: int = 0, abort: bool = False, headers: dict[str, str] | None = None
) -> Any:
    """A handler writing `payload` as an event stream (in `chunk`-byte writes when set), then
    ending it, or cutting the connection when `abort`."""

    async def reply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **(headers or {})}
        )
        await response.prepare(request)
        step = chunk or len(payload) or 1
        for at in range(0, len(payload), step):
            await response.write(payload[at : at + step])
        if abort:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    return reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(Anthropic()) as up:
        yield up


HELLO = ProviderRequest(prompt="Hello")


async def stream(
    up: Upstream, request: ProviderRequest = HELLO, **overrides: Any
) -> tuple[ProviderResult, list[StreamDelta]]:
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        result = await adapter.stream(session, up.target(**overrides), request, deltas.append)
    return result, deltas


async def whole(up: Upstream, body: dict[str, Any], request: ProviderRequest) -> ProviderResult:
    up.reply = replying(body, headers={"request-id": "req_1"})
    async with aiohttp.ClientSession() as session:
        return await adapter.complete(session, up.target(), request)


def joined_text(deltas: list[StreamDelta]) -> str:
    return "".join(d.text for d in deltas)


def joined_calls(deltas: list[StreamDelta]) -> dict[int, tuple[str, str, str]]:
    """index → (id, name, the arguments' pieces joined), as a reader would build them."""
    calls: dict[int, tuple[str, str, str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call_id, name, args = calls.get(piece.index, ("", "", ""))
            calls[piece.index] = (piece.id or call_id, piece.name or name, args + piece.arguments)
    return calls


# -- golden streams ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 1, 7])
async def test_the_documented_basic_stream_is_the_whole_answer(
    upstream: Upstream, chunk: int
) -> None:
    upstream.reply = streaming(BASIC, chunk=chunk, headers={"request-id": "req_1"})
    result, deltas = await stream(upstream)
    assert [d.text for d in deltas] == ["Hello", "!"]
    assert result.text == "Hello!"
    assert (result.finish_reason, result.input_tokens, result.output_tokens) == ("stop", 25, 15)
    assert result.response_id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
    assert result.response_model == "claude-opus-4-20250514"
    assert result.request_id == "req_1"
    assert result == await whole(upstream, BASIC_WHOLE, ProviderRequest(prompt="Hello"))
    assert msgspec.json.decode(upstream.received[0][2])["stream"] is True


async def test_the_documented_tool_use_stream_numbers_its_calls_from_zero(
    upstream: Upstream,
) -> None:
    upstream.reply = streaming(TOOL_USE, chunk=13)
    request = ProviderRequest(
        prompt="weather?", tools=(WEATHER,), tool_choice=ToolChoice("required")
    )
    result, deltas = await stream(upstream, request)
    assert (
        joined_text(deltas) == result.text == "Okay, let's check the weather for San Francisco, CA:"
    )
    assert joined_calls(deltas) == {
        0: (
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "get_weather",
            '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
        )
    }
    (call,) = result.tool_calls
    assert (call.id, call.name, call.arguments) == (
        "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "get_weather",
        WEATHER_INPUT,
    )
    assert (result.finish_reason, result.input_tokens, result.output_tokens) == (
        "tool_calls",
        472,
        89,
    )
    assert result.request_id == "msg_014p7gG3wDgGV9EUtLvnow3U"  # no header: the answer's id
    whole_result = await whole(upstream, TOOL_WHOLE, request)
    assert result == msgspec.structs.replace(whole_result, request_id=result.request_id)


async def test_the_documented_thinking_stream_keeps_only_the_answer(upstream: Upstream) -> None:
    upstream.reply = streaming(THINKING)
    result, deltas = await stream(upstream)
    assert joined_text(deltas) == result.text == "27 * 453 = 12,231"
    assert (result.finish_reason, result.input_tokens, result.output_tokens) == ("stop", 0, 0)
    whole_result = await whole(upstream, THINKING_WHOLE, ProviderRequest(prompt="27 * 453?"))
    assert result == msgspec.structs.replace(whole_result, request_id=result.request_id)


async def test_ping_events_anywhere_change_nothing(upstream: Upstream) -> None:
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    events = BASIC.split(b"\n\n")
    pinged = b"".join(e + b"\n\n" + ping for e in events if e)
    upstream.reply = streaming(ping + pinged)
    result, deltas = await stream(upstream)
    assert [d.text for d in deltas] == ["Hello", "!"]
    assert (result.text, result.finish_reason, result.output_tokens) == ("Hello!", "stop", 15)


async def test_cache_tokens_count_inside_input_tokens_as_the_whole_answer_counts_them(
    upstream: Upstream,
) -> None:
    """message_start's usage with the cache fields (the Messages usage object), message_delta's
    cumulative usage repeating them, as newer models send it."""
    usage = {"input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 30}
    start = BASIC.replace(
        b'"usage": {"input_tokens": 25, "output_tokens": 1}',
        msgspec.json.encode({"usage": {**usage, "output_tokens": 1}})[1:-1],
    )
    upstream.reply = streaming(start)
    result, _ = await stream(upstream)
    assert (result.input_tokens, result.cached_input_tokens, result.cache_write_tokens) == (
        142,
        30,
        100,
    )
    body = {**BASIC_WHOLE, "usage": {**usage, "output_tokens": 15}}
    whole_result = await whole(upstream, body, ProviderRequest(prompt="Hello"))
    assert result == msgspec.structs.replace(whole_result, request_id=result.request_id)
    repeated = BASIC.replace(
        b'"usage": {"output_tokens": 15}',
        msgspec.json.encode({"usage": {**usage, "output_tokens": 15}})[1:-1],
    )
    upstream.reply = streaming(repeated)
    again, _ = await stream(upstream)
    assert (again.input_tokens, again.cached_input_tokens, again.output_tokens) == (142, 30, 15)


@pytest.mark.parametrize(
    ("kind", "cls", "status"),
    [
        ("overloaded_error", Overloaded, 529),
        ("rate_limit_error", RateLimited, 429),
        ("api_error", ServerError, 500),
        ("invalid_request_error", BadRequest, 400),
        ("some_new_error", ServerError, 500),
    ],
)
async def test_an_error_event_mid_stream_is_classified_by_its_type(
    upstream: Upstream, kind: str, cls: type[Exception], status: int
) -> None:
    head = BASIC.split(b"event: content_block_stop")[0]
    upstream.reply = streaming(
        head + OVERLOADED.replace(b"overloaded_error", kind.encode()),
        headers={"request-id": "req_e"},
    )
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(cls) as info:
            await adapter.stream(
                session, upstream.target(), ProviderRequest(prompt="x"), deltas.append
            )
    assert [d.text for d in deltas] == ["Hello", "!"]  # given before it failed
    err = info.value
    assert getattr(err, "status", None) == status
    assert getattr(err, "request_id", None) == "req_e"
    if kind == "overloaded_error":
        assert getattr(err, "retryable", None) is True
        assert "Overloaded" in str(err) and "overloaded_error" in str(err)


@pytest.mark.parametrize("abort", [False, True])
async def test_a_cut_stream_is_a_connection_failure(upstream: Upstream, abort: bool) -> None:
    upstream.reply = streaming(BASIC.split(b"event: message_delta")[0], abort=abort)
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConnectionFailed):
            await adapter.stream(session, upstream.target(), HELLO, deltas.append)
    assert [d.text for d in deltas] == ["Hello", "!"]  # given as they came, before the cut


async def test_a_stream_without_message_stop_is_cut_even_with_its_stop_reason(
    upstream: Upstream,
) -> None:
    upstream.reply = streaming(BASIC.split(b"event: message_stop")[0])
    with pytest.raises(ConnectionFailed):
        await stream(upstream)


async def test_a_malformed_event_is_a_retryable_server_error(upstream: Upstream) -> None:
    broken = BASIC.replace(b'"index": 0, "delta"', b'"index": "zero", "delta"', 1)
    upstream.reply = streaming(broken)
    with pytest.raises(ServerError, match="malformed stream"):
        await stream(upstream)


async def test_a_forced_json_tool_streams_as_the_answers_text(upstream: Upstream) -> None:
    """No structured outputs: the JSON answer is a forced tool's input; streamed, its pieces
    are text deltas, and the result is what `complete` makes of the whole answer."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = ProviderRequest(
        prompt="where?", response_format=ResponseFormat("json_schema", name="place", schema=schema)
    )
    upstream.reply = streaming(JSON_TOOL)
    result, deltas = await stream(upstream, request)
    assert joined_text(deltas) == '{"city": "San Francisco, CA"}'  # as the model wrote it
    assert all(not d.tool_calls for d in deltas)
    assert (result.text, result.tool_calls, result.finish_reason) == (
        '{"city":"San Francisco, CA"}',
        (),
        "stop",
    )
    body = {
        **TOOL_WHOLE,
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "place",
                "input": {"city": "San Francisco, CA"},
            }
        ],
    }
    whole_result = await whole(upstream, body, request)
    assert (whole_result.text, whole_result.tool_calls, whole_result.finish_reason) == (
        result.text,
        result.tool_calls,
        result.finish_reason,
    )


# -- the fake: a stream is the same answer as the whole one -------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


async def both(
    server: FakeServer, request: ProviderRequest, **overrides: Any
) -> tuple[ProviderResult, ProviderResult, list[StreamDelta]]:
    """The same request answered whole and streamed by the fake (its ids differ by number)."""
    deltas: list[StreamDelta] = []
    where: Target = target(server, **overrides)
    async with aiohttp.ClientSession() as session:
        complete = await adapter.complete(session, where, request)
        streamed = await adapter.stream(session, where, request, deltas.append)
    return complete, streamed, deltas


def same(complete: ProviderResult, streamed: ProviderResult) -> None:
    def fields(r: ProviderResult) -> tuple[Any, ...]:
        ids = tuple(c.id.rsplit("_", 1)[0] for c in r.tool_calls)
        calls = tuple((c.name, c.arguments, c.unparsed) for c in r.tool_calls)
        usage = (r.input_tokens, r.output_tokens, r.cached_input_tokens, r.cache_write_tokens)
        return (r.text, r.finish_reason, usage, ids, calls, r.response_model)

    assert fields(streamed) == fields(complete)
    assert streamed.response_id is not None and streamed.response_id.startswith("msg_fake_")
    assert streamed.request_id is not None and streamed.request_id.startswith("req_fake_")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("request_", "overrides"),
    [
        (ask(Message("user", "hello there, how  are you?")), {}),
        (ask(Message("user", "one two three four"), max_tokens=2), {}),
        (ask(Message("user", "one END two"), stop=("END",)), {}),
        (
            ask(
                Message("user", "what is the weather?"),
                tools=(WEATHER,),
                tool_choice=ToolChoice("required"),
            ),
            {},
        ),
        (
            ask(
                Message("user", "hi"),
                response_format=ResponseFormat("json_schema", "answer", SCHEMA),
            ),
            {},
        ),
        (
            ask(
                Message("user", "hi"),
                response_format=ResponseFormat("json_schema", "answer", SCHEMA),
            ),
            {"structured_outputs": True},
        ),
        (ask(Message("user", "hi"), response_format=ResponseFormat("json_object")), {}),
    ],
    ids=["text", "max_tokens", "stop", "tool", "json_tool", "json_native", "json_object"],
)
async def test_the_fake_streams_the_same_answer_it_gives_whole(
    server: FakeServer, request_: ProviderRequest, overrides: dict[str, Any]
) -> None:
    complete, streamed, deltas = await both(server, request_, **overrides)
    same(complete, streamed)
    assert joined_text(deltas) == streamed.text
    calls = joined_calls(deltas)
    assert [(name, msgspec.json.decode(args)) for _id, name, args in calls.values()] == [
        (c.name, c.arguments) for c in streamed.tool_calls
    ]
    whole_call, stream_call = server.calls()
    assert (whole_call.streamed, stream_call.streamed) == (False, True)
    assert stream_call.body["stream"] is True and "stream" not in whole_call.body


async def test_the_fake_streams_text_one_word_per_event(server: FakeServer) -> None:
    _, streamed, deltas = await both(server, ask(Message("user", "hello there  friend ")))
    assert [d.text for d in deltas] == ["[fake:claude-fake]", " hello", " there", "  friend", " "]
    assert streamed.text == "[fake:claude-fake] hello there  friend "


async def test_the_fakes_broken_tool_input_streams_as_it_comes_whole(server: FakeServer) -> None:
    server.set_profile("default", invalid_output_rate=1.0)
    request = ask(Message("user", "weather?"), tools=(WEATHER,), tool_choice=ToolChoice("required"))
    complete, streamed, _ = await both(server, request)
    same(complete, streamed)
    assert streamed.tool_calls[0].unparsed == '"not json {"'
    assert [c.streamed for c in server.calls()] == [False, True]


async def test_the_fakes_cut_stream_is_a_connection_failure(server: FakeServer) -> None:
    server.set_profile("cut", stream_break_after=4)
    with pytest.raises(ConnectionFailed):
        await both(
            server, ask(Message("user", "a b c d e f")), endpoint=target(server, "cut").endpoint
        )
