"""A streamed prompt through `Pipeline` with `StreamCalls` (`worker.chunking.calls`), its chunk
records caught by the publish, the provider the built-in fake over real HTTP: the chunks say
what the completion says and come before it; identical prompts share one call and each gets
its own whole sequence; a failure ends the sequence with an "error" chunk and the error
completion keeps the text streamed; where `stream` comes from; the late-join buffer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.caller import Caller, CallResult
from llm_worker.worker.chunking.calls import StreamCalls
from llm_worker.worker.config import load_settings
from llm_worker.worker.dedup import DedupWindow
from llm_worker.worker.messages import Completion
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.tracing import MessageTrace, MessageTracer, NoTracing
from llm_worker.worker.pipeline import Pending, Pipeline
from llm_worker.worker.records import InputRecord, Outcome

PROMPT = "tell me about the sea and the wind"
ANSWER = f"[fake:u] {PROMPT}"


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2) as running:
        yield running


class Registry:
    def __init__(self, rows: dict[str, ModelRow]) -> None:
        self.rows = rows

    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(self.rows, model_id)


class Harness:
    """A pipeline with streaming on: every chunk record it publishes is kept in `records`
    (decoded), in the order the publishes returned; `completed` notes, per request id, how
    many chunk records were out when its completion was returned."""

    def __init__(
        self,
        server: FakeServer,
        sessions: SessionPool,
        *,
        stream_setting: bool = False,
        row_stream: bool | None = None,
        buffer_bytes: int = 1 << 20,
        dedup: bool = True,
        tracing: MessageTracer | None = None,
        ack_s: float = 0.0,
    ) -> None:
        self.server = server
        self.metrics = Metrics()
        self.caller = Caller(sessions, SecretStore(None, env={}), self.metrics, max_attempts=1)
        self.dedup: DedupWindow[CallResult] | None = DedupWindow(window_s=60) if dedup else None
        self.records: list[dict[str, Any]] = []
        self.ack_s = ack_s  # how long the broker takes to acknowledge a chunk record
        self.streams = StreamCalls(
            self.caller,
            self._publish,
            self.metrics,
            topic="chunks",
            linger_s=0.002,
            buffer_bytes=buffer_bytes,
            dedup=self.dedup,
        )
        settings = load_settings({"LLM_WORKER_STREAM": "true" if stream_setting else "false"})
        row = ModelRow(
            model_id="m",
            provider="fake",
            endpoint=server.endpoint("p"),
            upstream_model="u",
            stream=row_stream,
        )
        self.pipeline = Pipeline(
            settings,
            Registry({"m": row}),
            self.caller,
            self.metrics,
            dedup=self.dedup,
            streams=self.streams,
            tracing=tracing,
        )

    async def _publish(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        assert topic == "chunks"
        await asyncio.sleep(self.ack_s)  # an acknowledgement takes a turn of the loop at least
        self.records.append(json.loads(value))

    async def process(self, rid: str, **fields: Any) -> Completion:
        doc = {"id": rid, "model": "m", "prompt": PROMPT, **fields}
        rec = InputRecord(topic="in", partition=0, offset=0, value=json.dumps(doc).encode())
        out = await self.pipeline.process(rec)
        assert out.completion is not None
        return out.completion

    def chunks(self, rid: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["id"] == rid]

    def calls(self) -> int:
        return len(self.server.calls("p"))

    def metric(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


def _whole_sequence(chunks: list[dict[str, Any]]) -> str:
    """The text of a complete sequence (seq 0.., no gap, one final chunk at its end)."""
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c.get("finish_reason") is not None for c in chunks] == [False] * (len(chunks) - 1) + [
        True
    ]
    return "".join(c["delta"] for c in chunks)


async def test_the_completion_text_is_the_chunks_joined_and_comes_after_them(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=2)
    h = Harness(server, sessions, ack_s=0.01)  # a broker slower than the model
    completion = await h.process("a", stream=True)
    chunks = h.chunks("a")  # all of them acknowledged when the completion was returned
    assert completion.status == "ok" and completion.text == ANSWER
    assert _whole_sequence(chunks) == ANSWER
    assert chunks[-1]["finish_reason"] == "stop"
    assert completion.usage is not None and completion.usage.output_tokens > 0
    assert chunks[-1]["usage"]["output_tokens"] == completion.usage.output_tokens
    assert len(chunks) >= 2 and h.metric("llm_worker_chunks_total") == len(chunks)
    assert h.metrics.registry.get_sample_value("llm_worker_stream_first_chunk_seconds_count") == 1


async def test_twenty_identical_streamed_prompts_share_one_call(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=5)
    h = Harness(server, sessions)
    ids = [f"r{i}" for i in range(20)]
    completions = await asyncio.gather(*(h.process(rid, stream=True) for rid in ids))
    assert h.calls() == 1
    for rid, completion in zip(ids, completions, strict=True):
        assert completion.id == rid and completion.status == "ok"
        assert _whole_sequence(h.chunks(rid)) == completion.text == ANSWER
    assert [c.deduplicated for c in completions].count(False) == 1
    leader = next(c for c in completions if not c.deduplicated)
    bodies = {json.dumps({**r, "id": ""}) for r in h.chunks(leader.id)}
    for c in completions:  # every follower's records are the leader's, under its own id
        assert {json.dumps({**r, "id": ""}) for r in h.chunks(c.id)} == bodies


async def test_an_answer_from_the_window_is_one_chunk_then_the_final_one(
    server: FakeServer, sessions: SessionPool
) -> None:
    h = Harness(server, sessions)
    first = await h.process("a", stream=False)
    assert h.records == []  # not streamed: no chunks
    again = await h.process("b", stream=True)
    assert h.calls() == 1 and again.deduplicated and again.text == first.text == ANSWER
    chunks = h.chunks("b")
    assert [(c["seq"], c["delta"]) for c in chunks] == [(0, ANSWER), (1, "")]
    assert chunks[1]["finish_reason"] == "stop"


async def test_a_streamed_prompt_following_a_call_that_does_not_stream_gets_it_whole(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", latency_ms=100)
    h = Harness(server, sessions)
    plain = asyncio.create_task(h.process("plain", stream=False))
    await asyncio.sleep(0.03)  # the plain call is in flight
    streamed = await h.process("streamed", stream=True)
    assert (await plain).text == streamed.text == ANSWER and streamed.deduplicated
    assert h.calls() == 1
    assert [c["delta"] for c in h.chunks("streamed")] == [ANSWER, ""]


async def test_a_plain_prompt_following_a_streamed_call_gets_no_chunks(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=20)
    h = Harness(server, sessions)
    leader = asyncio.create_task(h.process("leader", stream=True))
    while not h.chunks("leader"):
        await asyncio.sleep(0.005)
    plain = await h.process("plain", stream=False)
    assert plain.status == "ok" and plain.deduplicated and plain.text == ANSWER
    assert h.chunks("plain") == []
    led = await leader
    assert _whole_sequence(h.chunks("leader")) == led.text == ANSWER
    assert h.calls() == 1


async def test_a_failure_mid_stream_ends_with_an_error_chunk_and_keeps_the_text(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", stream_break_after=4, token_delay_ms=10)  # role, 3 words, cut
    h = Harness(server, sessions)
    leader = asyncio.create_task(h.process("leader", stream=True))
    while not h.chunks("leader"):
        await asyncio.sleep(0.002)
    follower = await h.process("follower", stream=True)  # joins the stream mid-way
    completion = await leader
    partial = "[fake:u] tell me"
    for rid, c in (("leader", completion), ("follower", follower)):
        chunks = h.chunks(rid)
        assert _whole_sequence(chunks) == partial
        assert chunks[-1]["finish_reason"] == "error" and "usage" not in chunks[-1]
        assert c.status == "error" and c.error is not None
        assert c.error.type == "connection_error" and c.text == partial
    assert (completion.deduplicated, follower.deduplicated) == (False, True)
    assert h.calls() == 1


async def test_a_failure_before_any_piece_is_one_error_chunk(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", error_rate=1, error_status=400)
    h = Harness(server, sessions)
    completion = await h.process("a", stream=True)
    assert completion.status == "error" and completion.error is not None
    assert completion.error.type == "bad_request"
    assert h.chunks("a") == [{"id": "a", "seq": 0, "delta": "", "finish_reason": "error"}]


@pytest.mark.parametrize(
    ("prompt", "row", "setting", "streamed"),
    [
        (True, False, False, True),  # the prompt says
        (False, True, True, False),
        (None, True, False, True),  # else the row
        (None, False, True, False),
        (None, None, True, True),  # else the worker's setting
        (None, None, False, False),
    ],
)
async def test_stream_is_the_prompts_else_the_rows_else_the_workers(
    server: FakeServer,
    sessions: SessionPool,
    prompt: bool | None,
    row: bool | None,
    setting: bool,
    streamed: bool,
) -> None:
    h = Harness(server, sessions, stream_setting=setting, row_stream=row)
    fields = {} if prompt is None else {"stream": prompt}
    completion = await h.process("a", **fields)
    assert completion.text == ANSWER
    assert bool(h.chunks("a")) is streamed
    assert server.calls("p")[0].streamed is streamed


async def test_past_the_buffer_a_late_identical_prompt_gets_the_completion_only(
    server: FakeServer, sessions: SessionPool
) -> None:
    server.set_profile("p", token_delay_ms=20)
    h = Harness(server, sessions, buffer_bytes=10)  # the first chunk fills it
    leader = asyncio.create_task(h.process("leader", stream=True))
    while not h.chunks("leader"):
        await asyncio.sleep(0.002)
    late = await h.process("late", stream=True)
    assert late.status == "ok" and late.deduplicated and late.text == ANSWER
    assert h.chunks("late") == []
    assert h.metric("llm_worker_stream_late_joins_total") == 1
    led = await leader
    assert _whole_sequence(h.chunks("leader")) == led.text == ANSWER
    assert h.calls() == 1


async def test_a_follower_whose_leader_was_cancelled_ends_with_the_whole_answer(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The leader's partition was revoked mid-stream: one follower takes over and calls
    again; every follower's chunks end with the answer its completion carries."""
    server.set_profile("p", token_delay_ms=10)
    h = Harness(server, sessions)
    leader = asyncio.create_task(h.process("leader", stream=True))
    while not h.chunks("leader"):
        await asyncio.sleep(0.002)
    followers = [asyncio.create_task(h.process(f"f{i}", stream=True)) for i in range(3)]
    await asyncio.sleep(0.02)
    leader.cancel()
    completions = await asyncio.gather(*followers)
    assert h.calls() == 2
    for c in completions:
        assert c.status == "ok" and c.text == ANSWER
        chunks = h.chunks(c.id)
        broken = next(i for i, r in enumerate(chunks) if r.get("finish_reason") == "error")
        assert _whole_sequence(chunks[: broken + 1])  # the broken stream's sequence, ended
        assert _whole_sequence(chunks[broken + 1 :]) == ANSWER  # then a whole new one


async def test_a_pending_streamed_prompt_answered_by_the_window_writes_its_chunks(
    server: FakeServer, sessions: SessionPool
) -> None:
    h = Harness(server, sessions)
    await h.process("a", stream=True)
    doc = {"id": "b", "model": "m", "prompt": PROMPT, "stream": True}
    step = h.pipeline.begin(
        InputRecord(topic="in", partition=0, offset=1, value=json.dumps(doc).encode())
    )
    assert isinstance(step, Pending) and step.hit is not None  # chunks still to write
    out = await h.pipeline.finish(step)
    assert isinstance(out, Outcome) and out.completion is not None and out.completion.deduplicated
    assert [c["delta"] for c in h.chunks("b")] == [ANSWER, ""]


class Links(NoTracing):
    """Tracing that notes who led a dedup key and how many followed it (`follow`)."""

    def __init__(self) -> None:
        self.leads: list[str] = []
        self.follows: list[str] = []

    def lead(self, key: str) -> None:
        self.leads.append(key)

    def follow(self, mt: MessageTrace, key: str) -> None:
        self.follows.append(key)


@pytest.mark.parametrize("fails", [False, True], ids=["answer", "error"])
async def test_the_followers_of_a_streamed_call_are_linked_to_its_leader(
    server: FakeServer, sessions: SessionPool, fails: bool
) -> None:
    """As for a call that does not stream: the leader says it leads the key, each follower
    (given the answer or the error) that it followed it."""
    server.set_profile("p", token_delay_ms=5, stream_break_after=4 if fails else 0)
    links = Links()
    h = Harness(server, sessions, tracing=links)
    completions = await asyncio.gather(*(h.process(f"r{i}", stream=True) for i in range(3)))
    assert [c.status for c in completions] == ["error" if fails else "ok"] * 3
    assert h.calls() == 1
    assert len(links.leads) == 1 and links.follows == links.leads * 2


async def test_a_streamed_tool_call_is_its_pieces_joined(
    server: FakeServer, sessions: SessionPool
) -> None:
    h = Harness(server, sessions)
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
    completion = await h.process("t", stream=True, tools=[tool], tool_choice="required")
    assert completion.status == "ok" and completion.tool_calls is not None
    (call,) = completion.tool_calls
    chunks = h.chunks("t")
    _whole_sequence(chunks)
    pieces = [p for c in chunks for p in c.get("tool_calls_delta", [])]
    assert {p["index"] for p in pieces} == {0}
    assert (pieces[0]["id"], pieces[0]["name"]) == (call.id, call.name) == (call.id, "weather")
    assert json.loads("".join(p.get("arguments", "") for p in pieces)) == call.arguments
    assert chunks[-1]["finish_reason"] == completion.finish_reason == "tool_calls"


async def test_a_streamed_leader_ended_by_its_own_deadline_leaves_the_follower_to_lead(
    server: FakeServer, sessions: SessionPool
) -> None:
    """The leader's prompt deadline ends its stream (`deadline_exceeded`); the follower, with
    no deadline of its own, does not take that error: it calls again and gets the answer,
    its chunks the broken sequence and then a whole new one."""
    server.set_profile("p", token_delay_ms=30)  # about 10 tokens: 300 ms
    h = Harness(server, sessions)
    leader = asyncio.create_task(
        h.process("leader", stream=True, deadline=int(time.time() * 1000) + 150)
    )
    await asyncio.sleep(0)  # the leader leads
    follower = asyncio.create_task(h.process("f", stream=True))
    led = await asyncio.wait_for(leader, 5)
    assert led.status == "error" and led.error is not None
    assert led.error.type == "deadline_exceeded" and led.attempts <= 1
    got = await asyncio.wait_for(follower, 5)
    assert got.status == "ok" and got.text == ANSWER and not got.deduplicated
    assert h.calls() == 1 + led.attempts
    chunks = h.chunks("f")
    broken = next(i for i, r in enumerate(chunks) if r.get("finish_reason") == "error")
    assert _whole_sequence(chunks[broken + 1 :]) == ANSWER
