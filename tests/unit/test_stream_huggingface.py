"""Hugging Face streaming: TGI's `/generate_stream` and the Messages API's chunks, served by a
local aiohttp server as TGI writes them.

Where the golden streams come from:
- `/generate_stream`: TGI's streaming guide
  (https://huggingface.co/docs/text-generation-inference/conceptual/streaming: "How do you make
  cheese?", max_new_tokens 12, the tokens '\\n', 'To', ' make' ... '.', generated_text
  '\\nTo make cheese, you need to start with milk.', finish_reason length, 12 tokens; the middle
  events the guide elides are the words of its answer), on the wire as `data:{...}` lines with
  the `index` and `input_length` of TGI's API reference (docs/openapi.json `StreamResponse`,
  `StreamDetails`), and its documented error events (the 422/424/429/500 examples of
  `/generate_stream` in the same file).
- the Messages API: TGI's API reference shows the streaming request only
  (https://huggingface.co/docs/text-generation-inference/reference/api_reference#streaming);
  the chunks are TGI's recorded answers in its integration tests
  (integration-tests/models/__snapshots__/test_completion_prompts/test_chat_hfhub_usage.json,
  test_tools_llama/test_flash_llama_grammar_tools_choice_stream.json and ..._nostream.json),
  in the `ChatCompletionChunk` shape of docs/openapi.json.
"""

from __future__ import annotations

import asyncio
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
    StreamDelta,
    Tool,
    ToolCall,
)
from llm_worker.adapters.errors import (
    BadRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.huggingface import HuggingFaceAdapter

from .test_adapter_contract import API_KEY, Handler, HFChat, HFGenerate, Upstream, serve

CHEESE = ProviderRequest(prompt="How do you make cheese?", max_tokens=12)
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def event(doc: Any, space: bool = False) -> bytes:
    """One server-sent event: TGI writes `data:{...}`; the router's providers `data: {...}`."""
    return b"data:" + (b" " if space else b"") + msgspec.json.encode(doc) + b"\n\n"


def token(ident: int, text: str, logprob: float, special: bool = False) -> dict[str, Any]:
    return {"id": ident, "text": text, "logprob": logprob, "special": special}


def step(index: int, tok: dict[str, Any], generated: str | None = None, **details: Any) -> Any:
    """One `StreamResponse`: the last one carries `generated_text` and `details`."""
    return {
        "index": index,
        "token": tok,
        "top_tokens": [],
        "generated_text": generated,
        "details": {**details, "seed": None} if details else None,
    }


# the streaming guide's answer: its first three and last token as printed, the middle ones the
# words of its generated_text (ids and logprobs of those are ours: the guide elides them)
CHEESE_TEXT = "\nTo make cheese, you need to start with milk."
_WORDS = ["\n", "To", " make", " cheese", ",", " you", " need", " to", " start", " with", " milk"]
_IDS = [193, 2044, 717, 18463, 23, 346, 632, 271, 1230, 335, 5230]
_LOGPROBS = [-0.007358551, -1.1357422, -0.009841919] + [-0.25] * 8
CHEESE_STREAM = [
    *(step(i + 1, token(_IDS[i], w, _LOGPROBS[i])) for i, w in enumerate(_WORDS)),
    step(
        12,
        token(25, ".", -1.3408203),
        CHEESE_TEXT,
        finish_reason="length",
        generated_tokens=12,
        input_length=7,
    ),
]
# the same answer from `/generate`: TGI puts the prompt's token count in `x-prompt-tokens`
CHEESE_WHOLE = {
    "generated_text": CHEESE_TEXT,
    "details": {"finish_reason": "length", "generated_tokens": 12, "seed": None, "tokens": []},
}


def chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None
) -> dict[str, Any]:
    """A TGI `chat.completion.chunk` (its `id` is empty)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "",
        "object": "chat.completion.chunk",
        "created": 1741266005,
        "model": LLAMA,
        "system_fingerprint": "3.1.2-dev0-native",
        "choices": choices,
        "usage": usage,
    }


def said(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


# test_chat_hfhub_usage.json: "OK", "!", an empty last token with finish_reason stop, then the
# usage chunk (stream_options.include_usage) and [DONE]
OK_STREAM = [
    event(chunk(said("OK")), space=True),
    event(chunk(said("!")), space=True),
    event(chunk(said(""), "stop"), space=True),
    event(chunk(None, usage={"completion_tokens": 3, "prompt_tokens": 39, "total_tokens": 42})),
    b"data: [DONE]\n\n",
]
OK_WHOLE = {
    "id": "",
    "object": "chat.completion",
    "model": LLAMA,
    "choices": [{"index": 0, "message": said("OK!"), "finish_reason": "stop"}],
    "usage": {"completion_tokens": 3, "prompt_tokens": 39, "total_tokens": 42},
}

# test_flash_llama_grammar_tools_choice_stream.json: the call's name in the first piece, its
# arguments' JSON text over 17 pieces, no finish_reason (TGI 3.2+); usage as include_usage
# adds it, with the counts of the same request answered whole (..._nostream.json)
WEATHER_PIECES = [
    *("{", ' "', "location", '":', ' "', "Bro", "oklyn", ",", " NY", '",', ' "'),
    *("format", '":', ' "', "f", "ahrenheit", '"}'),
]
WEATHER = Tool(
    name="get_current_weather",
    description="Get the current weather",
    parameters={"type": "object", "properties": {"location": {"type": "string"}}},
)
WEATHER_ASK = ProviderRequest(
    messages=(
        Message("system", "Youre a helpful assistant! Answer the users question best you can."),
        Message("user", "What is the weather like in Brooklyn, New York?"),
    ),
    tools=(WEATHER,),
    max_tokens=100,
)


def _call_piece(i: int, arguments: str) -> dict[str, Any]:
    function = {"arguments": arguments, "name": "get_current_weather" if i == 0 else None}
    call = {"index": 0, "id": "0", "type": "function", "function": function}
    return {"role": "assistant", "tool_calls": [call]}


WEATHER_STREAM = [
    *(event(chunk(_call_piece(i, a))) for i, a in enumerate(WEATHER_PIECES)),
    event(chunk(None, usage={"completion_tokens": 29, "prompt_tokens": 501, "total_tokens": 530})),
    b"data:[DONE]\n\n",
]
WEATHER_WHOLE = {
    "id": "",
    "object": "chat.completion",
    "model": LLAMA,
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "0",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "description": None,
                            "arguments": '{"location":"Brooklyn, NY","format":"fahrenheit"}',
                        },
                    }
                ],
            },
        }
    ],
    "usage": {"completion_tokens": 29, "prompt_tokens": 501, "total_tokens": 530},
}


def streaming(events: list[bytes], then: str = "end") -> Handler:
    """A handler writing `events` as `text/event-stream`, then: `end` (a clean end), `reset`
    (the connection dropped) or `stall` (nothing more for seconds)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for data in events:
            await resp.write(data)
        if then == "stall":
            await asyncio.sleep(5)
        elif then == "reset" and request.transport is not None:
            request.transport.close()
        return resp

    return reply


@pytest.fixture
async def tgi() -> AsyncIterator[Upstream]:
    async with serve(HFGenerate()) as up:
        yield up


@pytest.fixture
async def chat() -> AsyncIterator[Upstream]:
    async with serve(HFChat()) as up:
        yield up


async def stream(
    up: Upstream, request: ProviderRequest = CHEESE, **overrides: Any
) -> tuple[ProviderResult, list[StreamDelta]]:
    deltas: list[StreamDelta] = []
    async with aiohttp.ClientSession() as session:
        result = await HuggingFaceAdapter().stream(
            session, up.target(**overrides), request, deltas.append
        )
    return result, deltas


async def failure(up: Upstream, request: ProviderRequest = CHEESE, **overrides: Any) -> Any:
    with pytest.raises(ProviderError) as caught:
        await stream(up, request, **overrides)
    assert API_KEY not in str(caught.value)
    return caught.value


def texts(deltas: list[StreamDelta]) -> list[str]:
    return [d.text for d in deltas]


# -- /generate_stream --------------------------------------------------------------------------


async def test_the_guides_stream_gives_each_token_then_the_whole_answer(tgi: Upstream) -> None:
    tgi.reply = streaming([event(e) for e in CHEESE_STREAM])
    result, deltas = await stream(tgi)
    assert texts(deltas) == [*_WORDS, "."]
    assert result.text == CHEESE_TEXT == "".join(texts(deltas))
    assert result.finish_reason == "length"
    assert (result.input_tokens, result.output_tokens) == (7, 12)
    path, headers, body = tgi.received[-1]
    assert path == "/generate_stream"
    assert headers["Authorization"] == "Bearer " + API_KEY
    # the /generate body as it is: /generate_stream has no `stream` field
    assert msgspec.json.decode(body) == {
        "inputs": "How do you make cheese?",
        "parameters": {"max_new_tokens": 12, "details": True},
    }


def test_the_stream_url_is_the_generate_url_with_stream() -> None:
    form = HuggingFaceAdapter()._generate
    target = Upstream(HFGenerate()).target(endpoint="http://tgi:8080/generate/?x=1")
    assert str(form.stream_url_for("http://tgi:8080/generate/?x=1", target)) == (
        "http://tgi:8080/generate_stream?x=1"
    )


async def test_special_tokens_are_not_text(tgi: Upstream) -> None:
    events = [
        step(1, token(1, "<s>", 0.0, special=True)),
        step(2, token(15043, "Hello", -0.5)),
        step(3, token(29991, "!", -0.1)),
        step(
            4,
            token(2, "</s>", -0.01, special=True),
            "Hello!",
            finish_reason="eos_token",
            generated_tokens=3,
            input_length=5,
        ),
    ]
    tgi.reply = streaming([event(e) for e in events])
    result, deltas = await stream(tgi)
    assert texts(deltas) == ["Hello", "!"]
    assert result.text == "Hello!"
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (5, 3)


async def test_generated_text_past_the_tokens_comes_as_a_last_delta(tgi: Upstream) -> None:
    """The incremental decoder held back the end of a character: TGI's generated_text is the
    answer, and what it adds is the last delta."""
    events = [
        step(1, token(5, "caf", -0.2)),
        step(2, token(6, "", -0.3), "café", finish_reason="stop_sequence", generated_tokens=2),
    ]
    tgi.reply = streaming([event(e) for e in events])
    result, deltas = await stream(tgi)
    assert texts(deltas) == ["caf", "é"]
    assert result.text == "café"
    assert result.finish_reason == "stop"
    assert result.input_tokens == 0  # a TGI without input_length: no count, no header either


async def test_a_generated_text_that_rewrites_streamed_text_leaves_the_stream(
    tgi: Upstream,
) -> None:
    events = [
        step(1, token(5, " Hello", -0.2)),
        step(2, token(6, " !", -0.3), "Hello!", finish_reason="length", generated_tokens=2),
    ]
    tgi.reply = streaming([event(e) for e in events])
    result, deltas = await stream(tgi)
    assert result.text == " Hello !" == "".join(texts(deltas))


@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        (
            {"error": "Request failed during generation", "error_type": "generation"},
            ServerError,
            424,
        ),
        ({"error": "Model is overloaded", "error_type": "overloaded"}, RateLimited, 429),
        (
            {"error": "Incomplete generation", "error_type": "incomplete_generation"},
            ServerError,
            500,
        ),
        ({"error": "Input validation error", "error_type": "validation"}, BadRequest, 422),
        (
            {
                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be "
                "<= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
                "error_type": "validation",
            },
            ContextLengthExceeded,
            422,
        ),
        ({"error": "something new", "error_type": "unheard_of"}, ServerError, 500),
    ],
)
async def test_an_error_event_is_classified_like_the_status_tgi_gives_it(
    tgi: Upstream, error: dict[str, str], cls: type[ProviderError], status: int
) -> None:
    tgi.reply = streaming([event(CHEESE_STREAM[0]), event(error)])
    err = await failure(tgi)
    assert type(err) is cls
    assert err.status == status
    assert error["error"][:40] in str(err)


@pytest.mark.parametrize("then", ["end", "reset"])
async def test_a_stream_cut_before_the_last_event_is_a_connection_failure(
    tgi: Upstream, then: str
) -> None:
    tgi.reply = streaming([event(e) for e in CHEESE_STREAM[:5]], then=then)
    err = await failure(tgi)
    assert isinstance(err, ConnectionFailed)


async def test_a_stalled_stream_times_out(tgi: Upstream) -> None:
    tgi.reply = streaming([event(CHEESE_STREAM[0])], then="stall")
    err = await failure(tgi, stream_idle_ms=150)
    assert isinstance(err, ProviderTimeout)
    assert "stalled" in str(err)


@pytest.mark.parametrize(
    "bad", [b"data:[1, 2]\n\n", b'data:{"token": 5}\n\n', b'data:{"token": {"id": 1}}\n\n']
)
async def test_a_malformed_event_is_a_retryable_server_error(tgi: Upstream, bad: bytes) -> None:
    tgi.reply = streaming([event(CHEESE_STREAM[0]), bad])
    err = await failure(tgi)
    assert type(err) is ServerError
    assert "malformed stream" in str(err)


# -- the Messages API --------------------------------------------------------------------------


async def test_a_chat_stream_gives_its_text_finish_and_usage(chat: Upstream) -> None:
    chat.reply = streaming(OK_STREAM)
    result, deltas = await stream(chat, CHEESE)
    assert texts(deltas) == ["OK", "!"]
    assert result.text == "OK!"
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (39, 3)
    assert result.response_model == LLAMA
    assert result.response_id is None  # TGI's chunks say "id": ""
    path, _, body = chat.received[-1]
    assert path == "/v1/chat/completions"
    sent = msgspec.json.decode(body)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_a_streamed_tool_call_is_assembled(chat: Upstream) -> None:
    chat.reply = streaming(WEATHER_STREAM)
    result, deltas = await stream(chat, WEATHER_ASK)
    pieces = [c for d in deltas for c in d.tool_calls]
    assert [c.arguments for c in pieces] == WEATHER_PIECES
    assert pieces[0].name == "get_current_weather"
    assert all(c.name is None for c in pieces[1:])
    assert result.tool_calls == (
        ToolCall("0", "get_current_weather", {"location": "Brooklyn, NY", "format": "fahrenheit"}),
    )
    assert result.text == ""
    assert result.finish_reason == "tool_calls"  # TGI sends none: the answer called a tool
    assert (result.input_tokens, result.output_tokens) == (501, 29)


async def test_a_tgi_2_tool_call_object_is_read_too(chat: Upstream) -> None:
    """The one-object `tool_calls` of TGI 2.x, with a finish_reason on the last piece (TGI
    2.x's arguments were its grammar's raw output, which is not unwrapped: plain arguments
    here)."""
    pieces = [
        {"role": "assistant", "tool_calls": {"index": 0, "id": "", "function": f}}
        for f in (
            {"name": "get_current_weather", "arguments": '{"location": '},
            {"name": None, "arguments": '"Paris"}'},
        )
    ]
    chat.reply = streaming(
        [event(chunk(pieces[0])), event(chunk(pieces[1], "eos_token")), b"data: [DONE]\n\n"]
    )
    result, _ = await stream(chat, WEATHER_ASK)
    assert result.tool_calls == (ToolCall("call_0", "get_current_weather", {"location": "Paris"}),)
    assert result.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("error", "cls", "status"),
    [
        # TGI's Messages API: router/src/infer/mod.rs `into_openai_event`
        (
            {"error": {"message": "Input validation error: bad", "http_status_code": 422}},
            BadRequest,
            422,
        ),
        ({"error": "Model is overloaded", "error_type": "overloaded"}, RateLimited, 429),
        ({"error": {"message": "upstream failed", "type": "server_error"}}, ServerError, 500),
    ],
)
async def test_a_chat_error_event_is_classified(
    chat: Upstream, error: dict[str, Any], cls: type[ProviderError], status: int
) -> None:
    chat.reply = streaming([OK_STREAM[0], event(error, space=True), b"data: [DONE]\n\n"])
    err = await failure(chat)
    assert type(err) is cls
    assert err.status == status


async def test_a_chat_stream_cut_before_its_end_is_a_connection_failure(chat: Upstream) -> None:
    chat.reply = streaming(OK_STREAM[:2], then="reset")
    assert isinstance(await failure(chat), ConnectionFailed)


async def test_a_stalled_chat_stream_times_out(chat: Upstream) -> None:
    chat.reply = streaming(OK_STREAM[:1], then="stall")
    assert isinstance(await failure(chat, stream_idle_ms=150), ProviderTimeout)


# -- stream and complete agree -----------------------------------------------------------------


def _same(streamed: ProviderResult, whole: ProviderResult) -> None:
    fields = (
        "text",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "tool_calls",
        "response_id",
        "response_model",
        "cached_input_tokens",
        "reasoning_tokens",
    )
    for name in fields:
        assert getattr(streamed, name) == getattr(whole, name), name


async def test_generate_stream_and_generate_give_the_same_answer(tgi: Upstream) -> None:
    tgi.reply = streaming([event(e) for e in CHEESE_STREAM])
    streamed, _ = await stream(tgi)

    async def whole(request: web.Request) -> web.StreamResponse:
        return web.json_response(CHEESE_WHOLE, headers={"x-prompt-tokens": "7"})

    tgi.reply = whole
    complete = await tgi.call(CHEESE)
    _same(streamed, complete)
    assert complete.text == CHEESE_TEXT and complete.input_tokens == 7


@pytest.mark.parametrize(
    ("events", "answer", "request_"),
    [(OK_STREAM, OK_WHOLE, CHEESE), (WEATHER_STREAM, WEATHER_WHOLE, WEATHER_ASK)],
    ids=["text", "tool_call"],
)
async def test_a_chat_stream_and_the_whole_chat_answer_agree(
    chat: Upstream, events: list[bytes], answer: dict[str, Any], request_: ProviderRequest
) -> None:
    chat.reply = streaming(events)
    streamed, _ = await stream(chat, request_)

    async def whole(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer)

    chat.reply = whole
    _same(streamed, await chat.call(request_))
