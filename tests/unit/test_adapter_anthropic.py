"""Anthropic's Messages API: what the shared contract does not cover."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from llm_worker.adapters.anthropic import THINKING_BUDGETS, AnthropicAdapter
from llm_worker.adapters.base import (
    ImagePart,
    ImageURL,
    Message,
    ProviderRequest,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.adapters.errors import BadRequest, ContextLengthExceeded, Overloaded, RateLimited

from .test_adapter_contract import MODEL, Anthropic, Upstream, replying, serve

PROFILE = Anthropic()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(PROFILE) as up:
        yield up


@pytest.mark.parametrize(
    ("asked", "cap", "sent"),
    [(None, None, 1024), (None, 256, 256), (50, 256, 50), (4096, 256, 256), (2000, None, 2000)],
)
async def test_max_tokens_is_always_sent(
    upstream: Upstream, asked: int | None, cap: int | None, sent: int
) -> None:
    await upstream.call(ProviderRequest(prompt="x", max_tokens=asked), max_tokens=cap)
    assert upstream.last_json["max_tokens"] == sent


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_v1_is_never_doubled(upstream: Upstream, suffix: str) -> None:
    await upstream.call(endpoint=upstream.base + suffix)
    assert upstream.received[-1][0] == "/v1/messages"


def test_default_endpoint_is_the_public_api() -> None:
    adapter = AnthropicAdapter()
    target = Upstream(PROFILE).target(endpoint="")
    assert adapter.endpoint_for(target) == "https://api.anthropic.com"
    url = adapter.url_for(adapter.endpoint_for(target), target)
    assert str(url) == "https://api.anthropic.com/v1/messages"


async def test_text_blocks_are_joined_and_other_blocks_skipped(upstream: Upstream) -> None:
    body = PROFILE.success("", "tool_use", (5, 9))
    body["content"] = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Part one, "},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
        {"type": "text", "text": "part two."},
    ]
    upstream.reply = replying(body)
    result = await upstream.call()
    assert result.text == "Part one, part two."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (ToolCall(id="toolu_1", name="lookup", arguments={}),)
    assert result.request_id == "msg_01"  # no request-id header: the message id


@pytest.mark.parametrize(
    ("reason", "mapped"),
    [
        ("stop_sequence", "stop"),
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),  # anything else is kept as sent
        (None, None),
    ],
)
async def test_stop_reasons(upstream: Upstream, reason: str | None, mapped: str | None) -> None:
    upstream.reply = replying(PROFILE.success("ok", reason, (1, 1)))
    assert (await upstream.call()).finish_reason == mapped


async def test_prompt_too_long_is_a_context_length_error(upstream: Upstream) -> None:
    error = {"type": "invalid_request_error", "message": "prompt is too long: 210511 > 200000"}
    body = {"type": "error", "error": error, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    upstream.reply = replying(body, 400)
    with pytest.raises(ContextLengthExceeded) as info:
        await upstream.call()
    assert not info.value.retryable
    assert info.value.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"  # from the body
    assert "invalid_request_error" in info.value.message


async def test_overloaded_error_is_overloaded_whatever_the_5xx(upstream: Upstream) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.reply = replying(body, 503, {"request-id": "req-x"})
    with pytest.raises(Overloaded) as info:
        await upstream.call()
    assert (info.value.status, info.value.request_id) == (503, "req-x")


async def test_rate_limit_honours_retry_after(upstream: Upstream) -> None:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    upstream.reply = replying(body, 429, {"retry-after": "12"})
    with pytest.raises(RateLimited) as info:
        await upstream.call()
    assert info.value.retry_after == 12.0


async def test_request_too_large_is_terminal(upstream: Upstream) -> None:
    body = {"type": "error", "error": {"type": "request_too_large", "message": "too big"}}
    upstream.reply = replying(body, 413)
    with pytest.raises(BadRequest) as info:
        await upstream.call()
    assert not info.value.retryable


async def test_only_system_messages_is_refused_before_sending(upstream: Upstream) -> None:
    with pytest.raises(BadRequest, match="no user or assistant"):
        await upstream.call(ProviderRequest(messages=(Message("system", "alone"),)))
    assert upstream.received == []


async def test_seed_is_dropped_and_the_model_is_sent(upstream: Upstream) -> None:
    await upstream.call(ProviderRequest(prompt="x", seed=3, temperature=0.0))
    assert upstream.last_json == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.0,
    }


# -- structured fields: the examples are Anthropic's own (platform.claude.com docs pages named
# in each test), the answers the bodies of those pages

WEATHER = Tool(
    name="get_weather",
    description="Get the current weather in a given location",
    parameters={
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            }
        },
        "required": ["location"],
    },
)
WEATHER_WIRE = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": WEATHER.parameters,
}
CALL_ID = "toolu_01A09q90qw90lq917835lq9"
THOUGHT = (
    "<thinking>I need to use get_weather, and the user wants SF, which is likely "
    "San Francisco, CA.</thinking>"
)
SF = {"location": "San Francisco, CA", "unit": "celsius"}
ASK_WEATHER = Message("user", "What's the weather like in San Francisco?")


def tool_use_answer() -> dict[str, Any]:
    """The tool-use answer of "Tool use with Claude" (docs: agents-and-tools/tool-use)."""
    body = PROFILE.success("", "tool_use", (21, 3))
    body["id"] = "msg_01Aq9w938a90dw8q"
    body["content"] = [
        {"type": "text", "text": THOUGHT},
        {"type": "tool_use", "id": CALL_ID, "name": "get_weather", "input": SF},
    ]
    return body


async def test_tools_go_as_input_schema_and_tool_use_comes_back_as_a_tool_call(
    upstream: Upstream,
) -> None:
    upstream.reply = replying(tool_use_answer())
    request = ProviderRequest(messages=(ASK_WEATHER,), tools=(WEATHER,))
    result = await upstream.call(request)
    assert upstream.last_json == {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}],
        "tools": [WEATHER_WIRE],
    }
    assert result.tool_calls == (ToolCall(id=CALL_ID, name="get_weather", arguments=SF),)
    assert result.text == THOUGHT
    assert result.finish_reason == "tool_calls"
    assert result.response_id == "msg_01Aq9w938a90dw8q"


async def test_a_tool_result_round_trip_is_anthropics_documented_history(
    upstream: Upstream,
) -> None:
    """docs: agents-and-tools/tool-use/implement-tool-use, "Handling tool use results"."""
    history = (
        ASK_WEATHER,
        Message("assistant", THOUGHT, tool_calls=(ToolCall(CALL_ID, "get_weather", SF),)),
        Message("tool", "15 degrees", tool_call_id=CALL_ID),
    )
    await upstream.call(ProviderRequest(messages=history, tools=(WEATHER,)))
    assert upstream.last_json["messages"] == [
        {"role": "user", "content": "What's the weather like in San Francisco?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": THOUGHT},
                {"type": "tool_use", "id": CALL_ID, "name": "get_weather", "input": SF},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": CALL_ID, "content": "15 degrees"}],
        },
    ]


async def test_consecutive_tool_results_and_a_following_user_turn_merge_into_one_turn(
    upstream: Upstream,
) -> None:
    calls = (ToolCall("toolu_a", "get_weather", {"location": "Paris"}),)
    calls += (ToolCall("toolu_b", "get_weather", {"location": "Rome"}),)
    history = (
        Message("system", "be brief"),
        Message("user", "Paris and Rome?"),
        Message("assistant", None, tool_calls=calls),
        Message("tool", "12 degrees", tool_call_id="toolu_a"),
        Message("tool", "18 degrees", tool_call_id="toolu_b"),
        Message("user", "which is warmer?"),
    )
    await upstream.call(ProviderRequest(messages=history, tools=(WEATHER,)))
    sent = upstream.last_json
    assert sent["system"] == "be brief"
    assert [t["role"] for t in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == [  # no empty text block for the None content
        {
            "type": "tool_use",
            "id": "toolu_a",
            "name": "get_weather",
            "input": {"location": "Paris"},
        },
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"location": "Rome"}},
    ]
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12 degrees"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "18 degrees"},
        {"type": "text", "text": "which is warmer?"},
    ]


async def test_images_go_as_base64_or_url_sources(upstream: Upstream) -> None:
    """docs: build-with-claude/vision, the base64 and URL examples."""
    ant = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
    parts = (
        ImagePart(ImageURL("data:image/jpeg;base64,/9j/4AAQSkZJRg==")),
        ImagePart(ImageURL(ant)),
        TextPart("Describe this image."),
    )
    await upstream.call(ProviderRequest(messages=(Message("user", parts),)))
    assert upstream.last_json["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/jpeg",
                        "data": "/9j/4AAQSkZJRg==",
                    },
                },
                {"type": "image", "source": {"type": "url", "url": ant}},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ToolChoice("auto"), {"type": "auto"}),
        (ToolChoice("required"), {"type": "any"}),
        (ToolChoice("function", "get_weather"), {"type": "tool", "name": "get_weather"}),
        (ToolChoice("none"), {"type": "none"}),
    ],
)
async def test_tool_choice_maps_to_anthropics_types(
    upstream: Upstream, choice: ToolChoice, wire: dict[str, str]
) -> None:
    await upstream.call(
        ProviderRequest(messages=(ASK_WEATHER,), tools=(WEATHER,), tool_choice=choice)
    )
    assert upstream.last_json["tool_choice"] == wire


async def test_usage_counts_cache_reads_and_writes_inside_input_tokens(upstream: Upstream) -> None:
    """docs: build-with-claude/prompt-caching, the usage of a cache write then a cache read;
    Anthropic's input_tokens leaves both out, the contract counts them in."""
    for usage, cached, written in [
        (
            {
                "input_tokens": 21,
                "cache_creation_input_tokens": 188086,
                "cache_read_input_tokens": 0,
                "output_tokens": 393,
            },
            0,
            188086,
        ),
        (
            {
                "input_tokens": 21,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 188086,
                "output_tokens": 393,
            },
            188086,
            0,
        ),
    ]:
        body = PROFILE.success("ok", "end_turn", (0, 0))
        body["usage"] = usage
        upstream.reply = replying(body)
        result = await upstream.call()
        assert result.input_tokens == 21 + 188086
        assert result.output_tokens == 393
        assert (result.cached_input_tokens, result.cache_write_tokens) == (cached, written)


async def test_tool_input_that_is_no_object_is_kept_unparsed(upstream: Upstream) -> None:
    body = PROFILE.success("", "tool_use", (1, 1))
    body["content"] = [{"type": "tool_use", "id": "toolu_9", "name": "f", "input": [1, 2]}]
    upstream.reply = replying(body)
    (call,) = (await upstream.call()).tool_calls
    assert (call.arguments, call.unparsed) == ({}, "[1,2]")


# -- JSON answers

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def json_request(fmt: ResponseFormat, **fields: Any) -> ProviderRequest:
    return ProviderRequest(messages=(Message("user", "Ada, 36"),), response_format=fmt, **fields)


def forced_answer(name: str, payload: Any) -> dict[str, Any]:
    body = PROFILE.success("", "tool_use", (9, 9))
    body["content"] = [{"type": "tool_use", "id": "toolu_j", "name": name, "input": payload}]
    return body


async def test_a_schema_goes_natively_when_the_model_has_structured_outputs(
    upstream: Upstream,
) -> None:
    """docs: build-with-claude/structured-outputs, `output_config.format` (GA, no beta header)."""
    upstream.reply = replying(PROFILE.success('{"name":"Ada","age":36}', "end_turn", (5, 5)))
    fmt = ResponseFormat("json_schema", name="person", schema=PERSON, strict=True)
    result = await upstream.call(json_request(fmt), structured_outputs=True)
    sent = upstream.last_json
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": PERSON}}
    assert "tools" not in sent and "tool_choice" not in sent
    assert "anthropic-beta" not in upstream.received[-1][1]
    assert (result.text, result.finish_reason) == ('{"name":"Ada","age":36}', "stop")


@pytest.mark.parametrize("structured", [False, True])
async def test_a_schema_otherwise_goes_as_a_forced_tool_whose_input_is_the_text(
    upstream: Upstream, structured: bool
) -> None:
    schema = {
        **PERSON,
        "properties": {**PERSON["properties"], "age": {"type": "integer", "minimum": 0}},
    }  # type: ignore[dict-item]
    upstream.reply = replying(forced_answer("person", {"name": "Ada", "age": 36}))
    fmt = ResponseFormat("json_schema", name="person", schema=schema)
    result = await upstream.call(json_request(fmt), structured_outputs=structured)
    sent = upstream.last_json
    assert "output_config" not in sent  # `minimum` is outside structured outputs' subset
    assert sent["tools"] == [
        {"name": "person", "description": "Answer with this tool's input.", "input_schema": schema}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "person"}
    assert result.text == '{"name":"Ada","age":36}'
    assert (result.tool_calls, result.finish_reason) == ((), "stop")


async def test_json_object_is_a_forced_tool_taking_any_object(upstream: Upstream) -> None:
    upstream.reply = replying(forced_answer("json_answer", {"a": [1, {"b": None}]}))
    result = await upstream.call(json_request(ResponseFormat("json_object")))
    assert upstream.last_json["tools"][0]["input_schema"] == {"type": "object"}
    assert upstream.last_json["tool_choice"] == {"type": "tool", "name": "json_answer"}
    assert result.text == '{"a":[1,{"b":null}]}'


async def test_a_forced_json_answer_keeps_the_requests_own_tools(upstream: Upstream) -> None:
    upstream.reply = replying(forced_answer("json_answer", {"ok": True}))
    request = json_request(ResponseFormat("json_object", name="has space"), tools=(WEATHER,))
    result = await upstream.call(request)
    assert [t["name"] for t in upstream.last_json["tools"]] == ["get_weather", "json_answer"]
    assert result.text == '{"ok":true}'


def unsupported(request: ProviderRequest, **target: Any) -> str | None:
    return AnthropicAdapter().unsupported(Upstream(PROFILE).target(**target), request)


def test_every_structured_field_is_a_feature() -> None:
    history = (ASK_WEATHER, Message("user", (ImagePart(ImageURL("https://x/y.png")),)))
    request = ProviderRequest(
        messages=history,
        tools=(WEATHER,),
        tool_choice=ToolChoice("auto"),
        response_format=ResponseFormat("json_schema", schema=PERSON),
    )
    assert unsupported(request, structured_outputs=True) is None
    assert unsupported(ProviderRequest(prompt="x", reasoning_effort="high")) is None


@pytest.mark.parametrize("mode", ["required", "function"])
def test_a_forced_json_tool_beside_another_forced_tool_is_refused(mode: str) -> None:
    choice = ToolChoice(mode, "get_weather" if mode == "function" else None)  # type: ignore[arg-type]
    request = json_request(ResponseFormat("json_object"), tools=(WEATHER,), tool_choice=choice)
    why = unsupported(request)
    assert why is not None
    assert f"`tool_choice` {mode}" in why and "provider anthropic" in why
    assert unsupported(request, structured_outputs=True) is not None  # json_object: no native
    native = json_request(
        ResponseFormat("json_schema", schema=PERSON), tools=(WEATHER,), tool_choice=choice
    )
    assert unsupported(native, structured_outputs=True) is None
    assert unsupported(native) is not None


def test_a_tool_named_like_the_json_tool_is_refused() -> None:
    clash = Tool(name="json_answer", parameters={"type": "object"})
    why = unsupported(json_request(ResponseFormat("json_object"), tools=(clash,)))
    assert why is not None and "'json_answer'" in why


# -- reasoning_effort: extended thinking


@pytest.mark.parametrize(
    ("effort", "asked", "max_tokens", "budget"),
    [
        ("low", None, 1024 + 1024, 1024),
        ("medium", None, 4096 + 1024, 4096),
        ("high", None, 16384 + 1024, 16384),
        ("high", 8000, 8000, 7999),  # thinking counts inside max_tokens
        ("low", 30000, 30000, 1024),
    ],
)
async def test_reasoning_effort_is_a_thinking_budget(
    upstream: Upstream, effort: Any, asked: int | None, max_tokens: int, budget: int
) -> None:
    assert THINKING_BUDGETS[effort] >= 1024  # Anthropic's minimum budget
    request = ProviderRequest(prompt="x", max_tokens=asked, reasoning_effort=effort)
    assert unsupported(request) is None
    await upstream.call(request)
    sent = upstream.last_json
    assert sent["max_tokens"] == max_tokens
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget}


async def test_no_reasoning_effort_sends_no_thinking(upstream: Upstream) -> None:
    await upstream.call(ProviderRequest(prompt="x"))
    assert "thinking" not in upstream.last_json


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"max_tokens": 1024}, "`max_tokens` of 1024 or less"),
        ({"temperature": 0.2}, "`temperature`"),
        ({"top_p": 0.5}, "`top_p`"),
        ({"tools": (WEATHER,), "tool_choice": ToolChoice("required")}, "`tool_choice` required"),
        ({"response_format": ResponseFormat("json_object")}, "forced tool"),
    ],
)
def test_reasoning_effort_refuses_what_thinking_cannot_go_with(
    fields: dict[str, Any], named: str
) -> None:
    request = ProviderRequest(messages=(ASK_WEATHER,), reasoning_effort="low", **fields)
    why = unsupported(request)
    assert why is not None
    assert why.startswith("`reasoning_effort` with ") and named in why
    assert unsupported(msgspec.structs.replace(request, reasoning_effort=None)) is None


def test_reasoning_effort_refuses_earlier_tool_calls() -> None:
    history = (
        ASK_WEATHER,
        Message("assistant", None, tool_calls=(ToolCall(CALL_ID, "get_weather", SF),)),
        Message("tool", "15 degrees", tool_call_id=CALL_ID),
    )
    request = ProviderRequest(messages=history, tools=(WEATHER,), reasoning_effort="medium")
    why = unsupported(request)
    assert why is not None and "thinking blocks" in why
    assert unsupported(ProviderRequest(prompt="x", temperature=1.0, reasoning_effort="low")) is None


async def test_native_schemas_close_every_object_and_open_ones_go_as_a_forced_tool(
    upstream: Upstream,
) -> None:
    """Structured outputs want `additionalProperties: false` on every object (docs:
    build-with-claude/structured-outputs, JSON Schema limitations)."""
    loose = {
        "type": "object",
        "properties": {
            "who": {"type": "object", "properties": {"name": {"type": "string"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {}}},
            "additionalProperties": {"type": "string"},  # a property so named, not the keyword
        },
        "$defs": {"minimum": {"type": "object"}},  # a definition so named, not the keyword
    }
    upstream.reply = replying(PROFILE.success("{}", "end_turn", (1, 1)))
    await upstream.call(
        json_request(ResponseFormat("json_schema", schema=loose)), structured_outputs=True
    )
    sent = upstream.last_json["output_config"]["format"]["schema"]
    assert sent["additionalProperties"] is False
    assert sent["properties"]["who"]["additionalProperties"] is False
    assert sent["properties"]["tags"]["items"]["additionalProperties"] is False
    assert sent["properties"]["additionalProperties"] == {"type": "string"}
    assert sent["$defs"]["minimum"] == {"type": "object", "additionalProperties": False}
    open_map = {"type": "object", "additionalProperties": {"type": "integer"}}
    upstream.reply = replying(forced_answer("json_answer", {"a": 1}))
    result = await upstream.call(
        json_request(ResponseFormat("json_schema", schema=open_map)), structured_outputs=True
    )
    assert "output_config" not in upstream.last_json
    assert upstream.last_json["tools"][0]["input_schema"] == open_map
    assert result.text == '{"a":1}'


async def test_merged_turns_carry_no_empty_text_block(upstream: Upstream) -> None:
    history = (Message("user", "first"), Message("user", ""), Message("user", "second"))
    await upstream.call(ProviderRequest(messages=history))
    assert upstream.last_json["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        }
    ]
