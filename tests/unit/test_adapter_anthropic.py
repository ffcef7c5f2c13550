"""Anthropic's Messages API: what the shared contract does not cover."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llm_worker.adapters.anthropic import AnthropicAdapter
from llm_worker.adapters.base import Message, ProviderRequest
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
    assert result.finish_reason == "tool_use"  # unknown reasons are kept as sent
    assert result.request_id == "msg_01"  # no request-id header: the message id


@pytest.mark.parametrize(("reason", "mapped"), [("stop_sequence", "stop"), (None, None)])
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
