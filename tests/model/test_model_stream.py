"""`OpenAICompatibleAdapter.stream` against a real llama.cpp server (dialect `llama_cpp`).

What llama-cpp-python's server (0.3.36 seen here) sends for `"stream": true`:

- text: a first chunk with only `delta.role`, then one `chat.completion.chunk` per token
  (`delta.content`), a last chunk with an empty delta and `finish_reason`, then `data: [DONE]`.
- a forced tool call (`tool_choice` naming the function) streams too: one chunk per token of
  the arguments, each in `delta.tool_calls[0]` (index 0) and, besides it, in the deprecated
  `delta.function_call`. Unlike OpenAI, which names `id` and `function.name` only in a call's
  first piece, the server repeats both in every piece; the last chunk says
  `finish_reason: "tool_calls"`.
- usage: none. The adapter asks for it (`stream_options: {"include_usage": true}`), the
  server's request model has no `stream_options` and drops it; no chunk carries `usage`, not
  even the finish chunk. A streamed answer therefore counts 0 input and 0 output tokens, where
  the same request unstreamed says both (`test_usage_in_a_stream` records which it is, so a
  server that starts sending usage is checked against the adapter's reading of it).
- an interrupted stream: with `interrupt_requests` (on by default) a request that arrives
  while another streams ends that stream after its next token with `data: [DONE]` and no
  `finish_reason` (so a worker with two calls in flight to one such server has its streams
  cut; test_model_stream_e2e.py runs one at a time).

Greedy decoding (temperature 0, one seed) gives the same answer streamed and whole, so the
stream's result is compared with `complete` of the same request: the contract the worker
relies on (the completion record is the chunks joined).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema_rs
import pytest

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import (
    ProviderRequest,
    ProviderResult,
    ResponseFormat,
    StreamDelta,
    ToolChoice,
)
from llm_worker.adapters.errors import ProviderError
from llm_worker.adapters.openai_compatible import OpenAICompatibleAdapter

from .conftest import ModelServer
from .test_model_adapter import LABELS, SENTIMENT, WEATHER, ask, target

pytestmark = pytest.mark.model


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _adapter() -> OpenAICompatibleAdapter:
    adapter = get_adapter("openai_compatible")
    assert isinstance(adapter, OpenAICompatibleAdapter)
    return adapter


async def _stream(
    session: aiohttp.ClientSession, server: ModelServer, request: ProviderRequest
) -> tuple[list[StreamDelta], ProviderResult]:
    deltas: list[StreamDelta] = []
    result = await _adapter().stream(session, target(server), request, deltas.append)
    return deltas, result


async def test_a_plain_answer_streams_in_pieces(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    request = ask("Say hello in one short sentence.", max_tokens=24)
    deltas, result = await _stream(session, model_server, request)

    assert len(deltas) > 1, deltas  # one piece per token, not the answer in one go
    assert all(d.text and not d.tool_calls for d in deltas), deltas
    assert "".join(d.text for d in deltas) == result.text
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert result.tool_calls == ()
    assert result.response_id and result.response_id.startswith("chatcmpl-")
    assert result.response_model == model_server.model

    whole = await _adapter().complete(session, target(model_server), request)
    assert (result.text, result.finish_reason) == (whole.text, whole.finish_reason)


async def test_a_json_schema_answer_streams_valid_json(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    fmt = ResponseFormat(type="json_schema", name="sentiment", schema=SENTIMENT, strict=True)
    request = ask(
        "Classify the sentiment of this review as positive, negative or neutral: "
        "'The soup was cold and the waiter was rude.'",
        response_format=fmt,
    )
    assert _adapter().unsupported(target(model_server), request) is None
    deltas, result = await _stream(session, model_server, request)

    assert len(deltas) > 1, deltas  # the grammar holds each token, the JSON still streams
    joined = "".join(d.text for d in deltas)
    assert joined == result.text
    answer = json.loads(joined)
    jsonschema_rs.validate(SENTIMENT, answer)
    assert answer["sentiment"] in LABELS
    assert result.finish_reason == "stop"
    assert result.tool_calls == ()


async def test_a_forced_tool_call_streams_its_arguments(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    request = ask(
        "What is the weather like in Paris right now?",
        tools=(WEATHER,),
        tool_choice=ToolChoice(mode="function", name="get_weather"),
    )
    assert _adapter().unsupported(target(model_server), request) is None
    deltas, result = await _stream(session, model_server, request)

    pieces = [c for d in deltas for c in d.tool_calls]
    assert len(pieces) > 1, deltas  # the arguments arrive token by token
    assert all(not d.text for d in deltas), deltas
    assert {c.index for c in pieces} == {0}
    assert pieces[0].id and pieces[0].name == WEATHER.name
    # llama.cpp repeats id and name in every piece; they are passed on once, as OpenAI sends
    assert all(c.id is None and c.name is None for c in pieces[1:])
    arguments = "".join(c.arguments for c in pieces)

    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    assert len(result.tool_calls) == 1, result
    call = result.tool_calls[0]
    assert (call.id, call.name) == (pieces[0].id, WEATHER.name)
    assert call.unparsed is None, call.unparsed
    assert isinstance(call.arguments, dict)
    assert call.arguments == json.loads(arguments)
    jsonschema_rs.validate(WEATHER.parameters, call.arguments)


def _events(raw: bytes) -> list[Any]:
    """The JSON chunks of an SSE body (`data:` lines; `[DONE]` left out)."""
    out: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out


async def test_usage_in_a_stream(model_server: ModelServer, session: aiohttp.ClientSession) -> None:
    """The body the adapter streams with asks for usage; whether a chunk carries it is the
    server's: none does on llama-cpp-python 0.3.36 (module docstring). Either way the
    streamed result counts what the chunks said, nothing invented."""
    adapter, t = _adapter(), target(model_server)
    request = ask("Say hello in one short sentence.", max_tokens=24)
    body = adapter.build_stream_body(t, request)
    sent = json.loads(body)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}

    url = str(adapter.url_for(t.endpoint, t))
    headers = {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        chunks = _events(await resp.read())
    usage = [c["usage"] for c in chunks if c.get("usage")]

    _, result = await _stream(session, model_server, request)
    whole = await adapter.complete(session, t, request)
    assert whole.input_tokens > 0 and whole.output_tokens > 0
    if not usage:  # llama-cpp-python: no usage chunk, no usage on the finish chunk
        assert (result.input_tokens, result.output_tokens) == (0, 0), result
        return
    last = usage[-1]
    assert (result.input_tokens, result.output_tokens) == (
        last["prompt_tokens"],
        last["completion_tokens"],
    )
    assert (result.input_tokens, result.output_tokens) == (whole.input_tokens, whole.output_tokens)


async def test_a_stream_the_server_interrupts_is_not_a_whole_answer(
    model_server: ModelServer, session: aiohttp.ClientSession
) -> None:
    """llama-cpp-python's server (`interrupt_requests`, on by default) ends a stream when
    another request arrives: it sends `data: [DONE]` after the next token, with no chunk
    saying `finish_reason`. That answer was cut short: the stream must fail (a
    `ProviderError`), not return the pieces so far as if the model had finished."""
    adapter, t = _adapter(), target(model_server)
    first = asyncio.Event()
    deltas: list[StreamDelta] = []

    def on_delta(delta: StreamDelta) -> None:
        deltas.append(delta)
        first.set()

    long = ask("Write two sentences about the sea.", max_tokens=64)
    streaming = asyncio.create_task(adapter.stream(session, t, long, on_delta))
    await first.wait()  # it is streaming: now another request comes in
    other = asyncio.create_task(adapter.complete(session, t, ask("Name three colours.")))
    try:
        result = await streaming
    except ProviderError:
        result = None
    assert (await other).finish_reason in ("stop", "length")
    assert result is None, (len(deltas), result)
