"""The chunks of a streamed answer (`worker.chunking.source`, `writer`, `worker.chunks`): how
the provider's pieces become chunks (the first at once, the rest per linger, long text cut),
and how each request's writer turns a shared source into its own gap-free, ordered records
without encoding a chunk twice. Real asyncio time with a small linger; no broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderResult, StreamDelta, ToolCall, ToolCallDelta
from llm_worker.worker.chunking import ChunkSource, ChunkWriter
from llm_worker.worker.chunking.source import MAX_CHUNK_CHARS
from llm_worker.worker.chunks import ChunkBody, chunk_record, empty_chunk
from llm_worker.worker.messages import Usage

LINGER_S = 0.05


def _source(linger_s: float = LINGER_S, buffer_bytes: int = 1 << 20) -> ChunkSource:
    return ChunkSource(linger_s=linger_s, buffer_bytes=buffer_bytes)


def _body(encoded: bytes) -> dict[str, Any]:
    value = json.loads(encoded)
    assert isinstance(value, dict)
    return value


def _deltas(source: ChunkSource) -> list[str]:
    return [_body(c)["delta"] for c in source.chunks]


class Published:
    """A publish that records each record (in the order produced: when it is called), notes
    whether one started before the previous one returned (the broker's acknowledgement), and
    takes a little time (`pause`)."""

    def __init__(self, pause: float = 0.0) -> None:
        self.records: list[tuple[str, dict[str, Any], bytes | None, Any]] = []
        self.produced: list[int] = []
        self.raw: list[bytes] = []
        self.pause = pause
        self.busy = False
        self.overlapped = False

    async def __call__(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> None:
        self.produced.append(json.loads(value)["seq"])
        if self.busy:
            self.overlapped = True
        self.busy = True
        try:
            await asyncio.sleep(self.pause)
            self.raw.append(value)
            self.records.append((topic, json.loads(value), key, headers))
        finally:
            self.busy = False

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [r for _, r, _, _ in self.records if r["id"] == request_id]


# -- ChunkSource ---------------------------------------------------------------------------


async def test_the_first_piece_is_chunk_zero_at_once() -> None:
    source = _source(linger_s=10.0)  # a linger that would never end within the test
    assert not source.started
    source.on_delta(StreamDelta(text="Hello"))
    assert source.started and source.first_piece_at is not None
    assert _deltas(source) == ["Hello"]  # no wait for the linger


async def test_later_pieces_within_the_linger_become_one_chunk() -> None:
    source = _source()
    source.on_delta(StreamDelta(text="The"))
    for word in (" quick", " brown", " fox"):
        source.on_delta(StreamDelta(text=word))
    assert _deltas(source) == ["The"]  # still collecting
    await asyncio.sleep(LINGER_S * 3)
    assert _deltas(source) == ["The", " quick brown fox"]
    source.on_delta(StreamDelta(text=" jumps"))  # a new linger starts with the next piece
    await asyncio.sleep(LINGER_S * 3)
    assert _deltas(source) == ["The", " quick brown fox", " jumps"]


async def test_a_zero_linger_makes_a_chunk_per_piece() -> None:
    source = _source(linger_s=0)
    for word in ("a", " b", " c"):
        source.on_delta(StreamDelta(text=word))
    assert _deltas(source) == ["a", " b", " c"]


async def test_end_flushes_what_is_pending_then_the_final_chunk() -> None:
    source = _source(linger_s=10.0)
    source.on_delta(StreamDelta(text="one"))
    source.on_delta(StreamDelta(text=" two"))
    result = ProviderResult(
        text="one two", finish_reason="stop", input_tokens=3, output_tokens=2, reasoning_tokens=1
    )
    source.end("stop", result)
    bodies = [_body(c) for c in source.chunks]
    assert bodies[:2] == [{"delta": "one"}, {"delta": " two"}]
    assert bodies[2]["delta"] == "" and bodies[2]["finish_reason"] == "stop"
    assert bodies[2]["usage"]["input_tokens"] == 3 and bodies[2]["usage"]["output_tokens"] == 2
    assert bodies[2]["usage"]["reasoning_tokens"] == 1
    assert source.ended
    source.end("error")  # idempotent: nothing more
    source.on_delta(StreamDelta(text="late"))
    assert len(source.chunks) == 3


async def test_an_empty_piece_neither_starts_the_stream_nor_makes_a_chunk() -> None:
    """A whole answer with no text (a provider that does not stream said nothing): the caller
    may still ask again, since no reader saw anything."""
    source = _source(linger_s=0)
    source.on_delta(StreamDelta(text=""))
    assert not source.started and source.chunks == []
    source.whole(ProviderResult(text="", finish_reason="stop"))
    assert [(b["delta"], b["finish_reason"]) for b in map(_body, source.chunks)] == [("", "stop")]


async def test_an_error_end_has_no_usage() -> None:
    source = _source()
    source.end("error")
    assert [_body(c) for c in source.chunks] == [{"delta": "", "finish_reason": "error"}]


async def test_whole_is_the_answer_in_one_chunk_then_the_final_one() -> None:
    call = ToolCall(id="call_1", name="weather", arguments={"city": "Oslo"})
    result = ProviderResult(
        text="sunny", finish_reason="tool_calls", output_tokens=4, tool_calls=(call,)
    )
    source = _source(linger_s=10.0)
    source.whole(result)
    first, last = (_body(c) for c in source.chunks)
    assert first["delta"] == "sunny"
    assert first["tool_calls_delta"] == [
        {"index": 0, "id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'}
    ]
    assert last["finish_reason"] == "tool_calls" and last["usage"]["output_tokens"] == 4


async def test_text_over_the_chunk_limit_is_cut_into_several_chunks() -> None:
    text = "x" * (2 * MAX_CHUNK_CHARS + 10)
    source = _source()
    source.whole(ProviderResult(text=text, finish_reason="stop"))
    deltas = _deltas(source)
    assert [len(d) for d in deltas] == [MAX_CHUNK_CHARS, MAX_CHUNK_CHARS, 10, 0]
    assert "".join(deltas) == text


async def test_tool_call_pieces_keep_their_order_in_one_chunk() -> None:
    source = _source()
    source.on_delta(StreamDelta(text="Calling:"))
    pieces = [
        ToolCallDelta(index=0, id="c", name="f"),
        ToolCallDelta(index=0, arguments='{"a"'),
        ToolCallDelta(index=0, arguments=":1}"),
    ]
    for piece in pieces:
        source.on_delta(StreamDelta(text="", tool_calls=(piece,)))
    source.end("tool_calls")
    calls = _body(source.chunks[1])["tool_calls_delta"]
    assert calls == [
        {"index": 0, "id": "c", "name": "f"},
        {"index": 0, "arguments": '{"a"'},
        {"index": 0, "arguments": ":1}"},
    ]


async def test_admit_is_false_once_the_chunks_kept_pass_the_buffer() -> None:
    source = _source(linger_s=0, buffer_bytes=40)
    assert source.admit()
    source.on_delta(StreamDelta(text="short"))
    assert source.admit() and source.bytes == len(source.chunks[0])
    source.on_delta(StreamDelta(text="y" * 50))
    assert source.bytes > 40 and not source.admit()


async def test_news_wakes_every_waiter_on_a_chunk_and_on_the_end() -> None:
    source = _source(linger_s=0)
    woke: list[str] = []

    async def wait(name: str, seen: int) -> None:
        await source.news(seen)
        woke.append(name)

    first = [asyncio.create_task(wait(n, 0)) for n in ("a", "b")]
    later = asyncio.create_task(wait("c", 5))
    await asyncio.sleep(0.01)
    assert woke == []
    source.on_delta(StreamDelta(text="hi"))
    await asyncio.gather(*first)
    assert sorted(woke) == ["a", "b"] and not later.done()  # 1 chunk is not more than 5
    source.end("stop")
    await asyncio.wait_for(later, 1)
    await asyncio.wait_for(source.news(99), 1)  # an ended source never makes anyone wait


async def test_a_cancelled_waiter_does_not_break_the_others() -> None:
    source = _source(linger_s=0)
    gone = asyncio.create_task(source.news(0))
    stays = asyncio.create_task(source.news(0))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    source.on_delta(StreamDelta(text="x"))
    await asyncio.wait_for(stays, 1)


# -- ChunkWriter and the records -------------------------------------------------------------


async def test_a_writer_publishes_each_chunk_in_order_gap_free() -> None:
    published = Published(pause=0.005)
    source = _source(linger_s=0.01)
    w = ChunkWriter(published, "chunks", "req-1", b"k", [("traceparent", b"t")])
    w.follow(source)
    for word in ("The", " quick", " brown", " fox"):
        source.on_delta(StreamDelta(text=word))
        await asyncio.sleep(0.02)
    source.end("stop", ProviderResult(text="", finish_reason="stop", output_tokens=4))
    await asyncio.wait_for(w.done(), 2)
    records = published.of("req-1")
    assert [r["seq"] for r in records] == list(range(len(source.chunks)))
    assert [list(r)[:3] for r in records] == [["id", "seq", "delta"]] * len(records)
    assert "".join(r["delta"] for r in records) == "The quick brown fox"
    assert records[-1]["finish_reason"] == "stop" and records[-1]["usage"]["output_tokens"] == 4
    assert all(r.get("finish_reason") is None for r in records[:-1])
    assert not published.overlapped  # one chunk at a time as they came: each acked first
    assert {(t, k) for t, _, k, _ in published.records} == {("chunks", b"k")}
    assert published.records[0][3] == [("traceparent", b"t")]
    assert w.written == len(records)


async def test_a_writer_behind_its_stream_produces_what_is_there_together_in_order() -> None:
    published = Published(pause=0.2)
    source = _source(linger_s=0)
    for word in ("a", " b", " c", " d", " e"):
        source.on_delta(StreamDelta(text=word))
    source.end("stop")
    w = ChunkWriter(published, "chunks", "req-1", None, None)
    started = asyncio.get_running_loop().time()
    w.follow(source)
    await asyncio.wait_for(w.done(), 2)
    took = asyncio.get_running_loop().time() - started
    assert published.produced == list(range(6))  # produced in order...
    assert published.overlapped and took < 0.39  # ...all at once: one round trip, not six
    assert [r["seq"] for r in published.of("req-1")] == list(range(6)) and w.written == 6


async def test_two_writers_share_each_encoded_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk is encoded once per stream, whatever the number of requests that follow it."""
    encoded = 0
    plain = ChunkBody.encode

    def counting(self: ChunkBody) -> bytes:
        nonlocal encoded
        encoded += 1
        return plain(self)

    monkeypatch.setattr(ChunkBody, "encode", counting)
    published = Published()
    source = _source(linger_s=0)
    writers = [ChunkWriter(published, "chunks", rid, None, None) for rid in ("a", "b")]
    for w in writers:
        w.follow(source)
    for word in ("one", " two", " three"):
        source.on_delta(StreamDelta(text=word))
    source.end("stop")
    await asyncio.gather(*(w.done() for w in writers))
    assert encoded == len(source.chunks) == 4
    for seq, body in enumerate(source.chunks):
        for rid in ("a", "b"):
            assert chunk_record(rid, seq, body) in published.raw
    for rid in ("a", "b"):
        assert [r["seq"] for r in published.of(rid)] == [0, 1, 2, 3]


async def test_a_late_writer_gets_every_chunk_from_the_first() -> None:
    published = Published()
    source = _source(linger_s=0)
    early = ChunkWriter(published, "chunks", "early", None, None)
    early.follow(source)
    source.on_delta(StreamDelta(text="a"))
    source.on_delta(StreamDelta(text="b"))
    await asyncio.sleep(0.01)
    assert early.written == 2
    late = ChunkWriter(published, "chunks", "late", None, None)
    late.follow(source)  # mid-stream
    source.on_delta(StreamDelta(text="c"))
    source.end("stop")
    await asyncio.gather(early.done(), late.done())
    assert [r["delta"] for r in published.of("late")] == ["a", "b", "c", ""]
    assert [r["seq"] for r in published.of("late")] == [0, 1, 2, 3]
    assert published.of("late") == [{**r, "id": "late"} for r in published.of("early")]


async def test_a_writer_following_an_ended_source_writes_it_all() -> None:
    published = Published()
    source = _source()
    source.whole(ProviderResult(text="done", finish_reason="stop"))
    w = ChunkWriter(published, "chunks", "r", None, None)
    w.follow(source)
    await asyncio.wait_for(w.done(), 1)
    assert [(r["seq"], r["delta"]) for r in published.of("r")] == [(0, "done"), (1, "")]


async def test_the_first_chunk_reports_the_time_since_the_first_piece() -> None:
    published = Published(pause=0.02)
    seen: list[float] = []
    source = _source(linger_s=0)
    w = ChunkWriter(published, "chunks", "r", None, None, on_first=seen.append)
    w.follow(source)
    source.on_delta(StreamDelta(text="x"))
    source.end("stop")
    await w.done()
    assert len(seen) == 1 and 0.015 <= seen[0] < 1.0


async def test_a_writer_follows_one_source_until_reset() -> None:
    published = Published()
    w = ChunkWriter(published, "chunks", "r", None, None)
    first = _source()
    w.follow(first)
    with pytest.raises(RuntimeError):
        w.follow(_source())
    with pytest.raises(RuntimeError):
        w.reset()  # its sequence is not over
    first.end("error")
    await w.done()
    w.reset()
    second = _source()
    second.whole(ProviderResult(text="ok", finish_reason="stop"))
    w.follow(second)
    await w.done()
    assert [(r["seq"], r["delta"], r.get("finish_reason")) for r in published.of("r")] == [
        (0, "", "error"),
        (0, "ok", None),
        (1, "", "stop"),
    ]


def test_chunk_record_splices_id_and_seq_before_the_body() -> None:
    body = ChunkBody(delta='say "hi"', finish_reason="stop").encode()
    record = chunk_record('id "1"', 12, body)
    assert record.startswith(b'{"id":"id \\"1\\"","seq":12,"delta":')
    assert json.loads(record) == {
        "id": 'id "1"',
        "seq": 12,
        "delta": 'say "hi"',
        "finish_reason": "stop",
    }


def test_empty_chunk_keeps_id_seq_and_finish_reason() -> None:
    body = ChunkBody(
        delta="z" * 1000, finish_reason="length", usage=Usage(output_tokens=9)
    ).encode()
    emptied = json.loads(empty_chunk(chunk_record("r-9", 7, body)))
    assert emptied == {"id": "r-9", "seq": 7, "delta": "", "finish_reason": "length"}
    plain = json.loads(empty_chunk(chunk_record("r-9", 3, ChunkBody(delta="a" * 50).encode())))
    assert plain == {"id": "r-9", "seq": 3, "delta": ""}
