"""Hugging Face TGI / Inference Endpoints: both wire forms, TGI's limits and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
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
from llm_worker.adapters.errors import BadRequest, ContextLengthExceeded, RateLimited, ServerError
from llm_worker.adapters.huggingface import (
    DEFAULT_HF_ENDPOINT,
    HuggingFaceAdapter,
    is_generate_endpoint,
)

from .test_adapter_contract import HFChat, HFGenerate, Upstream, replying, serve

GENERATE = HFGenerate()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(GENERATE) as up:
        yield up


@pytest.mark.parametrize(
    ("endpoint", "native"),
    [
        ("http://tgi:8080/generate", True),
        ("http://tgi:8080/generate/", True),
        ("https://x.endpoints.huggingface.cloud/generate", True),
        ("http://tgi:8080", False),
        ("http://tgi:8080/v1", False),
        ("http://tgi:8080/generate_stream", False),
    ],
)
def test_the_endpoint_chooses_the_form(endpoint: str, native: bool) -> None:
    assert is_generate_endpoint(endpoint) is native


def test_without_an_endpoint_the_router_is_used() -> None:
    adapter = HuggingFaceAdapter()
    target = Upstream(GENERATE).target(endpoint="")
    assert adapter.endpoint_for(target) == DEFAULT_HF_ENDPOINT
    form = adapter.form_for(target)
    url = form.url_for(form.endpoint_for(target), target)
    assert str(url) == "https://router.huggingface.co/v1/chat/completions"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_chat_form_never_doubles_v1(suffix: str) -> None:
    async with serve(HFChat()) as up:
        await up.call(endpoint=up.base + suffix)
        assert up.received[-1][0] == "/v1/chat/completions"
        assert up.received[-1][1]["Authorization"] == HFChat().key_value()


@pytest.mark.parametrize(
    ("temperature", "top_p", "sent"),
    [
        (0.0, 1.0, {}),
        (0.7, 0.95, {"temperature": 0.7, "top_p": 0.95}),
        (1e-3, 0.0, {"temperature": 1e-3}),
    ],
)
async def test_values_tgi_would_reject_are_left_out(
    upstream: Upstream, temperature: float, top_p: float, sent: dict[str, float]
) -> None:
    await upstream.call(ProviderRequest(prompt="x", temperature=temperature, top_p=top_p))
    assert upstream.last_json["parameters"] == {**sent, "details": True}


async def test_messages_are_flattened_into_lines(upstream: Upstream) -> None:
    chat = (Message("user", "2+2?"), Message("assistant", "4"), Message("user", "and 3+3?"))
    await upstream.call(ProviderRequest(messages=chat))
    assert upstream.last_json["inputs"] == "user: 2+2?\nassistant: 4\nuser: and 3+3?\nassistant:"


async def test_stop_sequence_and_token_counts_from_headers(upstream: Upstream) -> None:
    body = {"generated_text": " 6", "details": {"finish_reason": "stop_sequence", "prefill": []}}
    headers = {"x-prompt-tokens": "17", "x-generated-tokens": "2", "x-request-id": "hf-1"}
    upstream.reply = replying(body, 200, headers)
    result = await upstream.call()
    assert (result.text, result.finish_reason) == (" 6", "stop")
    assert (result.input_tokens, result.output_tokens, result.request_id) == (17, 2, "hf-1")


async def test_list_answer_without_details(upstream: Upstream) -> None:
    upstream.reply = replying([{"generated_text": "hello"}], 200, {"x-prompt-tokens": "oops"})
    result = await upstream.call()
    assert (result.text, result.finish_reason) == ("hello", None)
    assert (result.input_tokens, result.output_tokens) == (0, 0)


async def test_model_loading_is_retryable_with_the_estimated_wait(upstream: Upstream) -> None:
    body = {"error": "Model org/model is currently loading", "estimated_time": 21.5}
    upstream.reply = replying(body, 503)
    with pytest.raises(ServerError) as info:
        await upstream.call()
    assert info.value.retryable
    assert info.value.retry_after == 21.5
    assert "currently loading" in info.value.message
    upstream.reply = replying(body, 503, {"Retry-After": "2"})
    with pytest.raises(ServerError) as info:
        await upstream.call()
    assert info.value.retry_after == 2.0  # the header wins over the body


async def test_failed_generation_424_is_retryable(upstream: Upstream) -> None:
    body = {"error": "Request failed during generation: CUDA OOM", "error_type": "generation"}
    upstream.reply = replying(body, 424)
    with pytest.raises(ServerError) as info:
        await upstream.call()
    assert info.value.status == 424
    assert "(generation)" in info.value.message


async def test_overloaded_tgi_is_rate_limited(upstream: Upstream) -> None:
    upstream.reply = replying({"error": "Model is overloaded", "error_type": "overloaded"}, 429)
    with pytest.raises(RateLimited):
        await upstream.call()


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        (
            "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
            "Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
            ContextLengthExceeded,
        ),
        ("Input validation error: `inputs` must have less than 1024 tokens.", None),
        ("Input validation error: `top_k` must be strictly positive", BadRequest),
    ],
)
async def test_validation_errors(
    upstream: Upstream, message: str, cls: type[BadRequest] | None
) -> None:
    upstream.reply = replying({"error": message, "error_type": "validation"}, 422)
    with pytest.raises(BadRequest) as info:
        await upstream.call()
    assert type(info.value) is (cls or ContextLengthExceeded)
    assert not info.value.retryable


# -- structured work: JSON answers, tools, images, per form -------------------------------------

CHAT = HFChat()
ROUTER = "https://router.huggingface.co/v1"

# The schema of TGI's guidance page, "The Grammar Parameter"
# (https://huggingface.co/docs/text-generation-inference/basic_tutorials/using_guidance)
ANIMALS = {
    "properties": {
        "location": {"type": "string"},
        "activity": {"type": "string"},
        "animals_seen": {"type": "integer", "minimum": 1, "maximum": 5},
        "animals": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["location", "activity", "animals_seen", "animals"],
}
PUPPY = "I saw a puppy a cat and a raccoon during my bike ride in the park"

# The tool of the same page, "The Tools Parameter"
WEATHER = Tool(
    name="get_current_weather",
    description="Get the current weather",
    parameters={
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            },
            "format": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "The temperature unit to use. Infer this from the users location.",
            },
        },
        "required": ["location", "format"],
    },
)
WEATHER_WIRE = {
    "type": "function",
    "function": {
        "name": WEATHER.name,
        "description": WEATHER.description,
        "parameters": WEATHER.parameters,
    },
}


def body_for(endpoint: str, request: ProviderRequest) -> dict[str, Any]:
    """The body the form `endpoint` selects would send (no call)."""
    target = Upstream(CHAT).target(endpoint=endpoint)
    form = HuggingFaceAdapter().form_for(target)
    decoded: dict[str, Any] = msgspec.json.decode(form.build_body(target, request))
    return decoded


def refusal(endpoint: str, request: ProviderRequest) -> str | None:
    return HuggingFaceAdapter().unsupported(Upstream(CHAT).target(endpoint=endpoint), request)


async def test_generate_asks_json_as_the_documented_grammar(upstream: Upstream) -> None:
    # request and answer: TGI's guidance page, "The Grammar Parameter" (curl to /generate)
    fmt = ResponseFormat(type="json_schema", name="animals", schema=ANIMALS)
    answer = (
        '{ \n\n"activity": "biking",\n"animals": ["puppy","cat","raccoon"],\n'
        '"animals_seen": 3,\n"location": "park"\n}'
    )
    upstream.reply = replying({"generated_text": answer})
    result = await upstream.call(ProviderRequest(prompt=PUPPY, response_format=fmt))
    assert upstream.last_json == {
        "inputs": PUPPY,
        "parameters": {"grammar": {"type": "json", "value": ANIMALS}, "details": True},
    }
    assert result.text == answer
    assert result.tool_calls == ()


async def test_generate_json_object_is_any_object(upstream: Upstream) -> None:
    await upstream.call(ProviderRequest(prompt="x", response_format=ResponseFormat("json_object")))
    assert upstream.last_json["parameters"]["grammar"] == {
        "type": "json",
        "value": {"type": "object"},
    }
    await upstream.call(ProviderRequest(prompt="x", response_format=ResponseFormat("text")))
    assert "grammar" not in upstream.last_json["parameters"]


async def test_generate_flattens_text_parts(upstream: Upstream) -> None:
    parts = (TextPart("2+"), TextPart("2?"))
    await upstream.call(ProviderRequest(messages=(Message("user", parts),)))
    assert upstream.last_json["inputs"] == "user: 2+2?\nassistant:"


IMAGE = ImagePart(ImageURL("https://example.com/rabbit.png"))
WITH_TOOLS = ProviderRequest(prompt="x", tools=(WEATHER,))
WITH_IMAGE = ProviderRequest(messages=(Message("user", (TextPart("what?"), IMAGE)),))
TOOL_TURN = ProviderRequest(
    messages=(Message("user", "hi"), Message("tool", "6.7", tool_call_id="0"))
)
REASONING = ProviderRequest(prompt="x", reasoning_effort="low")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (WITH_TOOLS, "`tools`"),
        (ProviderRequest(prompt="x", tool_choice=ToolChoice("none")), "`tools`"),
        (TOOL_TURN, "`tools`"),
        (WITH_IMAGE, "`image_url` content parts"),
        (REASONING, "`reasoning_effort`"),
    ],
)
async def test_generate_refuses_what_it_cannot_carry(
    upstream: Upstream, request_: ProviderRequest, field: str
) -> None:
    adapter = HuggingFaceAdapter()
    why = adapter.unsupported(upstream.target(), request_)
    assert why is not None
    assert field in why
    assert "provider huggingface" in why
    json_only = ProviderRequest(prompt="x", response_format=ResponseFormat("json_object"))
    assert adapter.unsupported(upstream.target(), json_only) is None


@pytest.mark.parametrize("endpoint", ["http://tgi:8080", ROUTER])
def test_chat_form_takes_json_tools_and_images(endpoint: str) -> None:
    for request in (
        WITH_TOOLS,
        WITH_IMAGE,
        TOOL_TURN,
        ProviderRequest(prompt="x", tools=(WEATHER,), tool_choice=ToolChoice("required")),
        ProviderRequest(prompt="x", response_format=ResponseFormat("json_schema", schema={})),
    ):
        assert refusal(endpoint, request) is None
    why = refusal(endpoint, REASONING)
    assert why is not None
    assert "`reasoning_effort`" in why
    assert "provider huggingface" in why


def test_tgi_refuses_a_grammar_with_tools_and_a_turn_with_text_and_calls() -> None:
    both = ProviderRequest(
        prompt="x", tools=(WEATHER,), response_format=ResponseFormat("json_object")
    )
    why = refusal("http://tgi:8080", both)
    assert why is not None
    assert "`tools` together with `response_format`" in why
    assert "provider huggingface" in why
    call = ToolCall("0", "get_current_weather", {"location": "Paris", "format": "celsius"})
    mixed = ProviderRequest(
        messages=(
            Message("user", "weather?"),
            Message("assistant", "Let me look.", tool_calls=(call,)),
            Message("tool", "6.7", tool_call_id="0"),
        )
    )
    why = refusal("http://tgi:8080", mixed)
    assert why is not None
    assert "both `content` and `tool_calls`" in why
    # the router speaks OpenAI's wire format, which carries both
    assert refusal(ROUTER, both) is None
    assert refusal(ROUTER, mixed) is None


async def test_chat_sends_the_documented_tools_request() -> None:
    # TGI's guidance page, "The Tools Parameter" (curl to /v1/chat/completions); tool_choice in
    # the function-object form of its "Tool Choice Configuration"
    request = ProviderRequest(
        messages=(Message("user", "What is the weather like in New York?"),),
        tools=(WEATHER,),
        tool_choice=ToolChoice("function", "get_current_weather"),
    )
    # the answer TGI 1.4.3 gave there: one call object (no list), id 0, arguments as
    # `parameters`, finish_reason eos_token
    answer = {
        "id": "",
        "object": "text_completion",
        "created": 1709051640,
        "model": "HuggingFaceH4/zephyr-7b-beta",
        "system_fingerprint": "1.4.3-native",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "tool_calls": {
                        "id": 0,
                        "type": "function",
                        "function": {
                            "description": None,
                            "name": "tools",
                            "parameters": {"format": "celsius", "location": "New York"},
                        },
                    },
                },
                "logprobs": None,
                "finish_reason": "eos_token",
            }
        ],
        "usage": {"prompt_tokens": 157, "completion_tokens": 19, "total_tokens": 176},
    }
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(request)
        assert up.last_json == {
            "model": "test-model",
            "messages": [{"role": "user", "content": "What is the weather like in New York?"}],
            "tools": [WEATHER_WIRE],
            "tool_choice": {"type": "function", "function": {"name": "get_current_weather"}},
        }
    assert result.tool_calls == (
        ToolCall("0", "tools", {"format": "celsius", "location": "New York"}),
    )
    assert (result.text, result.finish_reason) == ("", "tool_calls")
    assert (result.input_tokens, result.output_tokens) == (157, 19)
    assert result.request_id is None  # TGI's id is empty
    assert result.response_model == "HuggingFaceH4/zephyr-7b-beta"


async def test_chat_parses_tgi_3_tool_calls_with_json_text_arguments() -> None:
    # TGI's snapshot integration-tests/models/__snapshots__/test_tools_llama/
    # test_flash_llama_grammar_tools_nostream.json (3.1): arguments as JSON text, finish "stop"
    answer = {
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {
                    "content": None,
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "function": {
                                "arguments": '{"location":"Brooklyn, NY","format":"fahrenheit"}',
                                "description": None,
                                "name": "get_current_weather",
                            },
                            "id": "0",
                            "type": "function",
                        }
                    ],
                },
            }
        ],
        "created": 1741372335,
        "id": "",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "object": "chat.completion",
        "system_fingerprint": "3.1.2-dev0-native",
        "usage": {"completion_tokens": 29, "prompt_tokens": 501, "total_tokens": 530},
    }
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(ProviderRequest(prompt="weather?", tools=(WEATHER,)))
    assert result.tool_calls == (
        ToolCall("0", "get_current_weather", {"location": "Brooklyn, NY", "format": "fahrenheit"}),
    )
    assert (result.text, result.finish_reason) == ("", "tool_calls")
    assert (result.input_tokens, result.output_tokens) == (501, 29)


@pytest.mark.parametrize(
    ("arguments", "parsed", "unparsed"),
    [
        ({"a": 1}, {"a": 1}, None),
        ('{"a": 1}', {"a": 1}, None),
        ('{"a": ', {}, '{"a": '),
        ("[1, 2]", {}, "[1, 2]"),
        ([1, 2], {}, "[1,2]"),
    ],
)
async def test_arguments_that_are_no_object_are_kept_unparsed(
    arguments: Any, parsed: dict[str, Any], unparsed: str | None
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer = {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(ProviderRequest(prompt="x", tools=(WEATHER,)))
    assert result.tool_calls == (ToolCall("c1", "f", parsed, unparsed),)
    assert result.finish_reason == "tool_calls"


async def test_chat_asks_tgi_for_json_with_its_grammar() -> None:
    # TGI's API reference (docs/openapi.json): ChatRequest.response_format is a GrammarType,
    # {"type": "json", "value": <JSON Schema>}
    async with serve(CHAT) as up:
        fmt = ResponseFormat("json_schema", name="animals", schema=ANIMALS, strict=True)
        await up.call(ProviderRequest(prompt=PUPPY, response_format=fmt))
        assert up.last_json["response_format"] == {"type": "json", "value": ANIMALS}
        await up.call(ProviderRequest(prompt=PUPPY, response_format=ResponseFormat("json_object")))
        assert up.last_json["response_format"] == {"type": "json", "value": {"type": "object"}}
        await up.call(ProviderRequest(prompt=PUPPY, response_format=ResponseFormat("text")))
        assert "response_format" not in up.last_json


def test_the_router_takes_openai_response_format() -> None:
    # the router's structured-output guide
    # (https://huggingface.co/docs/inference-providers/guides/structured-output)
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "abstract_summary": {"type": "string"}},
        "required": ["title", "abstract_summary"],
    }
    fmt = ResponseFormat("json_schema", name="PaperAnalysis", schema=schema, strict=True)
    body = body_for(ROUTER, ProviderRequest(prompt="paper", response_format=fmt))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "PaperAnalysis", "schema": schema, "strict": True},
    }
    body = body_for("", ProviderRequest(prompt="x", response_format=ResponseFormat("json_object")))
    assert body["response_format"] == {"type": "json_object"}
    assert body_for(
        "https://x.endpoints.huggingface.cloud",
        ProviderRequest(prompt="x", response_format=ResponseFormat("json_object")),
    )["response_format"] == {"type": "json", "value": {"type": "object"}}


@pytest.mark.parametrize(
    ("mode", "wire"),
    [("auto", "auto"), ("none", "none"), ("required", "required")],
)
def test_tool_choice_modes(mode: Any, wire: str) -> None:
    request = ProviderRequest(prompt="x", tools=(WEATHER,), tool_choice=ToolChoice(mode))
    assert body_for("http://tgi:8080", request)["tool_choice"] == wire


CALL = ToolCall("0", "get_weather", {"longitude": 2.2945, "latitude": 48.8567})
HISTORY = ProviderRequest(
    messages=(
        Message("user", "What's the weather like in Paris today?"),
        Message("assistant", None, tool_calls=(CALL,)),
        Message("tool", "6.7", tool_call_id="0"),
    ),
    max_tokens=100,
    seed=42,
)


async def test_tool_turns_go_to_tgi_as_its_integration_test_sends_them() -> None:
    # TGI's integration-tests/models/test_tools_llama.py, test_flash_llama_tool_reply_response:
    # the assistant turn carries tool_calls and no content, the tool turn its tool_call_id;
    # the arguments go as the object (TGI renders them into the template as JSON text)
    reply = (
        "I can't access real-time data, but I can provide you with current conditions and "
        "forecast for Paris, France:"
    )
    message = {"content": reply, "role": "assistant", "tool_calls": None}
    answer = {
        "choices": [{"finish_reason": "stop", "index": 0, "logprobs": None, "message": message}],
        "created": 1741263702,
        "id": "",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "object": "chat.completion",
        "system_fingerprint": "3.1.2-dev0-native",
        "usage": {"completion_tokens": 83, "prompt_tokens": 109, "total_tokens": 192},
    }
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(HISTORY)
        sent = up.last_json
    assert sent["messages"] == [
        {"role": "user", "content": "What's the weather like in Paris today?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": CALL.arguments},
                }
            ],
        },
        {"role": "tool", "content": "6.7", "tool_call_id": "0"},
    ]
    assert (sent["max_tokens"], sent["seed"]) == (100, 42)
    assert (result.text, result.finish_reason, result.tool_calls) == (reply, "stop", ())


def test_tool_turns_go_to_the_router_with_json_text_arguments() -> None:
    call = body_for(ROUTER, HISTORY)["messages"][1]["tool_calls"][0]
    assert msgspec.json.decode(call["function"]["arguments"]) == CALL.arguments
    odd = ToolCall("1", "f", {}, unparsed="not json")
    past = ProviderRequest(messages=(Message("assistant", None, tool_calls=(odd,)),))
    for endpoint in (ROUTER, "http://tgi:8080"):
        sent = body_for(endpoint, past)["messages"][0]["tool_calls"][0]["function"]
        assert sent["arguments"] == "not json"  # what the model said, as it said it


async def test_images_go_as_image_url_parts() -> None:
    # TGI's vision-language-models page: chat_completion with a text and an image_url part,
    # and the answer llava gave there (finish_reason eos_token, TGI 2.0.2)
    url = (
        "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/"
        "transformers/rabbit.png"
    )
    parts = (TextPart("Whats in this image?"), ImagePart(ImageURL(url)))
    text = " The image depicts an anthropomorphic rabbit dressed in a space suit."
    message = {"role": "assistant", "content": text}
    answer = {
        "id": "",
        "object": "text_completion",
        "created": 1714589732,
        "model": "llava-hf/llava-v1.6-mistral-7b-hf",
        "system_fingerprint": "2.0.2-native",
        "choices": [{"index": 0, "message": message, "finish_reason": "eos_token"}],
        "usage": {"completion_tokens": 84, "prompt_tokens": 2943, "total_tokens": 3027},
    }
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(ProviderRequest(messages=(Message("user", parts),)))
        assert up.last_json["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Whats in this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ]
    assert (result.text, result.finish_reason) == (text, "stop")
    assert (result.input_tokens, result.output_tokens) == (2943, 84)


async def test_the_routers_usage_details_are_read() -> None:
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 32},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    message = {"role": "assistant", "content": "ok"}
    answer = {
        "id": "chatcmpl-9",
        "choices": [{"index": 0, "message": message, "finish_reason": "content_filter"}],
        "usage": usage,
    }
    async with serve(CHAT) as up:
        up.reply = replying(answer)
        result = await up.call(ProviderRequest(prompt="x"))
    assert (result.cached_input_tokens, result.reasoning_tokens) == (32, 12)
    assert result.finish_reason == "content_filter"
    assert (result.request_id, result.response_id) == ("chatcmpl-9", "chatcmpl-9")
