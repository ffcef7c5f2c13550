"""From one input record to its outcome record (a completion or a dead letter).

`Pipeline.process` never raises for bad input or provider trouble: every readable input becomes
a completion (`ok` or `error`), every unreadable one a DLQ record. Only cancellation escapes.

With tracing on (`ops.tracing`), each message's span starts in `begin` and ends with its
outcome, whose `traceparent` then continues the trace; with it off, the tracer is `NO_TRACING`
and the input's `traceparent`/`tracestate` are copied to the outcome as they are.

A streamed prompt (`stream`, else its row's `stream`, else `LLM_WORKER_STREAM`) is called
through `chunking.StreamCalls`: its chunks go to the chunk topic while the answer comes, and
its completion, built here as for any prompt, only after the last chunk was acknowledged.

A prompt's deadline (`deadline`, epoch ms; `ttl_ms` from the record's timestamp, or from when
the worker took a record that has none; else `LLM_WORKER_DEFAULT_TTL_MS`; the earliest wins)
is checked in `begin`, before the dedup window: a prompt already past it is answered
`deadline_exceeded` with `attempts: 0` and no call. Otherwise it becomes `Pending.prompt_deadline`
(on the monotonic clock), which caps `Pending.deadline` and everything the caller waits for.

Each outcome is built once (`_seal`): the builders make a `Draft` (what the record says), the
tracer ends the message's span and gives the record's trace headers, then the `Outcome` is made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from llm_worker.adapters.base import ProviderRequest, ProviderResult
from llm_worker.registry.errors import RegistryError, UnknownModel
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate

from .calling.caller import Caller, CallFailed, CallResult
from .calling.output import check_output
from .calling.priority import NORMAL, RANKS, rank
from .calling.results import DeadlineExceeded, past_prompt_deadline
from .chunking.calls import StreamCalls
from .chunking.writer import ChunkWriter
from .config import Settings
from .dedup import DedupWindow, FollowTimedOut, dedup_key
from .messages import (
    Completion,
    ErrorInfo,
    Prompt,
    Rejected,
    ToolCallOut,
    Usage,
    decode_prompt,
    encode,
    provider_request,
)
from .ops.metrics import Metrics
from .ops.tracing import NO_TRACING, MessageTrace, MessageTracer
from .records import InputRecord, Outcome, passthrough_headers, record_size

__all__ = ["InputRecord", "Outcome", "Pending", "Pipeline", "RegistryView"]

log = logging.getLogger("llm_worker.outcome")


class RegistryView(Protocol):
    def resolve(self, model_id: str) -> list[Candidate]: ...


class BatchSink(Protocol):
    """Where batch-lane prompts go (`worker.batch.intake.BatchIntake`)."""

    def refuse(self, candidate: Candidate, request: ProviderRequest) -> str | None:
        """Why the prompt cannot go to `candidate`'s batch API (naming what to change)."""
        ...

    async def put(
        self,
        rec: InputRecord,
        prompt: Prompt,
        candidate: Candidate,
        deadline_ms: float | None = None,
    ) -> None:
        """Store the prompt durably (returns once it is written), with its own deadline
        (epoch ms), which bounds its wait for a job."""
        ...


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """An outcome record before its trace: where it goes and what it says."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    completion: Completion | None = None
    dlq_reason: str | None = None
    model_label: str = "unknown"
    """`model` for metric labels: the prompt's model only when the registry knows it."""
    stored: bool = False  # written to the batch lane: nothing to produce

    def labelled(self, model: str) -> Draft:
        return msgspec.structs.replace(self, model_label=model)


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A valid prompt that needs a provider call (or the answer of an identical one)."""

    rec: InputRecord
    prompt: Prompt
    candidates: list[Candidate]
    request: ProviderRequest
    dedup_key: str | None
    deadline: float
    started: float
    trace: MessageTrace
    stream: bool = False
    priority: int = NORMAL
    """Where it waits for capacity (a rank of `calling.priority`): the prompt's, else the
    requested row's, else normal."""
    hit: CallResult | None = None
    """A streamed prompt's answer found in the dedup window (its chunks are still to write)."""
    prompt_deadline: float | None = None
    """The prompt's own deadline on the monotonic clock (`deadline`, `ttl_ms`, the worker's
    default TTL); None: it has none. `deadline` is never later."""
    batch: bool = False
    """It goes to the batch lane (`candidates[0]`'s batch API), not to a live call."""


def _lane(prompt: Prompt, candidates: list[Candidate]) -> str:
    """The prompt's `lane`, else the requested row's, else online."""
    if prompt.lane is not None:
        return prompt.lane
    for c in candidates:
        if c.row.model_id == prompt.model:
            return c.row.lane or "online"
    return "online"


def _priority(prompt: Prompt, candidates: list[Candidate]) -> int:
    """Where a prompt waits for capacity: its `priority`, else the requested row's, else
    normal (a row's value outside high|normal|low, which the database refuses: normal)."""
    if prompt.priority is not None:
        return rank(prompt.priority)
    for c in candidates:
        if c.row.model_id == prompt.model:
            return RANKS.get(c.row.priority or "normal", NORMAL)
    return NORMAL


class _RankPeek(msgspec.Struct):
    """What the intake reads of a parked record: where it would wait (`Pipeline.intake_rank`)."""

    model: str = ""
    priority: str | None = None


_peek = msgspec.json.Decoder(_RankPeek)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        registry: RegistryView,
        caller: Caller,
        metrics: Metrics,
        *,
        dedup: DedupWindow[CallResult] | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        tracing: MessageTracer | None = None,
        streams: StreamCalls | None = None,
        batch: BatchSink | None = None,
    ) -> None:
        self._tracer: MessageTracer = tracing if tracing is not None else NO_TRACING
        self._streams = streams
        self._batch = batch
        self._s = settings
        self._registry = registry
        self._caller = caller
        self._metrics = metrics
        self._dedup = dedup
        self._wall = wall_clock
        self._clock = clock
        self.priorities_used = False
        """A prompt or row asked for a priority other than normal (the intake's lookahead
        engages from then on)."""

    def _prioritized(self, prio: int) -> int:
        if prio != NORMAL:
            self.priorities_used = True
        return prio

    def intake_rank(self, rec: InputRecord) -> int:
        """A record's priority rank before it is processed (for the intake's lookahead): the
        prompt's `priority`, else its row's, else normal; normal for anything unreadable
        (its outcome is decided when it is processed)."""
        try:
            peek = _peek.decode(rec.value or b"")
            if peek.priority is not None:
                return RANKS.get(peek.priority, NORMAL)
            for c in self._registry.resolve(peek.model):
                if c.row.model_id == peek.model:
                    return RANKS.get(c.row.priority or "normal", NORMAL)
        except (msgspec.DecodeError, RegistryError):
            pass
        return NORMAL

    def _queue_ms(self, rec: InputRecord) -> float | None:
        if not rec.timestamp_ms:
            return None
        return max(0.0, self._wall() * 1000 - rec.timestamp_ms)

    async def process(self, rec: InputRecord) -> Outcome:
        """`begin`, then `finish` when the record needs a provider call."""
        step = self.begin(rec)
        if isinstance(step, Outcome):
            return step
        return await self.finish(step)

    def begin(self, rec: InputRecord) -> Outcome | Pending:
        """Everything that needs no waiting: decode, validate, resolve, look up the dedup
        window. Returns the outcome when that is enough (unreadable or invalid input, registry
        errors, an answer stored in the dedup window), else the state `finish` continues from.
        """
        started = self._clock()
        mt = self._tracer.start_message(rec)
        step = self._begin(rec, started, mt)
        if isinstance(step, Draft):
            return self._seal(step, started, mt)
        return step

    def _begin(self, rec: InputRecord, started: float, mt: MessageTrace) -> Draft | Pending:
        decoded = decode_prompt(
            rec.value,
            max_bytes=self._s.max_message_bytes,
            max_metadata_bytes=self._s.max_metadata_bytes,
            extra_bytes=record_size(None, rec.key, rec.headers),
        )
        if isinstance(decoded, Rejected):
            return self._rejected(rec, decoded)
        prompt = decoded
        try:
            candidates = self._registry.resolve(prompt.model)
        except RegistryError as exc:
            out = self._error(
                rec, prompt.id, prompt.model, prompt.metadata, type(exc).__name__, str(exc)
            )
            if isinstance(exc, UnknownModel):
                return out
            return out.labelled(prompt.model)  # a row exists: a bounded label
        prompt_deadline = self._prompt_deadline(rec, prompt, started)
        if isinstance(prompt_deadline, Draft):
            return prompt_deadline.labelled(prompt.model)
        request = provider_request(prompt)
        if _lane(prompt, candidates) == "batch":
            return self._to_batch(rec, prompt, candidates, request, started, mt)
        stream = self._streams is not None and self._streamed(prompt, candidates)
        key = None
        stored = None
        if self._dedup is not None and prompt.dedup:
            key = self._dedup_key(prompt, candidates, request)
            stored = self._dedup.get(key)
            if stored is not None:
                self._tracer.follow(mt, key)
                if not stream:
                    return self._answered(rec, prompt, stored, shared=True).labelled(prompt.model)
        return Pending(
            rec=rec,
            prompt=prompt,
            candidates=candidates,
            request=request,
            dedup_key=key,
            deadline=_capped(started + self._s.request_deadline_s, prompt_deadline),
            started=started,
            trace=mt,
            stream=stream,
            priority=self._prioritized(_priority(prompt, candidates)),
            hit=stored,
            prompt_deadline=prompt_deadline,
        )

    def _to_batch(
        self,
        rec: InputRecord,
        prompt: Prompt,
        candidates: list[Candidate],
        request: ProviderRequest,
        started: float,
        mt: MessageTrace,
    ) -> Draft | Pending:
        """A batch-lane prompt: checked now, written by `finish`; an error completion when
        its first candidate has no batch API or the prompt asks what a batch cannot do."""
        cand = candidates[0] if candidates else None
        problem: str | None
        if self._batch is None:
            problem = "the batch lane is not available in this worker; use lane online"
        elif prompt.stream:
            problem = "`stream` cannot go with lane batch: a batch answers whole, hours later"
        elif cand is None:
            problem = f"no enabled candidate for model {prompt.model!r}"
        else:
            problem = self._batch.refuse(cand, request)
        if problem is not None or cand is None:
            message = problem or "no candidate"
            return self._error(
                rec, prompt.id, prompt.model, prompt.metadata, "batch_unavailable", message
            ).labelled(prompt.model)
        return Pending(
            rec=rec,
            prompt=prompt,
            candidates=[cand],
            request=request,
            dedup_key=None,
            deadline=started + self._s.request_deadline_s,
            started=started,
            trace=mt,
            batch=True,
        )

    def _prompt_deadline(
        self, rec: InputRecord, prompt: Prompt, started: float
    ) -> Draft | float | None:
        """The prompt's deadline on the monotonic clock (`started` is now on it); None when it
        has none; the `deadline_exceeded` error completion when it has passed already."""
        now_ms = self._wall() * 1000
        end = deadline_ms(prompt, rec.timestamp_ms, now_ms, self._s.default_ttl_ms)
        if end is None:
            return None
        end_ms, what = end
        if now_ms < end_ms:
            return started + (end_ms - now_ms) / 1000
        why = (
            f"the prompt's deadline passed {now_ms - end_ms:.0f} ms before the worker took it"
            f" ({what}: {end_ms:.0f} epoch ms); no call was made"
        )
        return self._error(
            rec, prompt.id, prompt.model, prompt.metadata, DeadlineExceeded.type, why
        )

    def _streamed(self, prompt: Prompt, candidates: list[Candidate]) -> bool:
        """Whether to stream: the prompt says, else the requested row, else the worker."""
        if prompt.stream is not None:
            return prompt.stream
        row = next((c.row for c in candidates if c.row.model_id == prompt.model), None)
        if row is not None and row.stream is not None:
            return row.stream
        return self._s.stream

    async def finish(self, p: Pending) -> Outcome:
        """The provider call (or the identical in-flight request's answer) and its outcome."""
        tracer = self._tracer
        try:
            with tracer.activate(p.trace):
                draft = await self._finish(p)
        except BaseException as exc:
            tracer.abandon(p.trace, type(exc).__name__)
            raise
        outcome = self._seal(draft, p.started, p.trace)
        outcome.priority = p.priority
        return outcome

    def _seal(self, draft: Draft, started: float, mt: MessageTrace | None) -> Outcome:
        """The one place an `Outcome` is made: the draft, with the trace the tracer gives it
        (ending the message's span `mt`; None: no span). `started`: when the input was taken
        (0: unknown)."""
        trace, headers = (
            (None, draft.headers) if mt is None else self._tracer.finish_message(mt, draft)
        )
        return Outcome(
            topic=draft.topic,
            value=draft.value,
            key=draft.key,
            headers=headers,
            completion=draft.completion,
            dlq_reason=draft.dlq_reason,
            model_label=draft.model_label,
            started=started,
            trace=trace,
            stored=draft.stored,
        )

    async def _finish(self, p: Pending) -> Draft:
        if p.batch and self._batch is not None:
            # the prompt's own deadline only: the worker's default TTL is for live calls
            end = deadline_ms(p.prompt, p.rec.timestamp_ms, self._wall() * 1000, 0)
            await self._batch.put(p.rec, p.prompt, p.candidates[0], end[0] if end else None)
            return Draft(topic="", value=b"", key=None, headers=None, stored=True).labelled(
                p.prompt.model
            )
        if p.stream and self._streams is not None:
            return await self._finish_streamed(p, self._streams)
        shared = False
        try:
            if p.dedup_key is not None:
                call, shared = await self._deduplicated(p, p.dedup_key)
            else:
                call = await self._caller.call(
                    p.candidates,
                    p.request,
                    deadline=p.deadline,
                    tenant=p.prompt.tenant,
                    prompt_deadline=p.prompt_deadline,
                    priority=p.priority,
                )
        except CallFailed as failed:
            canned = _canned_for(failed, p)
            return self._failed(p.rec, p.prompt, failed, canned).labelled(p.prompt.model)
        if call.candidate.fallback and not shared:
            self._metrics.fallbacks.labels(p.prompt.model).inc()
        return self._answered(p.rec, p.prompt, call, shared=shared).labelled(p.prompt.model)

    async def _finish_streamed(self, p: Pending, streams: StreamCalls) -> Draft:
        """The call streamed (or followed, or served whole), its chunks acknowledged, then its
        completion; one that failed mid-stream keeps the text streamed so far."""
        w = streams.writer(p.prompt.id, p.rec.key, passthrough_headers(p.rec))
        try:
            if p.hit is not None:
                streams.whole(w, p.hit.result)
                await w.done()
                return self._answered(p.rec, p.prompt, p.hit, shared=True).labelled(p.prompt.model)
            try:
                call, shared = await streams.call(
                    w,
                    p.candidates,
                    p.request,
                    deadline=p.deadline,
                    tenant=p.prompt.tenant,
                    key=p.dedup_key,
                    on_lead=self._tracer.lead,
                    prompt_deadline=p.prompt_deadline,
                    priority=p.priority,
                )
            except CallFailed as failed:
                if failed.shared and p.dedup_key is not None:  # the leader's error
                    self._tracer.follow(p.trace, p.dedup_key)
                await w.done()
                canned = _canned_for(failed, p)
                draft = self._failed(p.rec, p.prompt, failed, canned, partial=_partial(w))
                return draft.labelled(p.prompt.model)
            await w.done()
        finally:
            w.cancel()
        if shared and p.dedup_key is not None:
            self._tracer.follow(p.trace, p.dedup_key)
        if call.candidate.fallback and not shared:
            self._metrics.fallbacks.labels(p.prompt.model).inc()
        return self._answered(p.rec, p.prompt, call, shared=shared).labelled(p.prompt.model)

    def _answered(
        self, rec: InputRecord, prompt: Prompt, call: CallResult, *, shared: bool
    ) -> Draft:
        res, cand, row = call.result, call.candidate, call.candidate.row
        cost = 0.0 if shared else _cost(res, row)  # a shared answer: charged on the call that ran
        comp = Completion(
            id=prompt.id,
            model=prompt.model,
            status="ok",
            metadata=prompt.metadata,
            text=res.text,
            json=call.json,
            tool_calls=[ToolCallOut(c.id, c.name, c.arguments) for c in res.tool_calls] or None,
            finish_reason=res.finish_reason,
            provider=cand.provider,
            upstream_model=cand.upstream_model,
            endpoint_name=cand.endpoint_name,
            usage=Usage(
                input_tokens=res.input_tokens,
                output_tokens=res.output_tokens,
                cached_input_tokens=res.cached_input_tokens,
                cache_write_tokens=res.cache_write_tokens,
                reasoning_tokens=res.reasoning_tokens,
                cost_usd=cost,
            ),
            latency_ms=round(call.latency_ms, 3),
            queue_ms=self._queue_ms(rec),
            deduplicated=shared,
            fallback_used=cand.fallback,
            attempts=0 if shared else call.attempts,
        )
        return self._completion(rec, comp)

    def _dedup_key(
        self, prompt: Prompt, candidates: list[Candidate], request: ProviderRequest
    ) -> str:
        # the resolved routing is part of the key: a failover row update starts a new entry
        resolved = "|".join(f"{c.provider}@{c.endpoint}#{c.upstream_model}" for c in candidates)
        tenant = prompt.tenant if self._s.dedup_per_tenant else None
        return dedup_key(f"{prompt.model}|{resolved}", request, tenant=tenant)

    async def _deduplicated(self, p: Pending, key: str) -> tuple[CallResult, bool]:
        """One provider call for identical requests; the others share its answer (or error).

        Prompt deadlines: the leader's call runs under the leader's own deadline. A follower
        waits for the answer only until its own deadline, then ends `deadline_exceeded` (the
        leader runs on for the others). When the leader's own deadline ended its call
        (`deadline_exceeded`), a follower with time left does not take that error: it goes
        round again, the first one to do so leads a new call under its own deadline and the
        others follow that one. So a follower never inherits a deadline that is not its own."""
        assert self._dedup is not None
        led = False

        async def lead() -> CallResult:
            nonlocal led
            led = True
            self._tracer.lead(key)
            return await self._caller.call(
                p.candidates,
                p.request,
                deadline=p.deadline,
                tenant=p.prompt.tenant,
                prompt_deadline=p.prompt_deadline,
                priority=p.priority,
            )

        while True:
            left = None if p.prompt_deadline is None else p.prompt_deadline - self._clock()
            if left is not None and left <= 0:
                raise CallFailed(past_prompt_deadline(None, 0, 0.0), 0, None)
            try:
                answer = await self._dedup.run(key, lead, _result_size, follow_s=left)
            except FollowTimedOut:
                self._tracer.follow(p.trace, key)
                why = (
                    "the prompt's deadline passed while it waited for an identical request's answer"
                )
                raise CallFailed(DeadlineExceeded(why), 0, None) from None
            except CallFailed as failed:
                if led:
                    raise
                if isinstance(failed.error, DeadlineExceeded):  # the leader's own deadline
                    continue
                self._tracer.follow(p.trace, key)  # a follower: the leader's error, shared
                raise CallFailed(failed.error, 0, failed.candidate, shared=True) from None
            if answer[1]:
                self._tracer.follow(p.trace, key)
            return answer

    def _failed(
        self,
        rec: InputRecord,
        prompt: Prompt,
        failed: CallFailed,
        canned: tuple[str, Any] | None = None,
        partial: str | None = None,
    ) -> Draft:
        """The error completion; or, when the row has a `canned_response` (and its parsed JSON)
        fit for the prompt, that text as an `ok` answer marked `canned`, the cause in `error`.
        `partial`: the text a stream gave before it failed (kept as the error's `text`)."""
        err, cand = failed.error, failed.candidate
        if canned is not None:
            self._metrics.canned.labels(prompt.model).inc()
        comp = Completion(
            id=prompt.id,
            model=prompt.model,
            status="error" if canned is None else "ok",
            text=canned[0] if canned is not None else partial or getattr(err, "raw", None),
            json=canned[1] if canned is not None else None,
            canned=canned is not None,
            metadata=prompt.metadata,
            provider=cand.provider if cand else None,
            upstream_model=cand.upstream_model if cand else None,
            endpoint_name=cand.endpoint_name if cand else None,
            queue_ms=self._queue_ms(rec),
            deduplicated=failed.shared,
            attempts=failed.attempts,
            fallback_used=bool(cand and cand.fallback),
            error=ErrorInfo(type=err.type, message=str(err), retryable=err.retryable),
        )
        return self._completion(rec, comp)

    # -- outcome builders ------------------------------------------------------------------
    def _completion(self, rec: InputRecord, comp: Completion) -> Draft:
        return Draft(
            topic=self._s.completions_topic,
            value=encode(comp),
            key=rec.key,
            headers=passthrough_headers(rec),
            completion=comp,
        )

    def _error(
        self,
        rec: InputRecord,
        request_id: str,
        model: str,
        metadata: dict[str, Any] | None,
        etype: str,
        message: str,
    ) -> Draft:
        comp = Completion(
            id=request_id,
            model=model,
            status="error",
            metadata=metadata,
            queue_ms=self._queue_ms(rec),
            error=ErrorInfo(type=_snake(etype), message=message, retryable=False),
        )
        return self._completion(rec, comp)

    def _rejected(self, rec: InputRecord, rej: Rejected) -> Draft:
        if not rej.dlq and rej.request_id is not None:
            return self._error(
                rec, rej.request_id, rej.model, rej.metadata, rej.reason, rej.message
            )
        return self._dead_letter(rec, rej.reason, rej.message)

    def dead_letter(self, rec: InputRecord, reason: str, message: str) -> Outcome:
        """The DLQ record of `rec`, saying why (`reason`, `message`)."""
        return self._seal(self._dead_letter(rec, reason, message), 0.0, None)

    def _dead_letter(self, rec: InputRecord, reason: str, message: str) -> Draft:
        headers = list(rec.headers or [])
        headers += [
            ("llm_worker.reason", reason.encode()),
            ("llm_worker.error", message[:1000].encode("utf-8", "replace")),
            ("llm_worker.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
        ]
        return Draft(
            topic=self._s.dlq_topic,
            value=rec.value or b"",
            key=rec.key,
            headers=headers,
            dlq_reason=reason,
        )

    def internal_error(self, rec: InputRecord, exc: BaseException) -> Outcome:
        """An unexpected bug while processing: answer it rather than crash-loop on it. Never
        raises: when even the id cannot be read again, the record is dead-lettered."""
        message = f"internal error: {type(exc).__name__}"
        out: Draft | None = None
        try:  # no size limit on the value (it was read once), the usual one on the metadata
            decoded = decode_prompt(
                rec.value, max_bytes=2**62, max_metadata_bytes=self._s.max_metadata_bytes
            )
            if isinstance(decoded, Prompt):
                out = self._error(
                    rec, decoded.id, decoded.model, decoded.metadata, "internal_error", message
                )
            elif decoded.request_id is not None:
                out = self._error(
                    rec,
                    decoded.request_id,
                    decoded.model,
                    decoded.metadata,
                    "internal_error",
                    message,
                )
        except Exception:
            log.exception("reading the record again failed", extra={"offset": rec.offset})
        if out is None:
            out = self._dead_letter(rec, "internal_error", message)
        # the message's own span was lost with the bug: this one says what became of it
        return self._seal(out, 0.0, self._tracer.start_message(rec))


def deadline_ms(
    prompt: Prompt, timestamp_ms: int | None, taken_ms: float, default_ttl_ms: int
) -> tuple[float, str] | None:
    """When `prompt` stops being wanted, in epoch ms, and what says so; None: never. Its
    `deadline`, or its `ttl_ms` from the record's timestamp (`taken_ms`, when the worker took
    the record, for one without), the earlier of the two; for a prompt that gives neither,
    the worker's `default_ttl_ms` (0: none) counted the same way."""
    ends: list[tuple[float, str]] = []
    if prompt.deadline is not None:
        ends.append((prompt.deadline, "`deadline`"))
    ttl, name = prompt.ttl_ms, "`ttl_ms`"
    if ttl is None and prompt.deadline is None and default_ttl_ms:
        ttl, name = default_ttl_ms, "LLM_WORKER_DEFAULT_TTL_MS"
    if ttl is not None:
        if timestamp_ms:
            ends.append((timestamp_ms + ttl, f"{name} {ttl} from the record's timestamp"))
        else:
            ends.append((taken_ms + ttl, f"{name} {ttl} from when the worker took the record"))
    return min(ends) if ends else None


def _capped(deadline: float, prompt_deadline: float | None) -> float:
    return deadline if prompt_deadline is None else min(deadline, prompt_deadline)


def _canned_for(failed: CallFailed, p: Pending) -> tuple[str, Any] | None:
    """The canned answer for a failed call (`_canned_response`); none when the prompt's
    deadline ended it: an answer past the deadline is not wanted, a canned one neither."""
    if isinstance(failed.error, DeadlineExceeded):
        return None
    return _canned_response(p.prompt.model, p.candidates, p.request)


def _partial(w: ChunkWriter) -> str | None:
    """The text a failed stream had given, if any."""
    source = w.source
    if source is None or not source.text:
        return None
    return "".join(source.text)


def _result_size(call: CallResult) -> int:
    return len(call.result.text) + 256


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _cost(res: ProviderResult, row: ModelRow) -> float:
    """USD for one call at `row`'s prices: input read from the provider's cache and written to
    it at their own prices (the input price when the row has none), the rest at the input
    price, never counted twice (both are part of `input_tokens`)."""
    cached, written = res.cached_input_tokens, res.cache_write_tokens
    plain = max(0, res.input_tokens - cached - written)
    cached_price = row.cached_input_cost_per_1k
    write_price = row.cache_write_cost_per_1k
    usd = (
        plain * row.input_cost_per_1k
        + cached * (row.input_cost_per_1k if cached_price is None else cached_price)
        + written * (row.input_cost_per_1k if write_price is None else write_price)
        + res.output_tokens * row.output_cost_per_1k
    ) / 1000
    return round(usd, 8)


def _canned_response(
    model: str, candidates: list[Candidate], request: ProviderRequest
) -> tuple[str, Any] | None:
    """The requested row's `canned_response` and its parsed JSON, if it has one that satisfies
    what the prompt asked (a prompt asking JSON or a tool call is never `ok` with free text)."""
    canned = next((c.row.canned_response for c in candidates if c.row.model_id == model), None)
    if canned is None:
        return None
    value, problem = check_output(request, ProviderResult(text=canned, finish_reason="stop"))
    return None if problem is not None else (canned, value)
