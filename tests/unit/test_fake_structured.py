"""The fake provider answering OpenAI's structured requests: tool calls with arguments valid
for the tool's parameters, answers to tool turns, JSON valid for a response_format (OpenAI's
and llama.cpp's shapes), `invalid_output_rate`, and `Call.body`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema_rs
import msgspec
import pytest

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import (
    Message,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    Target,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.devkit.fake_wire import example_for

fake = get_adapter("fake")

WEATHER = Tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
            "detail": {
                "type": "object",
                "properties": {"hourly": {"type": "boolean"}, "hours": {"type": "array"}},
                "required": ["hourly", "hours"],
            },
            "optional": {"type": "string"},
        },
        "required": ["city", "unit", "days", "detail"],
        "additionalProperties": False,
    },
    "The weather",
)
CLOCK = Tool("get_time", {"type": "object", "properties": {"zone": {"type": "string"}}})
WEATHER_ARGS = {"city": "x", "unit": "celsius", "days": 1, "detail": {"hourly": True, "hours": []}}


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, seed=1) as running:
        yield running


def target(server: FakeServer, **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": "fake",
        "endpoint": server.endpoint(),
        "model": "fake-model",
        "endpoint_name": "fake:default",
        "timeout_ms": 5_000,
    }
    fields.update(overrides)
    return Target(**fields)


async def ask(server: FakeServer, request: ProviderRequest, **overrides: Any) -> ProviderResult:
    async with aiohttp.ClientSession() as session:
        return await fake.complete(session, target(server, **overrides), request)


def tools_request(text: str, choice: ToolChoice | None = None) -> ProviderRequest:
    return ProviderRequest(
        messages=(Message("user", text),), tools=(CLOCK, WEATHER), tool_choice=choice
    )


# -- the schema example generator ------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string"}, "x"),
        ({"type": "string", "minLength": 3}, "xxx"),
        ({"type": "integer"}, 0),
        ({"type": "integer", "minimum": 5}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "number", "minimum": 0.5}, 0.5),
        ({"type": "number", "maximum": -2}, -2),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 0),
        ({"type": "array", "items": {"type": "string"}}, []),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [0, 0]),
        ({"enum": ["b", "a"]}, "b"),
        ({"const": 42}, 42),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        (
            {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}]},
            {"a": "x"},
        ),
        ({}, {}),
        (
            {
                "$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}}},
                "type": "object",
                "properties": {"step": {"$ref": "#/$defs/Step"}},
                "required": ["step"],
            },
            {"step": {}},
        ),
    ],
)
def test_example_for(schema: dict[str, Any], value: Any) -> None:
    assert example_for(schema) == value
    assert jsonschema_rs.validator_for(schema).is_valid(value)


def test_example_for_a_recursive_schema_ends() -> None:
    schema = {
        "type": "object",
        "properties": {"child": {"$ref": "#"}},
        "required": ["child"],
    }
    value = example_for(schema)
    depth = 0
    while isinstance(value, dict):
        value, depth = value.get("child"), depth + 1
    assert 1 < depth < 100


# -- tool calls --------------------------------------------------------------------------------


async def test_required_calls_the_first_tool_with_valid_arguments(server: FakeServer) -> None:
    result = await ask(server, tools_request("weather?", ToolChoice("required")))
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    (call,) = result.tool_calls
    assert (call.name, call.arguments, call.unparsed) == ("get_time", {}, None)
    assert call.id.startswith("call_fake_")


async def test_a_named_function_is_called_with_arguments_valid_for_its_parameters(
    server: FakeServer,
) -> None:
    result = await ask(server, tools_request("hi", ToolChoice("function", "get_weather")))
    (call,) = result.tool_calls
    assert call.name == "get_weather"
    assert call.arguments == WEATHER_ARGS
    assert jsonschema_rs.validator_for(WEATHER.parameters).is_valid(call.arguments)


@pytest.mark.parametrize(
    ("text", "choice", "calls"),
    [
        ("please use a tool", None, True),
        ("please use a Tool.", ToolChoice("auto"), True),
        ("please use the toolbox", ToolChoice("auto"), False),
        ("just talk", ToolChoice("auto"), False),
        ("use a tool", ToolChoice("none"), False),
    ],
)
async def test_auto_calls_a_tool_when_the_user_says_tool(
    server: FakeServer, text: str, choice: ToolChoice | None, calls: bool
) -> None:
    result = await ask(server, tools_request(text, choice))
    assert bool(result.tool_calls) is calls
    assert result.finish_reason == ("tool_calls" if calls else "stop")
    if not calls:
        assert result.text == f"[fake:fake-model] {text}"


async def test_a_tool_turn_is_answered_with_its_result(server: FakeServer) -> None:
    call = ToolCall("call_fake_1", "get_time", {})
    request = ProviderRequest(
        messages=(
            Message("user", "what time is it? use a tool"),
            Message("assistant", None, tool_calls=(call,)),
            Message("tool", "12:30", tool_call_id=call.id),
        ),
        tools=(CLOCK,),
        tool_choice=ToolChoice("required"),
    )
    result = await ask(server, request)
    assert result.tool_calls == ()
    assert result.finish_reason == "stop"
    assert "12:30" in result.text
    body = server.calls()[-1].body
    assert body["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": "{}",
    }
    assert body["messages"][2] == {"role": "tool", "content": "12:30", "tool_call_id": call.id}


async def test_invalid_output_rate_breaks_tool_arguments(server: FakeServer) -> None:
    server.set_profile(invalid_output_rate=1.0)
    result = await ask(server, tools_request("x", ToolChoice("function", "get_weather")))
    (call,) = result.tool_calls
    assert (call.arguments, call.unparsed) == ({}, "not json")


# -- JSON answers --------------------------------------------------------------------------------

STEPS = {
    "type": "object",
    "properties": {
        "steps": {"type": "array", "items": {"type": "string"}},
        "final_answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["steps", "final_answer", "confidence"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("dialect", ["openai", "llama_cpp"])
async def test_json_schema_answer_is_valid_for_the_schema(server: FakeServer, dialect: str) -> None:
    request = ProviderRequest(
        prompt="solve 8x + 7 = -23",
        response_format=ResponseFormat("json_schema", "math", STEPS, strict=True),
    )
    result = await ask(server, request, dialect=dialect)
    assert result.finish_reason == "stop"
    value = msgspec.json.decode(result.text)
    assert value == {"steps": [], "final_answer": "x", "confidence": 0}
    assert jsonschema_rs.validator_for(STEPS).is_valid(value)
    sent = server.calls()[-1].body["response_format"]
    assert sent["type"] == ("json_schema" if dialect == "openai" else "json_object")


async def test_json_object_answer_wraps_the_text(server: FakeServer) -> None:
    request = ProviderRequest(prompt="hello there", response_format=ResponseFormat("json_object"))
    result = await ask(server, request, max_tokens=1)  # JSON is never cut
    assert msgspec.json.decode(result.text) == {"answer": "[fake:fake-model] hello there"}
    assert result.finish_reason == "stop"


async def test_llama_cpp_server_shape_with_a_top_level_schema_is_understood(
    server: FakeServer,
) -> None:
    """llama.cpp's own server also takes `{"type": "json_schema", "schema": ...}`."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "schema": STEPS},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.endpoint() + "/chat/completions", json=body) as resp,
    ):
        answer = await resp.json()
    content = answer["choices"][0]["message"]["content"]
    assert jsonschema_rs.validator_for(STEPS).is_valid(msgspec.json.decode(content))
    assert "tool_calls" not in answer["choices"][0]["message"]


async def test_invalid_output_rate_breaks_json_answers(server: FakeServer) -> None:
    server.set_profile(invalid_output_rate=1.0)
    request = ProviderRequest(prompt="hi", response_format=ResponseFormat("json_object"))
    assert (await ask(server, request)).text == "not json {"
    plain = await ask(server, ProviderRequest(prompt="hi"))
    assert plain.text == "[fake:fake-model] hi"  # text answers are never broken


async def test_invalid_output_rate_is_a_validated_setting(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        server.set_profile(invalid_output_rate=1.5)
    assert server.set_profile(invalid_output_rate=0.25)["invalid_output_rate"] == 0.25


async def test_half_the_answers_are_invalid_at_rate_one_half(server: FakeServer) -> None:
    server.set_profile(invalid_output_rate=0.5)
    request = ProviderRequest(prompt="hi", response_format=ResponseFormat("json_object"))
    texts = [(await ask(server, request)).text for _ in range(60)]
    broken = texts.count("not json {")
    assert 10 < broken < 50


# -- what reached the provider ---------------------------------------------------------------


async def test_call_body_is_what_the_provider_received(server: FakeServer) -> None:
    request = ProviderRequest(prompt="hi", max_tokens=5, temperature=0.5)
    await ask(server, request)
    (call,) = server.calls()
    assert call.body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0.5,
    }


async def test_call_body_of_a_request_that_is_not_json_is_none(server: FakeServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.endpoint() + "/chat/completions", data=b"{nope") as resp,
    ):
        assert resp.status == 400
    assert server.calls()[-1].body is None
