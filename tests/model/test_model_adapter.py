"""The `openai_compatible` adapter against a real llama.cpp server (dialect `llama_cpp`).

A 135M-parameter model knows little, so what is asserted is what the server guarantees, not
what the model knows: its grammar holds the answer to the JSON Schema (an enum field), and a
forced tool call comes back as a call of that tool with an object of arguments.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema_rs
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

from .conftest import ModelServer

pytestmark = pytest.mark.model

LABELS = ["positive", "negative", "neutral"]
SENTIMENT: dict[str, Any] = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": LABELS}},
    "required": ["sentiment"],
    "additionalProperties": False,
}
WEATHER = Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


def target(server: ModelServer) -> Target:
    return Target(
        provider="openai_compatible",
        endpoint=server.endpoint,
        model=server.model,
        endpoint_name="model/primary",
        timeout_ms=120_000,
        dialect="llama_cpp",
    )


def ask(text: str, **kw: Any) -> ProviderRequest:
    fields: dict[str, Any] = {"max_tokens": 64, "temperature": 0.0, "seed": 7, **kw}
    return ProviderRequest(
        messages=(
            Message(role="system", content="You are a helpful assistant."),
            Message(role="user", content=text),
        ),
        **fields,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_plain_answer(model_server: ModelServer, session: aiohttp.ClientSession) -> None:
    adapter = get_adapter("openai_compatible")
    request = ask("Say hello in one short sentence.", max_tokens=24)
    result = await adapter.complete(session, target(model_server), request)
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.tool_calls == ()


async def test_json_schema_answer_is_held_to_the_schema(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    adapter = get_adapter("openai_compatible")
    t = target(model_server)
    fmt = ResponseFormat(type="json_schema", name="sentiment", schema=SENTIMENT, strict=True)
    request = ask(
        "Classify the sentiment of this review as positive, negative or neutral: "
        "'The soup was cold and the waiter was rude.'",
        response_format=fmt,
    )
    assert adapter.unsupported(t, request) is None
    result = await adapter.complete(session, t, request)
    answer = json.loads(result.text)  # the adapter hands the JSON text on; the worker parses
    jsonschema_rs.validate(SENTIMENT, answer)
    assert answer["sentiment"] in LABELS
    assert result.tool_calls == ()


async def test_forced_tool_call_comes_back_parsed(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    adapter = get_adapter("openai_compatible")
    t = target(model_server)
    request = ask(
        "What is the weather like in Paris right now?",
        tools=(WEATHER,),
        tool_choice=ToolChoice(mode="function", name="get_weather"),
    )
    assert adapter.unsupported(t, request) is None
    result = await adapter.complete(session, t, request)
    assert len(result.tool_calls) == 1, result
    call = result.tool_calls[0]
    assert call.name == "get_weather"
    assert call.id
    assert call.unparsed is None, call.unparsed
    assert isinstance(call.arguments, dict)
    jsonschema_rs.validate(WEATHER.parameters, call.arguments)


async def test_a_required_tool_call_is_not_silently_dropped(  # llama.cpp ignores "required"
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    adapter = get_adapter("openai_compatible")
    t = target(model_server)
    request = ask(
        "What is the weather like in Paris right now?",
        tools=(WEATHER,),
        tool_choice=ToolChoice(mode="required"),
    )
    why = adapter.unsupported(t, request)
    if why is not None:
        assert "tool_choice" in why
        return
    result = await adapter.complete(session, t, request)
    assert [c.name for c in result.tool_calls] == ["get_weather"], result


async def test_a_tool_turn_history_is_answered(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    adapter = get_adapter("openai_compatible")
    call = ToolCall(id="call-1", name="get_weather", arguments={"city": "Paris"})
    request = ProviderRequest(
        messages=(
            Message(role="user", content="What is the weather like in Paris right now?"),
            Message(role="assistant", content=None, tool_calls=(call,)),
            Message(role="tool", content="18 C and sunny", tool_call_id="call-1"),
        ),
        tools=(WEATHER,),
        max_tokens=24,
        temperature=0.0,
    )
    result = await adapter.complete(session, target(model_server), request)
    assert result.text.strip()
