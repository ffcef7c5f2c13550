"""Gemini streaming: Google's documented `streamGenerateContent?alt=sse` streams read by the
`gemini` adapter, cut streams and error events, and the fake's stream against its whole answer.

Golden streams (the event bytes as Google's examples give them):
  * COOKBOOK: Google's Gemini API cookbook, quickstarts/rest/Streaming_REST.ipynb (the output
    of its `streamGenerateContent?alt=sse` curl cell; the story's text shortened, each
    `safetyRatings` list cut to its first rating). Every event repeats finishReason "STOP".
  * SHORT, THINKING, THINKING_CALL, PROMPT_BLOCKED, RECITATION: Google's recorded Gemini
    Developer API streams that Firebase's AI SDKs test against
    (github.com/FirebaseExtended/vertexai-sdk-test-data, mock-responses/googleai/
    streaming-success-basic-reply-short.txt, streaming-success-thinking-reply-thought-
    summary.txt, streaming-success-thinking-function-call-thought-summary-signature.txt,
    streaming-failure-prompt-blocked-safety.txt, streaming-failure-recitation-no-content.txt;
    long thought texts and the thought signature shortened).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from llm_worker.adapters.base import (
    Message,
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    StreamDelta,
    Target,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ProviderError,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.gemini import GeminiAdapter
from llm_worker.adapters.secrets import Secret
from llm_worker.devkit.fake_gemini import gemini_endpoint
from llm_worker.devkit.fake_server import FakeServer, start_fake_server

from .test_adapter_contract import API_KEY, FULL, Gemini, Upstream, serve

PROFILE = Gemini()
gemini = GeminiAdapter()

COOKBOOK = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "In the quaint, sunlit cottage '
    b'nestled amidst a lush meadow, resided two feline"}],"role": "model"},"finishReason": '
    b'"STOP","index": 0,"safetyRatings": [{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT",'
    b'"probability": "NEGLIGIBLE"}]}],"promptFeedback": {"safetyRatings": [{"category": '
    b'"HARM_CATEGORY_SEXUALLY_EXPLICIT","probability": "NEGLIGIBLE"}]}}\r\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " companions named Mittens and '
    b'Whiskers."}],"role": "model"},"finishReason": "STOP","index": 0,"safetyRatings": '
    b'[{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT","probability": "NEGLIGIBLE"}]}]}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " other and for adventure stronger '
    b'than ever."}],"role": "model"},"finishReason": "STOP","index": 0,"safetyRatings": '
    b'[{"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT","probability": "NEGLIGIBLE"}]}]}\n\n'
)
COOKBOOK_PIECES = [
    "In the quaint, sunlit cottage nestled amidst a lush meadow, resided two feline",
    " companions named Mittens and Whiskers.",
    " other and for adventure stronger than ever.",
]

_SHORT_USAGE = (
    b'"usageMetadata": {"promptTokenCount": 7,"totalTokenCount": 7,"promptTokensDetails": '
    b'[{"modality": "TEXT","tokenCount": 7}]},"modelVersion": "gemini-3.1-flash-lite"}\n\n'
)
SHORT = [
    b'data: {"candidates": [{"content": {"parts": [{"text": "The"}],"role": "model"}}],'
    + _SHORT_USAGE,
    b'data: {"candidates": [{"content": {"parts": [{"text": " capital of Wyoming"}],"role": '
    b'"model"}}],' + _SHORT_USAGE,
    b'data: {"candidates": [{"content": {"parts": [{"text": " is **Cheyenne**.\\n"}],"role": '
    b'"model"},"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 7,'
    b'"candidatesTokenCount": 10,"totalTokenCount": 17,"promptTokensDetails": [{"modality": '
    b'"TEXT","tokenCount": 7}],"candidatesTokensDetails": [{"modality": "TEXT","tokenCount": '
    b'10}]},"modelVersion": "gemini-3.1-flash-lite"}\n\n',
]

THINKING = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "**Exploring Sky Color**\\n\\nI\'ve '
    b'zeroed in on the core question: why does the sky appear blue?\\n\\n\\n","thought": true}],'
    b'"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": '
    b'80,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 10}],"thoughtsTokenCount": '
    b'70},"modelVersion": "gemini-2.5-flash","responseId": "0J-HaJetAqv0jrEPwu-tsQ0"}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": "**Constructing a Concise Answer**'
    b'\\n\\nI\'m satisfied with this concise response.\\n\\n\\n","thought": true}],"role": '
    b'"model"},"index": 0}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": 550,'
    b'"promptTokensDetails": [{"modality": "TEXT","tokenCount": 10}],"thoughtsTokenCount": 540},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "0J-HaJetAqv0jrEPwu-tsQ0"}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": "The sky is blue because tiny gas '
    b"molecules in Earth's atmosphere scatter blue light from the sun more efficiently than "
    b'other colors."}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 10,'
    b'"candidatesTokenCount": 22,"totalTokenCount": 572,"promptTokensDetails": [{"modality": '
    b'"TEXT","tokenCount": 10}],"thoughtsTokenCount": 540},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "0J-HaJetAqv0jrEPwu-tsQ0"}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " Blue light has shorter, smaller '
    b"wavelengths, causing it to be scattered in all directions, making the sky appear blue to "
    b'our eyes."}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": '
    b'{"promptTokenCount": 10,"candidatesTokenCount": 48,"totalTokenCount": 598,'
    b'"promptTokensDetails": [{"modality": "TEXT","tokenCount": 10}],"thoughtsTokenCount": 540},'
    b'"modelVersion": "gemini-2.5-flash","responseId": "0J-HaJetAqv0jrEPwu-tsQ0"}\n\n'
)

THINKING_CALL = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "**Calculating the Days**\\n\\nI\'ve '
    b"determined the user's request involves calculating the days until New Year's Eve."
    b'\\n\\n\\n","thought": true}],"role": "model"},"index": 0}],"usageMetadata": '
    b'{"promptTokenCount": 38,"totalTokenCount": 106,"promptTokensDetails": [{"modality": '
    b'"TEXT","tokenCount": 38}],"thoughtsTokenCount": 68},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "48SHaPHpHKbG-8YPtZCawAk"}\n\n'
    b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "now","args": {}},'
    b'"thoughtSignature": "CiIBVKhc7vB+vaaq6rA/KC79Ts7iXagIOA4EBOyBFDpl+pxPCmcBVKhc7gYyIw6X0"}],'
    b'"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": '
    b'38,"candidatesTokenCount": 6,"totalTokenCount": 212,"promptTokensDetails": [{"modality": '
    b'"TEXT","tokenCount": 38}],"thoughtsTokenCount": 168},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "48SHaPHpHKbG-8YPtZCawAk"}\n\n'
)

_BLOCKED_TEXT = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "text%d"}],"role": "model"}}],'
    b'"usageMetadata": {"promptTokenCount": 7,"totalTokenCount": 7,"promptTokensDetails": '
    b'[{"modality": "TEXT","tokenCount": 7}]},"modelVersion": "gemini-2.0-flash"}\n\n'
)
PROMPT_BLOCKED = (
    _BLOCKED_TEXT % 1
    + _BLOCKED_TEXT % 2
    + b'data: {"promptFeedback": {"blockReason": "SAFETY","safetyRatings": [{"category": '
    b'"HARM_CATEGORY_HATE_SPEECH","probability": "HIGH"}]}}\n'
)

RECITATION_TEXT = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "text1"}],"role": "model"}}],'
    b'"usageMetadata": {"promptTokenCount": 9,"totalTokenCount": 9,"promptTokensDetails": '
    b'[{"modality": "TEXT","tokenCount": 9}]},"modelVersion": "gemini-3.1-flash-lite"}\n\n'
)
RECITATION_END = (
    b'data: {"candidates": [{"finishReason": "RECITATION","citationMetadata": '
    b'{"citationSources": [{"startIndex": 793,"endIndex": 1341,"uri": "https://www.google.com/"}]}'
    b'}],"usageMetadata": {"promptTokenCount": 9,"candidatesTokenCount": 261,"totalTokenCount": '
    b'270,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 9}],'
    b'"candidatesTokensDetails": [{"modality": "TEXT","tokenCount": 261}]},"modelVersion": '
    b'"gemini-3.1-flash-lite"}\n\n'
)


def streaming(*chunks: bytes, cut: bool = False, request_id: str = "req-s1") -> Any:
    """A handler answering with an event stream written chunk by chunk; `cut` aborts the
    connection after the last one instead of ending the answer."""

    async def reply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": request_id}
        )
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        if cut:
            assert request.transport is not None
            request.transport.abort()
        else:
            await response.write_eof()
        return response

    return reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(PROFILE) as up:
        yield up


async def stream(
    upstream: Upstream, request: ProviderRequest = FULL
) -> tuple[ProviderResult, list[StreamDelta]]:
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        result = await gemini.stream(session, upstream.target(), request, deltas.append)
    return result, deltas


# -- Google's streams --------------------------------------------------------------------------


async def test_the_stream_goes_to_stream_generate_content_with_the_plain_body(
    upstream: Upstream,
) -> None:
    upstream.reply = streaming(COOKBOOK)
    await stream(upstream)
    path, headers, body = upstream.received[-1]
    assert path == "/v1beta/models/test-model:streamGenerateContent?alt=sse"
    assert headers["x-goog-api-key"] == API_KEY and API_KEY not in path
    assert body == gemini.build_body(upstream.target(), FULL)
    assert json.loads(body) == PROFILE.full_payload() | {
        "generationConfig": {**PROFILE.full_payload()["generationConfig"], "maxOutputTokens": 500}
    }


async def test_the_cookbook_stream_gives_each_piece_and_the_whole_text(upstream: Upstream) -> None:
    upstream.reply = streaming(COOKBOOK)
    result, deltas = await stream(upstream)
    assert [d.text for d in deltas] == COOKBOOK_PIECES
    assert result.text == "".join(COOKBOOK_PIECES)
    assert (result.finish_reason, result.request_id) == ("stop", "req-s1")
    assert (result.input_tokens, result.output_tokens, result.response_model) == (0, 0, None)


async def test_a_short_reply_with_usage_in_every_event_keeps_the_last(upstream: Upstream) -> None:
    upstream.reply = streaming(*SHORT)
    result, deltas = await stream(upstream)
    assert [d.text for d in deltas] == ["The", " capital of Wyoming", " is **Cheyenne**.\n"]
    assert result == ProviderResult(
        text="The capital of Wyoming is **Cheyenne**.\n",
        finish_reason="stop",
        input_tokens=7,
        output_tokens=10,
        request_id="req-s1",
        response_model="gemini-3.1-flash-lite",
    )


async def test_thoughts_are_left_out_and_counted_as_reasoning(upstream: Upstream) -> None:
    upstream.reply = streaming(THINKING, request_id="")
    result, deltas = await stream(upstream)
    assert "Sky Color" not in result.text and all("**" not in d.text for d in deltas)
    assert len(deltas) == 2 and result.text == "".join(d.text for d in deltas)
    assert result.text.startswith("The sky is blue") and result.text.endswith("our eyes.")
    assert (result.input_tokens, result.output_tokens, result.reasoning_tokens) == (10, 588, 540)
    assert result.response_id == result.request_id == "0J-HaJetAqv0jrEPwu-tsQ0"
    assert (result.finish_reason, result.response_model) == ("stop", "gemini-2.5-flash")


async def test_a_function_call_comes_whole_in_one_delta(upstream: Upstream) -> None:
    upstream.reply = streaming(THINKING_CALL)
    result, deltas = await stream(upstream)
    assert deltas == [StreamDelta(tool_calls=(ToolCallDelta(0, "call_0", "now", "{}"),))]
    assert result.tool_calls == (ToolCall("call_0", "now", {}),)
    assert (result.text, result.finish_reason) == ("", "tool_calls")
    assert (result.input_tokens, result.output_tokens, result.reasoning_tokens) == (38, 174, 168)
    assert result.response_id == "48SHaPHpHKbG-8YPtZCawAk"


async def test_a_blocked_prompt_is_content_filtered(upstream: Upstream) -> None:
    upstream.reply = streaming(PROMPT_BLOCKED)
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ContentFiltered, match=r"prompt blocked \(SAFETY\)") as info:
            await gemini.stream(session, upstream.target(), FULL, deltas.append)
    assert (info.value.status, info.value.request_id) == (200, "req-s1")
    assert [d.text for d in deltas] == ["text1", "text2"]


async def test_a_recitation_finish_after_text_is_content_filter(upstream: Upstream) -> None:
    upstream.reply = streaming(RECITATION_TEXT, RECITATION_END)
    result, _ = await stream(upstream)
    assert (result.text, result.finish_reason) == ("text1", "content_filter")
    assert (result.input_tokens, result.output_tokens) == (9, 261)


async def test_a_recitation_finish_with_nothing_said_is_content_filtered(
    upstream: Upstream,
) -> None:
    upstream.reply = streaming(RECITATION_END)
    with pytest.raises(ContentFiltered, match=r"answer blocked \(RECITATION\)") as info:
        await stream(upstream)
    assert (info.value.status, info.value.request_id) == (200, "req-s1")


# -- cut streams, error events, malformed events -----------------------------------------------


async def test_a_stream_ending_before_any_finish_reason_is_a_connection_failure(
    upstream: Upstream,
) -> None:
    upstream.reply = streaming(*SHORT[:2])
    with pytest.raises(ConnectionFailed, match="ended before the answer was complete"):
        await stream(upstream)


async def test_a_connection_cut_mid_event_is_a_connection_failure(upstream: Upstream) -> None:
    upstream.reply = streaming(SHORT[0], SHORT[1][:40], cut=True)
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConnectionFailed) as info:
            await gemini.stream(session, upstream.target(), FULL, deltas.append)
    assert info.value.retryable
    assert deltas == [StreamDelta(text="The")]  # given before the cut


def _error_event(code: Any, message: str, status: str) -> bytes:
    doc = {"error": {"code": code, "message": message, "status": status}}
    return b"data: " + msgspec.json.encode(doc) + b"\n\n"


@pytest.mark.parametrize(
    ("code", "message", "status", "cls"),
    [
        (429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED", RateLimited),
        (503, "The model is overloaded. Please try again later.", "UNAVAILABLE", ServerError),
        (500, "An internal error has occurred.", "INTERNAL", ServerError),
        (400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", AuthError),
        (400, "Request contains an invalid argument.", "INVALID_ARGUMENT", BadRequest),
        ("x", "An internal error has occurred.", "INTERNAL", ServerError),  # no code: a 500
    ],
)
async def test_an_error_event_is_classified_like_an_error_body(
    upstream: Upstream, code: Any, message: str, status: str, cls: type[ProviderError]
) -> None:
    """Google's `google.rpc.Status` error document (ai.google.dev/gemini-api/docs/troubleshooting
    lists these codes), sent as an event in the middle of a 2xx stream."""
    upstream.reply = streaming(SHORT[0], _error_event(code, message, status))
    with pytest.raises(cls) as info:
        await stream(upstream)
    assert type(info.value) is cls
    assert info.value.status == (code if isinstance(code, int) else 500)
    assert message in str(info.value) and API_KEY not in str(info.value)


async def test_a_malformed_event_is_a_retryable_server_error(upstream: Upstream) -> None:
    upstream.reply = streaming(SHORT[0], b'data: {"candidates": "none"}\n\n')
    with pytest.raises(ServerError, match="malformed stream"):
        await stream(upstream)


# -- the fake: a stream assembles to its whole answer ------------------------------------------

MODEL = "gemini-fake"
WEATHER = Tool(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
    "The weather",
)
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {}}},
    "required": ["name", "tags"],
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


def fake_target(server: FakeServer, profile: str = "default") -> Target:
    return Target(
        provider="gemini",
        endpoint=gemini_endpoint(server.url, profile),
        model=MODEL,
        endpoint_name=f"gemini:{profile}",
        api_key=Secret("k", "gemini-key-1"),
        timeout_ms=5_000,
    )


def ask(text: str, **fields: Any) -> ProviderRequest:
    return ProviderRequest(
        messages=(Message("system", "be a test"), Message("user", text)), **fields
    )


async def both(
    fake: FakeServer, request: ProviderRequest, profile: str = "default"
) -> tuple[ProviderResult, ProviderResult, list[StreamDelta]]:
    """The same request answered whole and streamed: (whole, streamed, the stream's deltas)."""
    deltas: list[StreamDelta] = []
    target = fake_target(fake, profile)
    async with aiohttp.ClientSession() as session:
        whole = await gemini.complete(session, target, request)
        streamed = await gemini.stream(session, target, request, deltas.append)
    plain, events = fake.calls(profile)[-2:]
    assert not plain.streamed and events.streamed  # the second went to streamGenerateContent
    return whole, streamed, deltas


def same_answer(whole: ProviderResult, streamed: ProviderResult) -> None:
    """Equal field for field but the ids, which number each request (`fake-{n}`)."""
    assert streamed.request_id == streamed.response_id != whole.response_id
    ids = {"request_id": None, "response_id": None}
    assert msgspec.structs.replace(streamed, **ids) == msgspec.structs.replace(whole, **ids)


@pytest.mark.parametrize(
    "request_",
    [
        ask("hello there, how  are you?"),
        ask("one two three four five", max_tokens=4),
        ask("cut here END and not this", stop=("END",)),
    ],
    ids=["text", "length", "stop"],
)
async def test_a_text_answer_streams_word_by_word_to_the_whole_answer(
    fake: FakeServer, request_: ProviderRequest
) -> None:
    whole, streamed, deltas = await both(fake, request_)
    same_answer(whole, streamed)
    assert "".join(d.text for d in deltas) == streamed.text
    assert len(deltas) == len(streamed.text.split())  # a word (and the spaces after it) each
    assert all(len(d.text.split()) == 1 and not d.text[0].isspace() for d in deltas)
    last = fake.calls("default")[-1]
    assert last.streamed and last.status == 200


async def test_a_function_call_streams_in_one_event(fake: FakeServer) -> None:
    request = ask("any tool?", tools=(WEATHER,), tool_choice=ToolChoice("required"))
    whole, streamed, deltas = await both(fake, request)
    same_answer(whole, streamed)
    assert streamed.finish_reason == "tool_calls" and streamed.tool_calls[0].name == "get_weather"
    (delta,) = deltas
    (piece,) = delta.tool_calls
    assert (piece.index, piece.id, piece.name) == (0, "call_0", "get_weather")
    assert json.loads(piece.arguments) == streamed.tool_calls[0].arguments


async def test_a_json_schema_answer_streams_to_the_same_json(fake: FakeServer) -> None:
    fmt = ResponseFormat("json_schema", "thing", SCHEMA)
    whole, streamed, deltas = await both(fake, ask("give me a thing", response_format=fmt))
    same_answer(whole, streamed)
    assert "".join(d.text for d in deltas) == streamed.text
    assert set(json.loads(streamed.text)) == {"name", "tags"}


async def test_broken_output_streams_broken_alike(fake: FakeServer) -> None:
    fake.set_profile("broken", invalid_output_rate=1.0)
    request = ask("any tool?", tools=(WEATHER,), tool_choice=ToolChoice("required"))
    whole, streamed, _ = await both(fake, request, profile="broken")
    same_answer(whole, streamed)
    assert streamed.tool_calls[0].unparsed is not None


async def test_the_fake_cuts_a_stream_when_told(fake: FakeServer) -> None:
    fake.set_profile("cut", stream_break_after=2)
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConnectionFailed):
            await gemini.stream(
                session, fake_target(fake, "cut"), ask("one two three four"), deltas.append
            )
    assert "".join(d.text for d in deltas) == f"[fake:{MODEL}] one "


async def test_the_fake_streams_only_with_alt_sse(fake: FakeServer) -> None:
    url = f"{gemini_endpoint(fake.url)}/v1beta/models/{MODEL}:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
        async with session.post(url, json=body, params={"alt": "sse"}) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            events = (await resp.text()).split("\n\n")
    docs = [json.loads(e.removeprefix("data: ")) for e in events if e]
    assert [d["candidates"][0]["content"]["parts"][0]["text"] for d in docs] == [
        f"[fake:{MODEL}] ",
        "hi",
    ]
    assert "finishReason" not in docs[0]["candidates"][0] and "usageMetadata" not in docs[0]
    assert docs[-1]["candidates"][0]["finishReason"] == "STOP"
    assert docs[-1]["usageMetadata"]["candidatesTokenCount"] == 2
