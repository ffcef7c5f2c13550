"""The OpenAI family (openai, openai_compatible, azure_openai, fake) carrying structured fields:
tools and tool turns, image parts, response_format in both dialects, reasoning_effort, the token
cap's name, and the answer's tool calls and usage details. Golden bodies and answers are the
documented examples of OpenAI's and Azure's API pages (named at each)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters import get_adapter
from llm_worker.adapters.azure_openai import AzureOpenAIAdapter
from llm_worker.adapters.base import (
    ImagePart,
    ImageURL,
    Message,
    ProviderRequest,
    ResponseFormat,
    Target,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from llm_worker.adapters.errors import ContentFiltered, ServerError
from llm_worker.adapters.features import ALL_FEATURES, IMAGES, JSON_OBJECT, JSON_SCHEMA, TOOLS
from llm_worker.adapters.openai_compatible import OpenAICompatibleAdapter

from .test_adapter_contract import Azure, Profile, Upstream, serve

FAMILY = ("openai", "openai_compatible", "azure_openai", "fake")


def target(provider: str = "openai", **overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "provider": provider,
        "endpoint": "https://myres.openai.azure.com" if provider == "azure_openai" else "",
        "model": "gpt-4.1",
        "endpoint_name": "primary:test",
    }
    fields.update(overrides)
    return Target(**fields)


def body(provider: str, request: ProviderRequest, **overrides: Any) -> dict[str, Any]:
    adapter = get_adapter(provider)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    decoded: dict[str, Any] = msgspec.json.decode(
        adapter.build_body(target(provider, **overrides), request)
    )
    return decoded


def parse(provider: str, answer: dict[str, Any], **overrides: Any) -> Any:
    adapter = get_adapter(provider)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    return adapter.parse_result(
        target(provider, **overrides), msgspec.json.encode(answer), None, {}
    )


# -- OpenAI API reference, "Create chat completion", example "Functions" -------------------

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "location": {
            "type": "string",
            "description": "The city and state, e.g. San Francisco, CA",
        },
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
WEATHER_TOOL = Tool(
    "get_current_weather", WEATHER_PARAMETERS, "Get the current weather in a given location"
)
FUNCTIONS_REQUEST = ProviderRequest(
    messages=(Message("user", "What is the weather like in Boston today?"),),
    tools=(WEATHER_TOOL,),
    tool_choice=ToolChoice("auto"),
)
FUNCTIONS_BODY = {
    "model": "gpt-4.1",
    "messages": [{"role": "user", "content": "What is the weather like in Boston today?"}],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": WEATHER_PARAMETERS,
            },
        }
    ],
    "tool_choice": "auto",
}
FUNCTIONS_ANSWER = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1699896916,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{\n"location": "Boston, MA"\n}',
                        },
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 82,
        "completion_tokens": 17,
        "total_tokens": 99,
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}


@pytest.mark.parametrize("provider", FAMILY)
def test_functions_request_is_the_documented_body(provider: str) -> None:
    expected = {**FUNCTIONS_BODY, "model": "gpt-4.1"}
    assert body(provider, FUNCTIONS_REQUEST) == expected


@pytest.mark.parametrize("provider", FAMILY)
def test_functions_answer_becomes_a_tool_call(provider: str) -> None:
    result = parse(provider, FUNCTIONS_ANSWER)
    assert result.text == ""
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (
        ToolCall("call_abc123", "get_current_weather", {"location": "Boston, MA"}),
    )
    assert (result.input_tokens, result.output_tokens, result.reasoning_tokens) == (82, 17, 0)


def test_tool_turns_go_back_as_openai_documents_them() -> None:
    """The function-calling guide's second request: the assistant turn with its tool_calls
    (arguments as JSON text, content null) and the tool turn answering it by id."""
    call = ToolCall("call_abc123", "get_current_weather", {"location": "Boston, MA"})
    request = ProviderRequest(
        messages=(
            Message("user", "What is the weather like in Boston today?"),
            Message("assistant", None, tool_calls=(call,)),
            Message("tool", '{"temperature": "22", "unit": "celsius"}', tool_call_id=call.id),
        ),
        tools=(WEATHER_TOOL,),
    )
    sent = body("openai", request)
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123",
                    "type": "function",
                    "function": {
                        "name": "get_current_weather",
                        "arguments": '{"location":"Boston, MA"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "content": '{"temperature": "22", "unit": "celsius"}',
            "tool_call_id": "call_abc123",
        },
    ]
    assert "tool_choice" not in sent


def test_unparsed_arguments_go_back_as_the_model_said_them() -> None:
    call = ToolCall("call_1", "f", {}, unparsed="not json")
    request = ProviderRequest(
        messages=(Message("user", "hi"), Message("assistant", "", tool_calls=(call,)))
    )
    assert body("openai_compatible", request)["messages"][1]["tool_calls"][0]["function"] == {
        "name": "f",
        "arguments": "not json",
    }


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ToolChoice("none"), "none"),
        (ToolChoice("required"), "required"),
        (
            ToolChoice("function", "get_current_weather"),
            {"type": "function", "function": {"name": "get_current_weather"}},
        ),
    ],
)
def test_tool_choice(choice: ToolChoice, wire: Any) -> None:
    request = ProviderRequest(messages=FUNCTIONS_REQUEST.messages, tools=(WEATHER_TOOL,))
    sent = body("openai", msgspec.structs.replace(request, tool_choice=choice))
    assert sent["tool_choice"] == wire


@pytest.mark.parametrize(
    ("arguments", "parsed", "unparsed"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}, None),
        ("[1, 2]", {}, "[1, 2]"),
        ('{"a": ', {}, '{"a": '),
        ("", {}, None),
        ({"a": 1}, {"a": 1}, None),  # a server that sends the object itself
        (7, {}, "7"),
    ],
)
def test_arguments_that_are_no_object_are_kept_unparsed(
    arguments: Any, parsed: dict[str, Any], unparsed: str | None
) -> None:
    answer = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": arguments}}],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    (call,) = parse("openai_compatible", answer).tool_calls
    assert (call.id, call.name, call.arguments, call.unparsed) == ("c1", "f", parsed, unparsed)


def test_deprecated_function_call_finish_reason_is_tool_calls() -> None:
    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": "function_call"}]}
    assert parse("openai", answer).finish_reason == "tool_calls"


def test_a_tool_call_without_a_list_is_a_malformed_answer() -> None:
    answer = {"choices": [{"message": {"content": None, "tool_calls": "nope"}}]}
    with pytest.raises(msgspec.ValidationError):
        parse("openai", answer)


# -- OpenAI "Structured Outputs" guide, the math tutor example (curl) ----------------------

MATH_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "explanation": {"type": "string"},
                    "output": {"type": "string"},
                },
                "required": ["explanation", "output"],
                "additionalProperties": False,
            },
        },
        "final_answer": {"type": "string"},
    },
    "required": ["steps", "final_answer"],
    "additionalProperties": False,
}
MATH_REQUEST = ProviderRequest(
    messages=(
        Message(
            "system",
            "You are a helpful math tutor. Guide the user through the solution step by step.",
        ),
        Message("user", "how can I solve 8x + 7 = -23"),
    ),
    response_format=ResponseFormat("json_schema", "math_response", MATH_SCHEMA, strict=True),
)


@pytest.mark.parametrize("provider", FAMILY)
def test_structured_outputs_request_is_the_documented_body(provider: str) -> None:
    sent = body(provider, MATH_REQUEST)
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "math_response", "strict": True, "schema": MATH_SCHEMA},
    }
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


def test_llama_cpp_dialect_sends_the_schema_in_a_json_object_format() -> None:
    """llama-cpp-python's server: `{"type": "json_object", "schema": ...}` (its README,
    "JSON and JSON Schema Mode"); it has no `json_schema` type."""
    sent = body("openai_compatible", MATH_REQUEST, dialect="llama_cpp")
    assert sent["response_format"] == {"type": "json_object", "schema": MATH_SCHEMA}
    plain = msgspec.structs.replace(MATH_REQUEST, response_format=ResponseFormat("json_object"))
    for dialect in ("openai", "llama_cpp"):
        sent = body("openai_compatible", plain, dialect=dialect)
        assert sent["response_format"] == {"type": "json_object"}


_WEATHER = Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}})
_TIME = Tool("get_time", {"type": "object", "properties": {}})


def test_llama_cpp_dialect_forces_the_one_tool_by_name_for_required() -> None:
    """llama-cpp-python 0.3.36's server ignores `tool_choice` "required" and answers text
    (seen against the real server, tests/model): with one tool it is forced by name."""
    ask = ProviderRequest(prompt="weather?", tools=(_WEATHER,), tool_choice=ToolChoice("required"))
    sent = body("openai_compatible", ask, dialect="llama_cpp")
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body("openai_compatible", ask)["tool_choice"] == "required"  # dialect openai
    both = msgspec.structs.replace(ask, tools=(_WEATHER, _TIME))
    adapter = get_adapter("openai_compatible")
    why = adapter.unsupported(target("openai_compatible", dialect="llama_cpp"), both)
    assert why is not None and "`tool_choice`" in why and "llama_cpp" in why
    assert adapter.unsupported(target("openai_compatible"), both) is None


def test_llama_cpp_dialect_sends_an_empty_content_for_a_tool_call_turn() -> None:
    """The same server answers 500 to an assistant turn whose content is null."""
    call = ToolCall("call-1", "get_weather", {"city": "Paris"})
    ask = ProviderRequest(
        messages=(
            Message("user", "weather?"),
            Message("assistant", None, (call,)),
            Message("tool", "sunny", tool_call_id="call-1"),
        ),
        tools=(_WEATHER,),
    )
    assert body("openai_compatible", ask, dialect="llama_cpp")["messages"][1]["content"] == ""
    assert body("openai_compatible", ask)["messages"][1]["content"] is None


def test_json_schema_without_a_name_gets_one_and_text_format_sends_nothing() -> None:
    unnamed = ResponseFormat("json_schema", schema={"type": "object"})
    sent = body("openai", msgspec.structs.replace(MATH_REQUEST, response_format=unnamed))
    assert sent["response_format"]["json_schema"] == {
        "name": "response",
        "schema": {"type": "object"},
    }
    text = msgspec.structs.replace(MATH_REQUEST, response_format=ResponseFormat("text"))
    assert "response_format" not in body("openai", text)


# -- OpenAI "Images and vision" guide, "Analyze images" (image URL) --------------------------

BOARDWALK = (
    "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/"
    "Gfp-wisconsin-madison-the-nature-boardwalk.jpg/"
    "2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
)


@pytest.mark.parametrize("provider", FAMILY)
def test_vision_request_is_the_documented_body(provider: str) -> None:
    parts = (TextPart("What is in this image?"), ImagePart(ImageURL(BOARDWALK)))
    request = ProviderRequest(messages=(Message("user", parts),), max_tokens=300)
    cap = "max_completion_tokens" if provider in ("openai", "azure_openai") else "max_tokens"
    assert body(provider, request) == {
        "model": "gpt-4.1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": BOARDWALK}},
                ],
            }
        ],
        cap: 300,
    }
    detailed = (ImagePart(ImageURL(BOARDWALK, "high")),)
    sent = body(provider, ProviderRequest(messages=(Message("user", detailed),)))
    assert sent["messages"][0]["content"][0]["image_url"] == {"url": BOARDWALK, "detail": "high"}


# -- usage: prompt caching guide (cached_tokens) and reasoning guide (reasoning_tokens) ------


def test_cached_tokens_are_read() -> None:
    """OpenAI "Prompt caching" guide: the usage of a request with a cache hit."""
    usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    answer = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": usage}
    result = parse("openai", answer)
    assert (result.input_tokens, result.cached_input_tokens) == (2006, 1920)
    assert (result.output_tokens, result.reasoning_tokens) == (300, 0)


def test_reasoning_tokens_are_read_and_null_details_are_zero() -> None:
    """OpenAI "Reasoning models" guide, "Managing the context window": the usage object."""
    usage = {
        "total_tokens": 1000,
        "prompt_tokens": 400,
        "completion_tokens": 600,
        "completion_tokens_details": {"reasoning_tokens": 500},
    }
    answer = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": usage}
    result = parse("azure_openai", answer)
    assert (result.output_tokens, result.reasoning_tokens, result.cached_input_tokens) == (
        600,
        500,
        0,
    )
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": None}
    answer["usage"] = {**usage, "completion_tokens_details": {"reasoning_tokens": None}}
    result = parse("openai_compatible", answer)
    assert (result.cached_input_tokens, result.reasoning_tokens) == (0, 0)


# -- reasoning_effort, max_completion_tokens, features ---------------------------------------


@pytest.mark.parametrize(
    ("provider", "cap"),
    [
        ("openai", "max_completion_tokens"),
        ("azure_openai", "max_completion_tokens"),
        ("openai_compatible", "max_tokens"),
        ("fake", "max_tokens"),
    ],
)
def test_the_token_cap_goes_where_the_provider_takes_it(provider: str, cap: str) -> None:
    """OpenAI API reference: `max_tokens` is deprecated in favour of `max_completion_tokens`
    and not compatible with the o-series (reasoning) models."""
    sent = body(provider, ProviderRequest(prompt="hi", max_tokens=50), max_tokens=40)
    other = {"max_tokens", "max_completion_tokens"} - {cap}
    assert sent[cap] == 40
    assert not other & set(sent)


def test_reasoning_effort_is_sent_to_openai() -> None:
    """OpenAI "Reasoning models" guide: `reasoning_effort` beside the messages."""
    request = ProviderRequest(prompt="Write a bash script", reasoning_effort="high")
    assert body("openai", request)["reasoning_effort"] == "high"


@pytest.mark.parametrize(
    ("provider", "features"),
    [
        ("openai", ALL_FEATURES),
        ("azure_openai", ALL_FEATURES),
        ("openai_compatible", frozenset({JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES})),
        ("fake", frozenset({JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES})),
    ],
)
def test_features(provider: str, features: frozenset[str]) -> None:
    adapter = get_adapter(provider)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    assert adapter.features == features
    asks = ProviderRequest(prompt="hi", reasoning_effort="low")
    refusal = adapter.unsupported(
        target(provider, endpoint="https://x/?api-version=2025-04-01-preview"), asks
    )
    if "reasoning_effort" in features:
        assert refusal is None
    else:
        assert refusal is not None and "`reasoning_effort`" in refusal and provider in refusal


def test_azure_refuses_reasoning_effort_below_its_api_version() -> None:
    adapter = AzureOpenAIAdapter()
    asks = ProviderRequest(prompt="hi", reasoning_effort="low")
    old = adapter.unsupported(target("azure_openai"), asks)  # the default 2024-10-21
    assert old is not None and "api-version 2024-10-21" in old and "2024-12-01-preview" in old
    for version in ("2024-12-01-preview", "2025-01-01", "2025-04-01-preview"):
        endpoint = f"https://myres.openai.azure.com/?api-version={version}"
        assert adapter.unsupported(target("azure_openai", endpoint=endpoint), asks) is None
    assert adapter.unsupported(target("azure_openai"), ProviderRequest(prompt="hi")) is None


def test_plain_request_encodes_without_any_structured_field() -> None:
    sent = body("openai_compatible", ProviderRequest(prompt="hi"))
    assert sent == {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


# -- Azure: the same shapes on the deployment URL --------------------------------------------


@pytest.fixture
async def azure() -> AsyncIterator[Upstream]:
    async with serve(Azure()) as up:
        yield up


async def test_azure_structured_outputs_on_the_wire(azure: Upstream) -> None:
    """Azure OpenAI "How to use structured outputs" (REST): the calendar event extraction,
    and an answer carrying Azure's content-filter annotations."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "date": {"type": "string"},
            "participants": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "date", "participants"],
        "additionalProperties": False,
    }
    request = ProviderRequest(
        messages=(
            Message("system", "Extract the event information."),
            Message("user", "Alice and Bob are going to a science fair on Friday."),
        ),
        response_format=ResponseFormat("json_schema", "CalendarEventResponse", schema, True),
        max_tokens=800,
    )
    content = '{"name":"Science Fair","date":"Friday","participants":["Alice","Bob"]}'

    async def answer(request: web.Request) -> web.StreamResponse:
        filters = {"hate": {"filtered": False, "severity": "safe"}}
        return web.json_response(
            {
                "id": "chatcmpl-A1",
                "object": "chat.completion",
                "model": "gpt-4o-2024-08-06",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                        "content_filter_results": filters,
                    }
                ],
                "usage": {
                    "prompt_tokens": 92,
                    "completion_tokens": 23,
                    "total_tokens": 115,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            }
        )

    azure.reply = answer
    result = await azure.call(request)
    sent = azure.last_json
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "CalendarEventResponse", "schema": schema, "strict": True},
    }
    assert sent["max_completion_tokens"] == 800 and "max_tokens" not in sent
    assert result.text == content and result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (92, 23)


async def test_azure_tool_call_with_content_filter_finish_is_not_refused(azure: Upstream) -> None:
    """A `content_filter` finish with tool calls but no text still answered something."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = {**FUNCTIONS_ANSWER}
        choice = {**FUNCTIONS_ANSWER["choices"][0], "finish_reason": "content_filter"}  # type: ignore[index]
        body["choices"] = [choice]
        return web.json_response(body)

    azure.reply = answer
    result = await azure.call(FUNCTIONS_REQUEST)
    assert result.tool_calls[0].name == "get_current_weather"
    assert result.finish_reason == "content_filter"


async def test_azure_filtered_answer_without_anything_is_still_content_filtered(
    azure: Upstream,
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        choice = {"index": 0, "finish_reason": "content_filter", "message": {"content": None}}
        return web.json_response({"choices": [choice]})

    azure.reply = answer
    with pytest.raises(ContentFiltered):
        await azure.call(FUNCTIONS_REQUEST)


async def test_openai_tools_reach_the_wire() -> None:
    async with serve(Profile("openai")) as up:
        await up.call(FUNCTIONS_REQUEST)
        assert up.last_json == {**FUNCTIONS_BODY, "model": "test-model"}
        assert up.received[-1][0] == "/v1/chat/completions"


async def test_malformed_tool_calls_are_a_retryable_server_error() -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"message": {"tool_calls": [1]}}]})

    async with serve(Profile("openai_compatible")) as up:
        up.reply = answer
        with pytest.raises(ServerError):
            await up.call(FUNCTIONS_REQUEST)
