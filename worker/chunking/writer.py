"""One request's chunk sequence: the chunks of the stream it follows, as its own records.

A writer follows one `ChunkSource` in a task: chunk `seq` of the source becomes the record
`{"id": <this request's id>, "seq": seq, ...}` (the body spliced in, not encoded again), keyed
like the request's completion. The chunks there are when the writer looks are produced together,
in order (`gather` starts each publish in turn, and each produces before it first waits; the
idempotent producer keeps a partition's order through its retries), and their acknowledgements
awaited before it looks again: a writer that fell behind a fast stream catches up in one round
trip, not one per chunk.
`done()` returns when the final chunk is acknowledged: the pipeline produces the completion only
then, so the completion comes after its chunks, and the input offset (committed after the
completion's acknowledgement) after both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..chunks import chunk_record
from .source import ChunkSource

__all__ = ["ChunkWriter", "Publish"]

Publish = Callable[[str, bytes, bytes | None, list[tuple[str, bytes]] | None], Awaitable[None]]
"""Produce one record (topic, value, key, headers) and return once it is acknowledged."""


class ChunkWriter:
    def __init__(
        self,
        publish: Publish,
        topic: str,
        request_id: str,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        *,
        on_first: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_first(seconds)`: called once the first chunk is acknowledged, with the time
        since the provider's first piece arrived."""
        self._publish = publish
        self._topic = topic
        self._id = request_id
        self._key = key
        self._headers = headers
        self.on_first = on_first
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.source: ChunkSource | None = None
        self.written = 0
        """Chunks produced and acknowledged so far."""
        self.skipped = False
        """This request gets no chunks (it joined a stream past its buffer): the final
        completion only."""

    @property
    def following(self) -> bool:
        return self._task is not None

    def follow(self, source: ChunkSource) -> None:
        """Write every chunk of `source`, from its first, until its final one."""
        if self._task is not None:
            raise RuntimeError("a writer follows one source")
        self.source = source
        self._task = asyncio.create_task(self._write(source), name=f"chunks-{self._id[:32]}")

    async def done(self) -> None:
        """Wait until the source's final chunk is acknowledged (at once when not following)."""
        if self._task is not None:
            await self._task

    def reset(self) -> None:
        """Forget the source followed (its sequence is over): a new one may be followed."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the sequence being written is not over")
        self._task, self.source, self.written = None, None, 0

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _write(self, source: ChunkSource) -> None:
        seq = 0
        while True:
            ready = len(source.chunks)
            if seq < ready:  # every chunk there is, produced in order, then their acks awaited
                await asyncio.gather(
                    *(
                        self._publish(
                            self._topic,
                            chunk_record(self._id, n, source.chunks[n]),
                            self._key,
                            self._headers,
                        )
                        for n in range(seq, ready)
                    )
                )
                if seq == 0 and self.on_first is not None and source.first_piece_at is not None:
                    self.on_first(self._clock() - source.first_piece_at)
                seq = self.written = ready
                continue
            if source.ended:
                return
            await source.news(seq)
