"""One provider stream's chunks, and the streams in flight by dedup key.

A `ChunkSource` is the tap the caller streams into (`calling.caller.StreamTap`). Its first
piece becomes chunk 0 at once (the reader waits for nothing); later pieces collect for
`linger_s` and go out as one chunk, so a fast model does not make one record per token. Each
chunk's body is encoded once (`ChunkBody.encode`) and kept in `chunks`, for every request that
follows this stream, the late ones included: a request that joins mid-stream is given every
chunk so far, then the rest. `end` adds the final chunk (the finish reason, the usage) and
wakes every follower.

The chunks are kept while the stream runs, up to `buffer_bytes`: past that a source admits no
new follower (`admit` is False; that request gets the final completion only), so one long
answer cannot hold memory for joiners that may never come. Followers already reading keep
reading: their chunks stay until the source is dropped with its last follower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from llm_worker.adapters.base import ProviderResult, StreamDelta
from llm_worker.adapters.streaming import whole_delta

from ..chunks import ChunkBody

__all__ = ["MAX_CHUNK_CHARS", "ChunkSource", "Multiplexer"]

MAX_CHUNK_CHARS = 64 * 1024
"""The most text one chunk carries: a provider that sends its answer in one piece (or a
non-streaming one) is cut into chunks of this size, each far below a broker's record limit."""


class ChunkSource:
    """The chunks of one provider stream, shared by the requests that follow it."""

    def __init__(
        self,
        *,
        linger_s: float,
        buffer_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.linger_s = linger_s
        self.buffer_bytes = buffer_bytes
        self._clock = clock
        self.chunks: list[bytes] = []
        """Every chunk so far, each an encoded `ChunkBody`; a chunk's index is its `seq`."""
        self.text: list[str] = []
        """The text streamed so far (what an error completion keeps)."""
        self.bytes = 0
        self.ended = False
        self.finish_reason: str | None = None
        """How the stream ended (`end`): "error" when its call failed or was cancelled."""
        self.first_piece_at: float | None = None
        """When the provider's first piece arrived (the clock's time)."""
        self._pending: list[StreamDelta] = []
        self._timer: asyncio.TimerHandle | None = None
        self._news: asyncio.Future[None] | None = None

    # -- the tap (calling.caller.StreamTap) -------------------------------------------------
    @property
    def started(self) -> bool:
        """A piece was passed on: readers have seen part of this answer."""
        return self.first_piece_at is not None

    def on_delta(self, delta: StreamDelta) -> None:
        if self.ended or not (delta.text or delta.tool_calls):
            return  # an empty piece is none: it neither starts the stream nor makes a chunk
        if delta.text:
            self.text.append(delta.text)
        self._pending.append(delta)
        if self.first_piece_at is None:
            self.first_piece_at = self._clock()
            self._flush()  # the first chunk waits for nothing
        elif self._timer is None:
            if self.linger_s <= 0:
                self._flush()
            else:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.linger_s, self._flush)

    # -- the end ---------------------------------------------------------------------------
    def end(self, finish_reason: str, result: ProviderResult | None = None) -> None:
        """The stream is over: what is pending goes out, then the final chunk (`finish_reason`,
        and the usage of `result` when there is one). Idempotent."""
        if self.ended:
            return
        self._flush()
        self._append(ChunkBody.last(finish_reason, result).encode())
        self.ended, self.finish_reason = True, finish_reason
        self._wake()

    def whole(self, result: ProviderResult) -> None:
        """A whole answer as this source's chunks (an answer that did not stream, or one served
        from the dedup window): its text and tool calls, then the final chunk."""
        self.on_delta(whole_delta(result))
        self.end(result.finish_reason or "stop", result)

    # -- followers ---------------------------------------------------------------------------
    def admit(self) -> bool:
        """Whether a new follower may join: not once the chunks kept passed `buffer_bytes`."""
        return self.bytes <= self.buffer_bytes

    async def news(self, seen: int) -> None:
        """Wait until there are more than `seen` chunks, or the source ended."""
        while len(self.chunks) <= seen and not self.ended:
            if self._news is None:
                self._news = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._news)

    # -- inside --------------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        body = ChunkBody.of(pending)
        if len(body.delta) <= MAX_CHUNK_CHARS:
            self._append(body.encode())
        else:
            text = body.delta
            for start in range(0, len(text), MAX_CHUNK_CHARS):
                piece = text[start : start + MAX_CHUNK_CHARS]
                calls = body.tool_calls_delta if start == 0 else None
                self._append(ChunkBody(delta=piece, tool_calls_delta=calls).encode())
        self._wake()

    def _append(self, encoded: bytes) -> None:
        self.chunks.append(encoded)
        self.bytes += len(encoded)

    def _wake(self) -> None:
        news, self._news = self._news, None
        if news is not None and not news.done():
            news.set_result(None)


class Multiplexer:
    """The provider streams in flight, by dedup key."""

    def __init__(self) -> None:
        self._sources: dict[str, ChunkSource] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def open(self, key: str, source: ChunkSource) -> None:
        self._sources[key] = source

    def close(self, key: str, source: ChunkSource) -> None:
        if self._sources.get(key) is source:
            del self._sources[key]

    def get(self, key: str) -> ChunkSource | None:
        return self._sources.get(key)
