"""Gemini: blocked prompts and answers, Google's error bodies, URL rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

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
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    NotFound,
    RateLimited,
)
from llm_worker.adapters.gemini import GeminiAdapter

from .test_adapter_contract import Gemini, Upstream, replying, serve

PROFILE = Gemini()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(PROFILE) as up:
        yield up


def google_error(code: int, message: str, status: str, *details: dict[str, Any]) -> Any:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


@pytest.mark.parametrize(
    "reason", ["SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII"]
)
async def test_blocked_answer_is_content_filtered(upstream: Upstream, reason: str) -> None:
    body = PROFILE.success("", reason, (8, 0))
    body["candidates"][0]["safetyRatings"] = [
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
    ]
    upstream.reply = replying({**body, "responseId": "resp-1"})
    with pytest.raises(ContentFiltered, match=reason) as info:
        await upstream.call()
    assert (info.value.status, info.value.request_id) == (200, "resp-1")
    assert not info.value.retryable


async def test_blocked_prompt_is_content_filtered(upstream: Upstream) -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8}}
    upstream.reply = replying(body)
    with pytest.raises(ContentFiltered, match="prompt blocked"):
        await upstream.call()


async def test_parts_are_joined_thoughts_skipped_and_reasons_mapped(upstream: Upstream) -> None:
    body = PROFILE.success("", "OTHER", (4, 6))
    body["candidates"][0]["content"]["parts"] = [
        {"text": "thinking it over", "thought": True},
        {"text": "Para one. "},
        {"text": "Para two."},
    ]
    upstream.reply = replying({**body, "responseId": "resp-2"})
    result = await upstream.call()
    assert result.text == "Para one. Para two."
    assert result.finish_reason == "other"
    assert result.request_id == "resp-2"


async def test_candidate_without_content_is_an_empty_answer(upstream: Upstream) -> None:
    upstream.reply = replying({"candidates": [{"finishReason": "MAX_TOKENS"}]})
    result = await upstream.call()
    assert (result.text, result.finish_reason, result.input_tokens) == ("", "length", 0)


async def test_invalid_key_400_is_an_auth_error(upstream: Upstream) -> None:
    info_detail = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    }
    body = google_error(
        400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", info_detail
    )
    upstream.reply = replying(body, 400)
    with pytest.raises(AuthError) as info:
        await upstream.call()
    assert info.value.status == 400
    assert "INVALID_ARGUMENT" in info.value.message


async def test_resource_exhausted_carries_the_retry_delay(upstream: Upstream) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    body = google_error(429, "You exceeded your current quota.", "RESOURCE_EXHAUSTED", retry)
    upstream.reply = replying(body, 429)
    with pytest.raises(RateLimited) as info:
        await upstream.call()
    assert info.value.retry_after == 37.0
    upstream.reply = replying(body, 429, {"Retry-After": "5"})
    with pytest.raises(RateLimited) as info:
        await upstream.call()
    assert info.value.retry_after == 5.0


async def test_error_wrapped_in_a_list_is_understood(upstream: Upstream) -> None:
    upstream.reply = replying([google_error(404, "models/x is not found", "NOT_FOUND")], 404)
    with pytest.raises(NotFound, match="models/x is not found"):
        await upstream.call()


async def test_too_many_input_tokens_is_a_context_length_error(upstream: Upstream) -> None:
    message = (
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    )
    upstream.reply = replying(google_error(400, message, "INVALID_ARGUMENT"), 400)
    with pytest.raises(ContextLengthExceeded):
        await upstream.call()


@pytest.mark.parametrize(
    ("endpoint", "model", "url"),
    [
        ("", "gemini-2.0-flash", "https://generativelanguage.googleapis.com/v1beta/models/"),
        ("https://gw.example/", "models/gemini-pro", "https://gw.example/v1beta/models/"),
        ("https://gw.example/v1beta", "gemini-pro", "https://gw.example/v1beta/models/"),
        ("https://gw.example/v1/", "gemini-pro", "https://gw.example/v1/models/"),
    ],
)
def test_url(endpoint: str, model: str, url: str) -> None:
    adapter = GeminiAdapter()
    target = Upstream(PROFILE).target(endpoint=endpoint, model=model)
    expected = url + model.removeprefix("models/") + ":generateContent"
    assert str(adapter.url_for(adapter.endpoint_for(target), target)) == expected


async def test_only_system_messages_is_refused_before_sending(upstream: Upstream) -> None:
    with pytest.raises(BadRequest, match="no user or assistant"):
        await upstream.call(ProviderRequest(messages=(Message("system", "alone"),)))
    assert upstream.received == []


# -- structured fields ------------------------------------------------------------------------

# ai.google.dev/gemini-api/docs/function-calling (REST): the "set_light_values" declaration
LIGHT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "brightness": {
            "type": "integer",
            "description": "Light level from 0 to 100. Zero is off and 100 is full brightness",
        },
        "color_temp": {
            "type": "string",
            "enum": ["daylight", "cool", "warm"],
            "description": "Color temperature of the light fixture, which can be `daylight`, "
            "`cool` or `warm`.",
        },
    },
    "required": ["brightness", "color_temp"],
}
LIGHT = Tool(
    "set_light_values",
    LIGHT_PARAMETERS,
    "Sets the brightness and color temperature of a light.",
)
ROMANTIC = Message("user", "Turn the lights down to a romantic level")
# the same page's answer: one functionCall part, finishReason STOP
LIGHT_ANSWER: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {
                            "name": "set_light_values",
                            "args": {"color_temp": "warm", "brightness": 25},
                        }
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 69, "candidatesTokenCount": 20, "totalTokenCount": 89},
}


async def test_tools_are_function_declarations_with_their_json_schema(
    upstream: Upstream,
) -> None:
    request = ProviderRequest(messages=(ROMANTIC,), tools=(LIGHT,))
    await upstream.call(request)
    body = upstream.last_json
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "set_light_values",
                    "description": "Sets the brightness and color temperature of a light.",
                    "parametersJsonSchema": LIGHT_PARAMETERS,
                }
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        (ToolChoice("auto"), {"mode": "AUTO"}),
        (ToolChoice("none"), {"mode": "NONE"}),
        (ToolChoice("required"), {"mode": "ANY"}),
        (
            ToolChoice("function", "set_light_values"),
            {"mode": "ANY", "allowedFunctionNames": ["set_light_values"]},
        ),
    ],
)
async def test_tool_choice_is_the_function_calling_mode(
    upstream: Upstream, choice: ToolChoice, config: dict[str, Any]
) -> None:
    await upstream.call(ProviderRequest(messages=(ROMANTIC,), tools=(LIGHT,), tool_choice=choice))
    assert upstream.last_json["toolConfig"] == {"functionCallingConfig": config}


async def test_function_call_parts_are_tool_calls(upstream: Upstream) -> None:
    upstream.reply = replying(LIGHT_ANSWER)
    result = await upstream.call(ProviderRequest(messages=(ROMANTIC,), tools=(LIGHT,)))
    assert result.tool_calls == (
        ToolCall("call_0", "set_light_values", {"color_temp": "warm", "brightness": 25}),
    )
    assert (result.text, result.finish_reason) == ("", "tool_calls")


async def test_several_calls_get_stable_ids_and_a_bad_args_value_is_kept(
    upstream: Upstream,
) -> None:
    parts = [
        {"text": "Setting both."},
        {"functionCall": {"name": "power", "args": {"on": True}}},
        {"functionCall": {"name": "dim", "id": "fc-google-7", "args": {}}},
        {"functionCall": {"name": "odd", "args": [1, 2]}},
        {"functionCall": {"name": "bare"}},
    ]
    upstream.reply = replying(
        {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}
    )
    result = await upstream.call(ProviderRequest(messages=(ROMANTIC,), tools=(LIGHT,)))
    assert result.text == "Setting both."
    assert result.tool_calls == (
        ToolCall("call_0", "power", {"on": True}),
        ToolCall("fc-google-7", "dim", {}),
        ToolCall("call_2", "odd", {}, unparsed="[1,2]"),
        ToolCall("call_3", "bare", {}),
    )


async def test_tool_history_becomes_function_call_and_response_parts(
    upstream: Upstream,
) -> None:
    # ai.google.dev/gemini-api/docs/function-calling: the model turn's functionCall is sent
    # back with the function's result as a functionResponse {name, response} in a user turn
    calls = (
        ToolCall("call_a", "set_light_values", {"brightness": 25, "color_temp": "warm"}),
        ToolCall("call_b", "power", {"on": True}),
    )
    request = ProviderRequest(
        messages=(
            ROMANTIC,
            Message("assistant", None, tool_calls=calls),
            Message(
                "tool", '{"brightness": 25, "colorTemperature": "warm"}', tool_call_id="call_a"
            ),
            Message("tool", "done", tool_call_id="call_b"),
            Message("user", "thanks"),
        ),
        tools=(LIGHT,),
    )
    await upstream.call(request)
    assert upstream.last_json["contents"] == [
        {"role": "user", "parts": [{"text": "Turn the lights down to a romantic level"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "set_light_values",
                        "args": {"brightness": 25, "color_temp": "warm"},
                    },
                    "thoughtSignature": "skip_thought_signature_validator",
                },
                {"functionCall": {"name": "power", "args": {"on": True}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "set_light_values",
                        "response": {"brightness": 25, "colorTemperature": "warm"},
                    }
                },
                {"functionResponse": {"name": "power", "response": {"result": "done"}}},
            ],
        },
        {"role": "user", "parts": [{"text": "thanks"}]},
    ]


async def test_a_tool_turn_answering_no_call_is_refused_before_sending(
    upstream: Upstream,
) -> None:
    request = ProviderRequest(
        messages=(ROMANTIC, Message("tool", "done", tool_call_id="call_x")), tools=(LIGHT,)
    )
    with pytest.raises(BadRequest, match="call_x"):
        await upstream.call(request)
    assert upstream.received == []


# ai.google.dev/gemini-api/docs/structured-output: a recipe list as JSON Schema
RECIPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "recipe_name": {"type": "string", "description": "The name of the recipe."},
        "ingredients": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "quantity": {"type": "string"},
                },
                "required": ["name", "quantity"],
            },
        },
        "prep_time_minutes": {"type": ["integer", "null"], "minimum": 0},
    },
    "required": ["recipe_name", "ingredients"],
    "additionalProperties": False,
}


async def test_json_schema_is_sent_as_response_json_schema(upstream: Upstream) -> None:
    answer = '{"recipe_name": "Chocolate Chip Cookies", "ingredients": []}'
    upstream.reply = replying(PROFILE.success(answer, "STOP", (10, 20)))
    fmt = ResponseFormat("json_schema", "recipe", {"$schema": "x", **RECIPE_SCHEMA}, True)
    request = ProviderRequest(messages=(Message("user", "a cookie recipe"),), response_format=fmt)
    assert GeminiAdapter().unsupported(upstream.target(), request) is None
    result = await upstream.call(request)
    assert upstream.last_json["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": RECIPE_SCHEMA,  # the $schema annotation left out
    }
    assert result.text == answer


async def test_json_object_is_the_json_mime_type_alone(upstream: Upstream) -> None:
    fmt = ResponseFormat("json_object")
    await upstream.call(ProviderRequest(messages=(ROMANTIC,), response_format=fmt))
    assert upstream.last_json["generationConfig"] == {"responseMimeType": "application/json"}


def _schema_request(schema: dict[str, Any]) -> ProviderRequest:
    fmt = ResponseFormat("json_schema", "s", schema)
    return ProviderRequest(messages=(ROMANTIC,), response_format=fmt)


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a"}}}, "pattern"),
        ({"type": "array", "items": {"allOf": [{"type": "string"}]}}, "allOf"),
        ({"anyOf": [{"type": "string", "minLength": 2}]}, "minLength"),
        ({"$defs": {"n": {"const": 1}}, "$ref": "#/$defs/n"}, "const"),
        ({"type": "object", "additionalProperties": {"not": {}}}, "not"),
    ],
)
def test_a_schema_keyword_gemini_does_not_take_is_refused_by_name(
    schema: dict[str, Any], keyword: str
) -> None:
    target = Upstream(PROFILE).target()
    why = GeminiAdapter().unsupported(target, _schema_request(schema))
    assert why == (
        f"`response_format` schema keyword `{keyword}` is not supported by provider gemini "
        "(model test-model)"
    )
    tool = Tool("f", schema)
    why = GeminiAdapter().unsupported(target, ProviderRequest(messages=(ROMANTIC,), tools=(tool,)))
    assert why is not None and f"keyword `{keyword}` (tool `f`)" in why


def test_property_names_are_not_keywords() -> None:
    schema = {"type": "object", "properties": {"pattern": {"type": "string"}, "const": {}}}
    assert GeminiAdapter().unsupported(Upstream(PROFILE).target(), _schema_request(schema)) is None


# ai.google.dev/gemini-api/docs/image-understanding (REST): inline_data {mime_type, data} parts
# beside the text; the camelCase names are the same fields in proto JSON
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


async def test_images_are_inline_data_or_file_data(upstream: Upstream) -> None:
    content = (
        ImagePart(ImageURL(f"data:image/png;base64,{PIXEL}")),
        TextPart("Caption this image."),
        ImagePart(ImageURL("https://example.com/photos/cat.JPG?size=large")),
        ImagePart(ImageURL("https://example.com/render")),
    )
    await upstream.call(ProviderRequest(messages=(Message("user", content),)))
    assert upstream.last_json["contents"] == [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "image/png", "data": PIXEL}},
                {"text": "Caption this image."},
                {
                    "fileData": {
                        "fileUri": "https://example.com/photos/cat.JPG?size=large",
                        "mimeType": "image/jpeg",
                    }
                },
                {"fileData": {"fileUri": "https://example.com/render"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/a.png", "`http:` URL"),
        ("data:image/png,rawbytes", "not `data:<mime type>;base64,`"),
    ],
)
def test_images_gemini_cannot_fetch_are_refused(url: str, why: str) -> None:
    request = ProviderRequest(messages=(Message("user", (ImagePart(ImageURL(url)),)),))
    refusal = GeminiAdapter().unsupported(Upstream(PROFILE).target(), request)
    assert refusal is not None and why in refusal and "provider gemini" in refusal


@pytest.mark.parametrize(("effort", "budget"), [("low", 1024), ("medium", 8192), ("high", 24576)])
async def test_reasoning_effort_is_a_thinking_budget(
    upstream: Upstream, effort: Any, budget: int
) -> None:
    await upstream.call(ProviderRequest(messages=(ROMANTIC,), reasoning_effort=effort))
    assert upstream.last_json["generationConfig"] == {"thinkingConfig": {"thinkingBudget": budget}}


def test_every_structured_field_is_honoured() -> None:
    request = ProviderRequest(
        messages=(Message("user", (ImagePart(ImageURL("https://example.com/a.png")),)),),
        response_format=ResponseFormat("json_schema", "r", RECIPE_SCHEMA),
        tools=(LIGHT,),
        tool_choice=ToolChoice("auto"),
        reasoning_effort="low",
    )
    assert GeminiAdapter().unsupported(Upstream(PROFILE).target(), request) is None


async def test_usage_counts_cached_and_thought_tokens(upstream: Upstream) -> None:
    # ai.google.dev/api/generate-content#UsageMetadata: promptTokenCount includes the cached
    # content; totalTokenCount = prompt + candidates + toolUsePrompt + thoughts, so the
    # thoughts are not in candidatesTokenCount and are added to the output here
    body = PROFILE.success("42", "STOP", (0, 0))
    body["usageMetadata"] = {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1024,
        "candidatesTokenCount": 12,
        "thoughtsTokenCount": 300,
        "totalTokenCount": 1512,
    }
    upstream.reply = replying(body)
    result = await upstream.call()
    assert (result.input_tokens, result.cached_input_tokens) == (1200, 1024)
    assert (result.output_tokens, result.reasoning_tokens) == (312, 300)


async def test_a_blocked_finish_after_some_text_is_content_filter(upstream: Upstream) -> None:
    upstream.reply = replying(PROFILE.success("Partial answer", "RECITATION", (5, 2)))
    result = await upstream.call()
    assert (result.text, result.finish_reason) == ("Partial answer", "content_filter")


async def test_empty_text_parts_and_empty_turns_are_left_out(upstream: Upstream) -> None:
    # Gemini answers 400 to an empty text part and to a turn without parts
    image = ImagePart(ImageURL("https://example.com/a.png"))
    request = ProviderRequest(
        messages=(
            Message("system", ""),
            Message("user", (TextPart(""), image)),
            Message("assistant", None),
            Message("user", "and?"),
        )
    )
    await upstream.call(request)
    body = upstream.last_json
    assert "systemInstruction" not in body
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"fileData": {"fileUri": "https://example.com/a.png", "mimeType": "image/png"}}
            ],
        },
        {"role": "user", "parts": [{"text": "and?"}]},
    ]
