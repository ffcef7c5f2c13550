"""The chunk contract: a streamed answer's progress on `llm_completions.chunks`.

    {"id", "seq", "delta", "tool_calls_delta"?, "finish_reason"?, "usage"?}

One chunk sequence per streamed request and call: `seq` counts from 0 with no gaps, keyed like
the request's completion (so one partition holds it in order). `delta` is the text the chunk
adds; `tool_calls_delta` pieces of tool calls (`index`, then `id` and `name` when they first
arrive, then pieces of the `arguments` JSON text). The last chunk of a sequence carries
`finish_reason` (`error` when the call failed) and, when the provider said it, `usage`.

The completion on `llm_completions` stays the record of truth: its text is the deltas joined.

A chunk's body (everything but `id` and `seq`) is encoded once per provider stream
(`ChunkBody.encode`) and spliced into each subscriber's record (`chunk_record`), so identical
requests sharing a stream do not encode each chunk again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_worker.adapters.base import ProviderResult, StreamDelta

from .messages import Usage, schema_of

__all__ = [
    "Chunk",
    "ChunkBody",
    "ToolCallDeltaOut",
    "chunk_record",
    "chunk_schema",
    "empty_chunk",
]


class ToolCallDeltaOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """A piece of the tool call at `index`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Chunk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One chunk record (the published shape; what `chunk_record` writes)."""

    id: str
    seq: int
    delta: str
    tool_calls_delta: list[ToolCallDeltaOut] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


class ChunkBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A chunk without its `id` and `seq`: what every subscriber's record shares."""

    delta: str
    tool_calls_delta: list[ToolCallDeltaOut] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @classmethod
    def of(cls, deltas: list[StreamDelta]) -> ChunkBody:
        """The pieces `deltas` added, as one chunk (text joined; tool-call pieces in order)."""
        calls = [
            ToolCallDeltaOut(c.index, c.id, c.name, c.arguments)
            for d in deltas
            for c in d.tool_calls
        ]
        return cls(delta="".join(d.text for d in deltas), tool_calls_delta=calls or None)

    @classmethod
    def last(cls, finish_reason: str, result: ProviderResult | None) -> ChunkBody:
        """The final chunk: how the answer finished, and its tokens when there was one."""
        usage = None
        if result is not None:
            usage = Usage(
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cached_input_tokens=result.cached_input_tokens,
                cache_write_tokens=result.cache_write_tokens,
                reasoning_tokens=result.reasoning_tokens,
            )
        return cls(delta="", finish_reason=finish_reason, usage=usage)


_encoder = msgspec.json.Encoder()


def chunk_record(request_id: str, seq: int, body: bytes) -> bytes:
    """The record of chunk `seq` of `request_id`: `body` (an encoded `ChunkBody`, an object
    whose first key is `delta`) with `id` and `seq` spliced in before it."""
    return (
        b'{"id":' + _encoder.encode(request_id) + b',"seq":' + str(seq).encode() + b"," + body[1:]
    )


class _Head(msgspec.Struct):
    id: str
    seq: int
    finish_reason: str | None = None


def empty_chunk(record: bytes) -> bytes:
    """The record that replaces a chunk the broker refused as too large: the same `id`, `seq`
    and `finish_reason`, no text (the completion still carries the whole answer)."""
    head = msgspec.json.decode(record, type=_Head)
    body = ChunkBody(delta="", finish_reason=head.finish_reason).encode()
    return chunk_record(head.id, head.seq, body)


def chunk_schema() -> dict[str, Any]:
    return schema_of(Chunk, "llm-worker chunk (topic llm_completions.chunks)")
