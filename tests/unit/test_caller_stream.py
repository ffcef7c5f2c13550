"""The retry loop with a stream tap (`Caller.call(..., tap=)`), against the built-in fake
provider over real HTTP: the pieces reach the tap as they come; before any piece a failure is
retried and falls back as for any call; once a piece went out (a reader saw part of the
answer) a failure, an invalid answer or a stall ends the request: no second call anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from llm_worker.adapters.base import ProviderRequest, ResponseFormat, StreamDelta
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import Caller, CallFailed, CallResult
from llm_worker.worker.chunking import ChunkSource
from llm_worker.worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="one two three four five")
ANSWER = "[fake:u] one two three four five"  # the fake's answer: the model, then the prompt


class Tap:
    """Records the pieces of a stream (a `StreamTap`)."""

    def __init__(self) -> None:
        self.deltas: list[StreamDelta] = []

    @property
    def started(self) -> bool:
        return bool(self.deltas)

    def on_delta(self, delta: StreamDelta) -> None:
        self.deltas.append(delta)

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


def _caller(
    sessions: SessionPool,
    max_attempts: int = 1,
    idle_ms: int = 30_000,
    metrics: Metrics | None = None,
) -> Caller:
    return Caller(
        sessions,
        SecretStore(None, env={}),
        metrics or Metrics(),
        max_attempts=max_attempts,
        stream_idle_ms=idle_ms,
    )


def _cands(primary: str, fallback: str | None = None) -> list[Candidate]:
    row = ModelRow(
        model_id="m",
        provider="fake",
        endpoint=primary,
        upstream_model="u",
        fallback_endpoint=fallback,
    )
    return resolve({"m": row}, "m")


async def _call(
    caller: Caller,
    cands: list[Candidate],
    tap: Tap,
    request: ProviderRequest = REQUEST,
    deadline_s: float = 10.0,
) -> CallResult:
    return await caller.call(cands, request, deadline=time.monotonic() + deadline_s, tap=tap)


async def test_the_pieces_reach_the_tap_and_make_the_answer(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=2)
    tap = Tap()
    call = await _call(_caller(sessions), _cands(server.endpoint("p")), tap)
    assert call.result.text == ANSWER == tap.text
    assert len(tap.deltas) == len(ANSWER.split())  # one piece per word, as the fake sends it
    assert call.attempts == 1 and call.result.finish_reason == "stop"
    assert [c.streamed for c in server.calls("p")] == [True]


async def test_a_break_after_the_first_piece_is_not_retried_nor_sent_to_the_fallback(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", stream_break_after=3, token_delay_ms=5)  # role, 2 words, cut
    tap = Tap()
    caller = _caller(sessions, max_attempts=3)
    with pytest.raises(CallFailed) as failed:
        await _call(caller, _cands(server.endpoint("p"), server.endpoint("f")), tap)
    assert failed.value.error.type == "connection_error"
    assert failed.value.attempts == 1 and failed.value.candidate is not None
    assert not failed.value.candidate.fallback
    assert tap.text == "[fake:u] one"  # what the reader saw stays what it saw
    assert len(server.calls("p")) == 1 and server.calls("f") == []


async def test_a_break_before_any_piece_falls_back_as_before(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", stream_break_after=1)  # the role event only: no text yet
    tap = Tap()
    caller = _caller(sessions, max_attempts=2)
    call = await _call(caller, _cands(server.endpoint("p"), server.endpoint("f")), tap)
    assert call.candidate.fallback and call.result.text == ANSWER == tap.text
    assert len(server.calls("p")) == 2 and len(server.calls("f")) == 1
    assert call.attempts == 3


async def test_an_error_status_before_any_piece_is_retried_then_falls_back(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", error_rate=1, error_status=503, retry_after_s=0)
    tap = Tap()
    caller = _caller(sessions, max_attempts=2)
    call = await _call(caller, _cands(server.endpoint("p"), server.endpoint("f")), tap)
    assert call.candidate.fallback and tap.text == call.result.text == ANSWER
    assert [c.status for c in server.calls("p")] == [503, 503]  # retried at the primary
    assert len(server.calls("f")) == 1


async def test_an_invalid_answer_after_the_stream_started_is_not_asked_again(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", invalid_output_rate=1)
    request = ProviderRequest(prompt="give json", response_format=ResponseFormat("json_object"))
    tap = Tap()
    caller = _caller(sessions)
    assert caller.output_retries == 1  # without a tap a second answer would be asked for
    with pytest.raises(CallFailed) as failed:
        await _call(caller, _cands(server.endpoint("p"), server.endpoint("f")), tap, request)
    assert failed.value.error.type == "invalid_output"
    assert tap.text == "not json {"
    assert len(server.calls("p")) == 1 and server.calls("f") == []


async def test_an_invalid_answer_without_a_tap_is_asked_again(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The control for the test above: the same answer, not streamed, gets a second try."""
    server.set_profile("p", invalid_output_rate=1)
    request = ProviderRequest(prompt="give json", response_format=ResponseFormat("json_object"))
    with pytest.raises(CallFailed) as failed:
        await _caller(sessions).call(
            _cands(server.endpoint("p")), request, deadline=time.monotonic() + 10
        )
    assert failed.value.error.type == "invalid_output"
    assert len(server.calls("p")) == 2


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[str]:
    """A one-route OpenAI-style server answering with `handler`: its /v1 endpoint."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def _stalling(stall_s: float, hits: list[int]) -> Handler:
    """An OpenAI stream that sends the role and one word, then nothing for `stall_s`."""

    async def chat(request: web.Request) -> web.StreamResponse:
        hits.append(1)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"u",'
        await response.write(
            head + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        )
        await response.write(head + b'"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n')
        await asyncio.sleep(stall_s)
        return response

    return chat


async def test_a_stall_after_a_piece_is_a_timeout_with_no_second_call(
    server: FakeServer, sessions: SessionPool
) -> None:
    hits: list[int] = []
    async with _serving(_stalling(2.0, hits)) as endpoint:
        tap = Tap()
        started = time.monotonic()
        with pytest.raises(CallFailed) as failed:
            await _call(
                _caller(sessions, max_attempts=3, idle_ms=100),
                _cands(endpoint, server.endpoint("f")),
                tap,
            )
        assert time.monotonic() - started < 1.5  # the stall timeout, not the server's end
        assert failed.value.error.type == "timeout" and "stalled" in failed.value.error.message
        assert tap.text == "Hello" and hits == [1] and server.calls("f") == []


async def test_a_stall_before_any_piece_is_a_timeout_that_falls_back(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=400)  # the role at once, the first word 400 ms on
    tap = Tap()
    metrics = Metrics()
    caller = _caller(sessions, idle_ms=100, metrics=metrics)
    call = await _call(caller, _cands(server.endpoint("p"), server.endpoint("f")), tap)
    assert call.candidate.fallback and tap.text == ANSWER
    assert len(server.calls("p")) == 1 and len(server.calls("f")) == 1
    timeouts = metrics.registry.get_sample_value(
        "llm_worker_provider_calls_total",
        {"provider": "fake", "endpoint": "m/primary", "outcome": "timeout"},
    )
    assert timeouts == 1.0


async def test_an_empty_answer_that_came_whole_may_be_asked_again(sessions: SessionPool) -> None:
    """A server that answers a stream request with a plain JSON body: its answer is one piece.
    An empty one showed the reader nothing, so an invalid answer is asked for again."""
    hits: list[int] = []

    async def empty(request: web.Request) -> web.StreamResponse:
        hits.append(1)
        message = {"role": "assistant", "content": ""}
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": "u",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
            }
        )

    request = ProviderRequest(prompt="give json", response_format=ResponseFormat("json_object"))
    source = ChunkSource(linger_s=0, buffer_bytes=1 << 20)
    async with _serving(empty) as endpoint:
        with pytest.raises(CallFailed) as failed:
            await _caller(sessions).call(
                _cands(endpoint), request, deadline=time.monotonic() + 10, tap=source
            )
    assert failed.value.error.type == "invalid_output" and "after 2 answers" in str(
        failed.value.error
    )
    assert hits == [1, 1] and not source.started and source.chunks == []
