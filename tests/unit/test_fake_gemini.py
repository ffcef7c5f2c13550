"""The fake provider's Gemini wire, driven through the `gemini` adapter and raw requests."""

from __future__ import annotations

import json
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
from llm_worker.adapters.errors import RateLimited, ServerError
from llm_worker.adapters.secrets import Secret
from llm_worker.devkit.fake_gemini import gemini_endpoint
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

gemini = get_adapter("gemini")
MODEL = "gemini-fake"
WEATHER = Tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
            "detailed": {"type": "boolean"},
            "hours": {"type": "array", "items": {"type": "integer"}},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "note": {"type": "string"}},
                "required": ["lat"],
            },
        },
        "required": ["city", "unit", "days", "detailed", "hours", "where"],
    },
    "The weather",
)
WEATHER_ARGS = {
    "city": "x",
    "unit": "celsius",
    "days": 1,
    "detailed": True,
    "hours": [],
    "where": {"lat": 0},
}


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


def target(server: FakeServer, profile: str = "default") -> Target:
    return Target(
        provider="gemini",
        endpoint=gemini_endpoint(server.url, profile),
        model=MODEL,
        endpoint_name=f"gemini:{profile}",
        api_key=Secret("k", "gemini-key-1"),
        timeout_ms=5_000,
    )


async def call(server: FakeServer, request: ProviderRequest, profile: str = "default") -> Any:
    async with aiohttp.ClientSession() as session:
        return await gemini.complete(session, target(server, profile), request)


def ask(text: str, **fields: Any) -> ProviderRequest:
    return ProviderRequest(
        messages=(Message("system", "be a test"), Message("user", text)), **fields
    )


async def test_text_is_echoed_with_usage_and_the_call_is_logged(server: FakeServer) -> None:
    result = await call(server, ask("hello there"))
    assert result.text == f"[fake:{MODEL}] hello there"
    assert (result.finish_reason, result.input_tokens, result.output_tokens) == ("stop", 5, 3)
    assert result.response_model == MODEL and result.response_id
    (logged,) = server.calls("default")
    assert (logged.model, logged.text, logged.status) == (MODEL, "hello there", 200)
    assert logged.authorization == "gemini-key-1"
    assert logged.body["systemInstruction"] == {"parts": [{"text": "be a test"}]}


async def test_max_output_tokens_and_stop_sequences_cut_the_answer(server: FakeServer) -> None:
    result = await call(server, ask("one two three four", max_tokens=3))
    assert (result.text, result.finish_reason) == (f"[fake:{MODEL}] one two", "length")
    result = await call(server, ask("one two STOP three", stop=("STOP",)))
    assert (result.text, result.finish_reason) == (f"[fake:{MODEL}] one two ", "stop")


@pytest.mark.parametrize(
    "request_",
    [
        ask("what now", tools=(WEATHER,), tool_choice=ToolChoice("required")),
        ask("use a tool please", tools=(WEATHER,)),
        ask(
            "what now",
            tools=(Tool("other", {}), WEATHER),
            tool_choice=ToolChoice("function", "get_weather"),
        ),
    ],
    ids=["any", "auto-with-tool-word", "named"],
)
async def test_a_function_is_called_with_args_valid_for_its_schema(
    server: FakeServer, request_: ProviderRequest
) -> None:
    result = await call(server, request_)
    assert result.tool_calls == (ToolCall("call_0", "get_weather", WEATHER_ARGS),)
    assert (result.text, result.finish_reason) == ("", "tool_calls")


@pytest.mark.parametrize(
    "request_",
    [
        ask("what now", tools=(WEATHER,)),
        ask("use a tool", tools=(WEATHER,), tool_choice=ToolChoice("none")),
    ],
    ids=["auto", "none"],
)
async def test_no_function_is_called_unless_asked(
    server: FakeServer, request_: ProviderRequest
) -> None:
    result = await call(server, request_)
    assert result.tool_calls == () and result.finish_reason == "stop"


async def test_a_function_response_is_answered_in_text(server: FakeServer) -> None:
    made = ToolCall("call_0", "get_weather", {"city": "Paris"})
    request = ProviderRequest(
        messages=(
            Message("user", "weather tool please"),
            Message("assistant", None, tool_calls=(made,)),
            Message("tool", '{"temp": 21}', tool_call_id="call_0"),
        ),
        tools=(WEATHER,),
    )
    result = await call(server, request)
    assert result.tool_calls == ()
    assert result.text == f'[fake:{MODEL}] tool result: {{"temp":21}}'


async def test_json_answers_are_valid_for_the_schema(server: FakeServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "n": {"type": "integer", "minimum": 3}},
        "required": ["name", "n"],
    }
    fmt = ResponseFormat("json_schema", "thing", schema)
    result = await call(server, ask("a thing", response_format=fmt))
    assert json.loads(result.text) == {"name": "x", "n": 3}
    result = await call(server, ask("anything", response_format=ResponseFormat("json_object")))
    assert json.loads(result.text) == {"answer": f"[fake:{MODEL}] anything"}


async def test_the_openapi_subset_schema_is_understood_too(server: FakeServer) -> None:
    # Google's own `responseSchema` / `parameters` spell types in capitals
    body = {
        "contents": [{"role": "user", "parts": [{"text": "list"}]}],
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {"tags": {"type": "ARRAY", "items": {"type": "STRING"}}},
                "required": ["tags"],
            },
        },
    }
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/gemini/v1beta/models/{MODEL}:generateContent"
        async with session.post(url, json=body) as resp:
            answer = await resp.json()
    assert json.loads(answer["candidates"][0]["content"]["parts"][0]["text"]) == {"tags": []}


async def test_profiles_and_injected_errors_speak_googles_error_shape(server: FakeServer) -> None:
    server.set_profile("slow", error_rate=1.0, error_status=429, retry_after_s=2)
    with pytest.raises(RateLimited) as info:
        await call(server, ask("hi"), profile="slow")
    assert info.value.retry_after == 2.0
    assert "RESOURCE_EXHAUSTED" in info.value.message
    assert server.counters("slow") == {"requests": 1, "errors": 1}
    assert server.counters("default") == {"requests": 0, "errors": 0}
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/gemini/v1beta/models/{MODEL}:generateContent"
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")


async def test_faults_strike_the_gemini_wire_too(server: FakeServer) -> None:
    server.set_profile("busy", malformed_rate=1.0)
    with pytest.raises(ServerError, match="malformed"):
        await call(server, ask("hi"), profile="busy")
    (logged,) = server.calls("busy")
    assert logged.fault == "malformed"


async def test_invalid_output_rate_breaks_json_and_args(server: FakeServer) -> None:
    server.set_profile("broken", invalid_output_rate=1.0)
    fmt = ResponseFormat("json_object")
    result = await call(server, ask("anything", response_format=fmt), profile="broken")
    assert result.text == "not json {"
    request = ask("what now", tools=(WEATHER,), tool_choice=ToolChoice("required"))
    result = await call(server, request, profile="broken")
    assert result.tool_calls == (ToolCall("call_0", "get_weather", {}, unparsed='"not json"'),)
