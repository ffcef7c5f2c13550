"""Hugging Face TGI / Inference Endpoints: both wire forms, TGI's limits and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llm_worker.adapters.base import Message, ProviderRequest
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
