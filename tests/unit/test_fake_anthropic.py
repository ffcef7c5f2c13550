"""The fake provider's Anthropic Messages API, driven through the `anthropic` adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import (
    Message,
    ProviderRequest,
    ResponseFormat,
    Target,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.adapters.errors import Overloaded, RateLimited, ServerError
from llm_worker.adapters.secrets import Secret
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

anthropic = get_adapter("anthropic")
KEY = "sk-ant-fake-1f2e3d"
WEATHER = Tool(
    name="get_weather",
    description="Get the current weather in a given location",
    parameters={
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
            "hourly": {"type": "boolean"},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "note": {"type": "string"}},
                "required": ["lat"],
            },
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["location", "unit", "days", "hourly", "where", "tags"],
    },
)
EXPECTED_INPUT = {
    "location": "x",
    "unit": "celsius",
    "days": 1,
    "hourly": True,
    "where": {"lat": 0},
    "tags": [],
}


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


def target(server: FakeServer, profile: str = "default", **overrides: Any) -> Target:
    base = (
        f"{server.url}/anthropic" if profile == "default" else f"{server.url}/{profile}/anthropic"
    )
    fields: dict[str, Any] = {
        "provider": "anthropic",
        "endpoint": base,
        "model": "claude-fake",
        "endpoint_name": f"anthropic:{profile}",
        "api_key": Secret("fake-key", KEY),
        "timeout_ms": 5_000,
    }
    fields.update(overrides)
    return Target(**fields)


async def call(server: FakeServer, request: ProviderRequest, **overrides: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        return await anthropic.complete(session, target(server, **overrides), request)


def ask(*messages: Message, **fields: Any) -> ProviderRequest:
    return ProviderRequest(messages=(Message("system", "be a test"), *messages), **fields)


async def test_text_is_echoed_with_word_usage_and_the_call_is_logged(server: FakeServer) -> None:
    result = await call(server, ask(Message("user", "hello there")))
    assert result.text == "[fake:claude-fake] hello there"
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (5, 3)
    assert result.request_id is not None and result.request_id.startswith("req_fake_")
    assert result.response_id is not None and result.response_id.startswith("msg_fake_")
    (logged,) = server.calls()
    assert (logged.model, logged.text, logged.status) == ("claude-fake", "hello there", 200)
    assert logged.authorization == KEY  # the x-api-key header
    assert logged.body["messages"] == [{"role": "user", "content": "hello there"}]
    assert server.counters() == {"requests": 1, "errors": 0}


async def test_max_tokens_and_stop_sequences_cut_the_answer(server: FakeServer) -> None:
    long = await call(server, ask(Message("user", "one two three four"), max_tokens=2))
    assert (long.text, long.finish_reason, long.output_tokens) == (
        "[fake:claude-fake] one",
        "length",
        2,
    )
    cut = await call(server, ask(Message("user", "one END two"), stop=("END",)))
    assert (cut.text, cut.finish_reason) == ("[fake:claude-fake] one ", "stop")


@pytest.mark.parametrize(
    ("choice", "text"),
    [
        (ToolChoice("required"), "what is the weather?"),
        (ToolChoice("function", "get_weather"), "what is the weather?"),
        (ToolChoice("auto"), "use a tool please"),
        (None, "use a tool please"),
    ],
)
async def test_a_tool_is_called_with_input_valid_for_its_schema(
    server: FakeServer, choice: ToolChoice | None, text: str
) -> None:
    other = Tool(name="other", parameters={"type": "object"})
    tools = (WEATHER, other) if choice is None or choice.mode != "function" else (other, WEATHER)
    request = ask(Message("user", text), tools=tools, tool_choice=choice)
    result = await call(server, request)
    assert result.finish_reason == "tool_calls"
    (made,) = result.tool_calls
    assert (made.name, made.arguments) == ("get_weather", EXPECTED_INPUT)
    assert made.id.startswith("toolu_fake_")


@pytest.mark.parametrize(
    ("choice", "text"), [(ToolChoice("auto"), "what is the weather?"), (ToolChoice("none"), "tool")]
)
async def test_no_tool_is_called_unless_asked(
    server: FakeServer, choice: ToolChoice, text: str
) -> None:
    result = await call(server, ask(Message("user", text), tools=(WEATHER,), tool_choice=choice))
    assert (result.tool_calls, result.finish_reason) == ((), "stop")


async def test_a_tool_result_is_answered_in_text(server: FakeServer) -> None:
    history = ask(
        Message("user", "weather in Paris? use the tool"),
        Message("assistant", None, tool_calls=(ToolCall("toolu_1", "get_weather", {}),)),
        Message("tool", "15 degrees", tool_call_id="toolu_1"),
        tools=(WEATHER,),
    )
    result = await call(server, history)
    assert result.text == "[fake:claude-fake] tool result: 15 degrees"
    assert result.tool_calls == ()


async def test_json_answers_native_and_as_a_forced_tool(server: FakeServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
        "additionalProperties": False,
    }
    fmt = ResponseFormat("json_schema", name="answer", schema=schema)
    native = await call(
        server, ask(Message("user", "hi"), response_format=fmt), structured_outputs=True
    )
    forced = await call(server, ask(Message("user", "hi"), response_format=fmt))
    for result in (native, forced):
        assert (result.text, result.finish_reason) == ('{"name":"x","ok":true}', "stop")
        assert result.tool_calls == ()


async def test_profiles_and_injected_errors_speak_anthropics_error_shape(
    server: FakeServer,
) -> None:
    server.set_profile("busy", error_rate=1.0, error_status=529, retry_after_s=2)
    with pytest.raises(Overloaded) as info:
        await call(server, ask(Message("user", "hi")), endpoint=target(server, "busy").endpoint)
    assert info.value.status == 529
    assert info.value.retry_after == 2.0
    assert info.value.request_id is not None and info.value.request_id.startswith("fake-")
    assert "overloaded_error" in info.value.message
    server.set_profile("slow", error_rate=1.0, error_status=429)
    with pytest.raises(RateLimited):
        await call(server, ask(Message("user", "hi")), endpoint=target(server, "slow").endpoint)
    assert server.counters("busy") == {"requests": 1, "errors": 1}
    assert [c.status for c in server.calls(None)] == [529, 429]
    assert await call(server, ask(Message("user", "ok"))) is not None  # default unaffected


async def test_a_body_without_max_tokens_is_a_400_as_anthropic_answers(
    server: FakeServer,
) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/anthropic/v1/messages"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(url, json=body) as response:
            assert response.status == 400
            doc = await response.json()
    assert doc["type"] == "error"
    assert doc["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in doc["error"]["message"]


async def test_faults_strike_the_anthropic_wire_too(server: FakeServer) -> None:
    server.set_profile("broken", malformed_rate=1.0)
    with pytest.raises(ServerError, match="malformed response"):
        await call(server, ask(Message("user", "hi")), endpoint=target(server, "broken").endpoint)
    (logged,) = server.calls("broken")
    assert (logged.fault, logged.status) == ("malformed", 200)


async def test_invalid_output_rate_breaks_json_answers_and_tool_inputs(server: FakeServer) -> None:
    server.set_profile("sloppy", invalid_output_rate=1.0)
    endpoint = target(server, "sloppy").endpoint
    fmt = ResponseFormat("json_schema", schema={"type": "object", "properties": {}})
    native = await call(
        server,
        ask(Message("user", "hi"), response_format=fmt),
        endpoint=endpoint,
        structured_outputs=True,
    )
    assert native.text == "not json {"
    tool = await call(
        server,
        ask(Message("user", "hi"), tools=(WEATHER,), tool_choice=ToolChoice("required")),
        endpoint=endpoint,
    )
    (made,) = tool.tool_calls
    assert (made.arguments, made.unparsed) == ({}, '"not json {"')
    plain = await call(server, ask(Message("user", "hi")), endpoint=endpoint)
    assert plain.text == "[fake:claude-fake] hi"  # text answers are never broken
