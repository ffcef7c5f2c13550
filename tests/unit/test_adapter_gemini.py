"""Gemini: blocked prompts and answers, Google's error bodies, URL rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_worker.adapters.base import Message, ProviderRequest
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
