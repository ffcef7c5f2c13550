"""A streamed request's call: it leads a provider stream, follows an identical one, or is
served a whole answer, and its chunk sequence is written whichever way it went.

    lead     no identical request in flight: this request's call streams into a new
             `ChunkSource`, open in the `Multiplexer` under the dedup key while it runs
    follow   an identical stream is in flight: this request's writer follows that source from
             its first chunk (past `buffer_bytes`: no chunks, the final completion only)
    whole    the answer came whole (the dedup window, a leader that did not stream): one chunk
             with the whole answer, then the final one

A call that fails before any stream began leaves a sequence of one chunk, `finish_reason`
"error". A follower whose leader was cancelled (its partition revoked) takes over: it leads a
new stream, and its writer starts a new sequence after the broken one (which ended "error");
the other followers' writers start a new sequence too, the new call's answer whole. The same
when the leader's own prompt deadline ended its call (`deadline_exceeded`): a follower does not
take that error, it leads (or follows) a new call under its own deadline (`Caller.call`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from llm_worker.adapters.base import ProviderRequest, ProviderResult
from llm_worker.registry.resolve import Candidate

from ..calling.caller import Caller, CallFailed, CallResult
from ..calling.priority import NORMAL
from ..calling.results import DeadlineExceeded
from ..dedup import DedupWindow
from ..ops.metrics import Metrics
from .source import ChunkSource, Multiplexer
from .writer import ChunkWriter, Publish

__all__ = ["StreamCalls"]


def _size(call: CallResult) -> int:
    return len(call.result.text) + 256


class StreamCalls:
    def __init__(
        self,
        caller: Caller,
        publish: Publish,
        metrics: Metrics,
        *,
        topic: str,
        linger_s: float,
        buffer_bytes: int,
        dedup: DedupWindow[CallResult] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caller = caller
        self._publish = publish
        self._metrics = metrics
        self._topic = topic
        self._linger_s = linger_s
        self._buffer_bytes = buffer_bytes
        self._dedup = dedup
        self._clock = clock
        self.mux = Multiplexer()

    def writer(
        self, request_id: str, key: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> ChunkWriter:
        """The chunk writer of one request."""
        return ChunkWriter(self._counted, self._topic, request_id, key, headers, clock=self._clock)

    async def _counted(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        await self._publish(topic, value, key, headers)
        self._metrics.chunks.inc()
        self._metrics.chunk_bytes.inc(len(value))

    def source(self) -> ChunkSource:
        return ChunkSource(
            linger_s=self._linger_s, buffer_bytes=self._buffer_bytes, clock=self._clock
        )

    def whole(self, w: ChunkWriter, result: ProviderResult) -> None:
        """Write `result` as one chunk and the final one."""
        source = self.source()
        source.whole(result)
        w.follow(source)

    async def call(
        self,
        w: ChunkWriter,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        *,
        deadline: float,
        tenant: str | None,
        key: str | None,
        on_lead: Callable[[str], None] | None = None,
        prompt_deadline: float | None = None,
        priority: int = NORMAL,
    ) -> tuple[CallResult, bool]:
        """`(result, shared)` as the pipeline's plain call gives it, the chunks written (`w`);
        `CallFailed` when it failed, the sequence then ended with an "error" chunk.
        `on_lead(key)`: this request calls the provider for `key` (the others follow it).
        `prompt_deadline`: the prompt's own deadline, for the caller (`Caller.call`);
        `priority`: where the call waits for capacity (`Caller.call`)."""
        deadlines, who = (deadline, prompt_deadline), (tenant, priority)
        try:
            if key is None or self._dedup is None:
                return await self._lead(w, candidates, request, deadlines, who, None), False
            return await self._shared(w, key, candidates, request, deadlines, who, on_lead)
        except CallFailed:
            if not w.following and not w.skipped:
                failed = self.source()
                failed.end("error")
                w.follow(failed)
            raise

    async def _lead(
        self,
        w: ChunkWriter,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        deadlines: tuple[float, float | None],
        who: tuple[str | None, int],
        key: str | None,
    ) -> CallResult:
        """`deadlines`: the request's and its prompt's own; `who`: its tenant and priority
        (`Caller.call`)."""
        source = self.source()
        if w.following:  # taking over a cancelled leader's stream: a new sequence follows it
            await w.done()
            w.reset()
        w.on_first = self._metrics.first_chunk.observe
        w.follow(source)
        if key is not None:
            self.mux.open(key, source)
        try:
            call = await self._caller.call(
                candidates,
                request,
                deadline=deadlines[0],
                tenant=who[0],
                tap=source,
                prompt_deadline=deadlines[1],
                priority=who[1],
            )
        except BaseException:
            source.end("error")
            raise
        finally:
            if key is not None:
                self.mux.close(key, source)
        source.end(call.result.finish_reason or "stop", call.result)
        return call

    async def _shared(
        self,
        w: ChunkWriter,
        key: str,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        deadlines: tuple[float, float | None],
        who: tuple[str | None, int],
        on_lead: Callable[[str], None] | None,
    ) -> tuple[CallResult, bool]:
        assert self._dedup is not None
        running = self.mux.get(key)
        if running is not None:
            if running.admit():
                w.follow(running)
            else:
                w.skipped = True
                self._metrics.late_joins.inc()

        led = False

        async def lead() -> CallResult:
            nonlocal led
            led, w.skipped = True, False
            if on_lead is not None:
                on_lead(key)
            return await self._lead(w, candidates, request, deadlines, who, key)

        while True:
            try:
                answer, shared = await self._dedup.run(key, lead, _size)
            except CallFailed as failed:
                if led:
                    raise
                if isinstance(failed.error, DeadlineExceeded):
                    continue  # the leader's own deadline ended it: this one leads or follows anew
                raise CallFailed(failed.error, 0, failed.candidate, shared=True) from None
            break
        if shared and not w.skipped:
            broken = w.source is not None and w.source.finish_reason == "error"
            if broken:  # its leader was cancelled mid-stream, another call answered: the
                await w.done()  # broken sequence is over, a new one has the answer
                w.reset()
            if not w.following:  # from the window, a leader that did not stream, a takeover
                self.whole(w, answer.result)
        return answer, shared
