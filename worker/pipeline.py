"""From one input record to its outcome record (a completion or a dead letter).

`Pipeline.process` never raises for bad input or provider trouble: every readable input becomes
a completion (`ok` or `error`), every unreadable one a DLQ record. Only cancellation escapes.

With tracing on (`ops.tracing`), each message's span starts in `begin` and ends with its
outcome, whose `traceparent` then continues the trace; with it off, `tracing` is None and the
input's `traceparent`/`tracestate` are copied to the outcome as they are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from adapters.base import ProviderRequest
from registry.errors import RegistryError, UnknownModel
from registry.resolve import Candidate

from .calling.caller import Caller, CallFailed, CallResult
from .config import Settings
from .dedup import DedupWindow, dedup_key
from .messages import (
    Completion,
    ErrorInfo,
    Prompt,
    Rejected,
    Usage,
    decode_prompt,
    encode,
    provider_request,
)
from .ops.metrics import Metrics
from .ops.tracing import MessageTrace, Tracing
from .records import InputRecord, Outcome, record_size

__all__ = ["InputRecord", "Outcome", "Pending", "Pipeline", "RegistryView"]

log = logging.getLogger("llm_worker.outcome")

PASSTHROUGH_HEADERS = ("traceparent", "tracestate")


class RegistryView(Protocol):
    def resolve(self, model_id: str) -> list[Candidate]: ...


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A valid prompt that needs a provider call (or the answer of an identical one)."""

    rec: InputRecord
    prompt: Prompt
    candidates: list[Candidate]
    request: ProviderRequest
    dedup_key: str | None
    deadline: float
    started: float
    trace: MessageTrace | None = None


def _headers_out(rec: InputRecord) -> list[tuple[str, bytes]] | None:
    if not rec.headers:
        return None
    kept = [(k, v) for k, v in rec.headers if k in PASSTHROUGH_HEADERS]
    return kept or None


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
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing
        self._s = settings
        self._registry = registry
        self._caller = caller
        self._metrics = metrics
        self._dedup = dedup
        self._wall = wall_clock
        self._clock = clock

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
        tracing = self._tracing
        mt = tracing.start_message(rec) if tracing is not None else None
        step = self._begin(rec, started, mt)
        if isinstance(step, Outcome):
            step.started = started
            if mt is not None:
                self._traced(mt, step)
        return step

    def _begin(
        self, rec: InputRecord, started: float, mt: MessageTrace | None
    ) -> Outcome | Pending:
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
            if not isinstance(exc, UnknownModel):  # a row exists: a bounded label
                out.model_label = prompt.model
            return out
        request = provider_request(prompt)
        key = None
        if self._dedup is not None and prompt.dedup:
            key = self._dedup_key(prompt, candidates, request)
            stored = self._dedup.get(key)
            if stored is not None:
                if mt is not None:
                    self._traced_follower(mt, key)
                out = self._answered(rec, prompt, stored, shared=True)
                out.model_label = prompt.model
                return out
        return Pending(
            rec=rec,
            prompt=prompt,
            candidates=candidates,
            request=request,
            dedup_key=key,
            deadline=started + self._s.request_deadline_s,
            started=started,
            trace=mt,
        )

    async def finish(self, p: Pending) -> Outcome:
        """The provider call (or the identical in-flight request's answer) and its outcome."""
        mt = p.trace
        if mt is None:
            out = await self._finish(p)
        else:
            tracing = self._tracing
            assert tracing is not None
            try:
                with tracing.activate(mt):
                    out = await self._finish(p)
            except BaseException as exc:
                tracing.abandon(mt, type(exc).__name__)
                raise
            self._traced(mt, out)
        out.started = p.started
        return out

    def _traced(self, mt: MessageTrace, out: Outcome) -> None:
        assert self._tracing is not None
        self._tracing.finish_message(mt, out)

    def _traced_follower(self, mt: MessageTrace, key: str) -> None:
        assert self._tracing is not None
        self._tracing.follow(mt, key)

    async def _finish(self, p: Pending) -> Outcome:
        shared = False
        try:
            if p.dedup_key is not None:
                call, shared = await self._deduplicated(p, p.dedup_key)
            else:
                call = await self._caller.call(
                    p.candidates, p.request, deadline=p.deadline, tenant=p.prompt.tenant
                )
        except CallFailed as failed:
            out = self._failed(p.rec, p.prompt, failed)
            out.model_label = p.prompt.model
            return out
        if call.candidate.fallback and not shared:
            self._metrics.fallbacks.labels(p.prompt.model).inc()
        out = self._answered(p.rec, p.prompt, call, shared=shared)
        out.model_label = p.prompt.model
        return out

    def _answered(
        self, rec: InputRecord, prompt: Prompt, call: CallResult, *, shared: bool
    ) -> Outcome:
        res, cand, row = call.result, call.candidate, call.candidate.row
        if shared:
            cost = 0.0  # charged on the call that ran
        else:
            cost = round(
                res.input_tokens / 1000 * row.input_cost_per_1k
                + res.output_tokens / 1000 * row.output_cost_per_1k,
                8,
            )
        comp = Completion(
            id=prompt.id,
            model=prompt.model,
            status="ok",
            metadata=prompt.metadata,
            text=res.text,
            finish_reason=res.finish_reason,
            provider=cand.provider,
            upstream_model=cand.upstream_model,
            endpoint_name=cand.endpoint_name,
            usage=Usage(
                input_tokens=res.input_tokens, output_tokens=res.output_tokens, cost_usd=cost
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
        """One provider call for identical requests; the others share its answer (or error)."""
        assert self._dedup is not None
        led = False

        async def lead() -> CallResult:
            nonlocal led
            led = True
            if p.trace is not None and self._tracing is not None:
                self._tracing.lead(key)
            return await self._caller.call(
                p.candidates, p.request, deadline=p.deadline, tenant=p.prompt.tenant
            )

        try:
            answer = await self._dedup.run(key, lead, _result_size)
        except CallFailed as failed:
            if not led:  # a follower: the leader's error, marked as shared
                if p.trace is not None:
                    self._traced_follower(p.trace, key)
                raise CallFailed(failed.error, 0, failed.candidate, shared=True) from None
            raise
        if answer[1] and p.trace is not None:
            self._traced_follower(p.trace, key)
        return answer

    def _failed(self, rec: InputRecord, prompt: Prompt, failed: CallFailed) -> Outcome:
        err, cand = failed.error, failed.candidate
        comp = Completion(
            id=prompt.id,
            model=prompt.model,
            status="error",
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
    def _completion(self, rec: InputRecord, comp: Completion) -> Outcome:
        return Outcome(
            topic=self._s.completions_topic,
            value=encode(comp),
            key=rec.key,
            headers=_headers_out(rec),
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
    ) -> Outcome:
        comp = Completion(
            id=request_id,
            model=model,
            status="error",
            metadata=metadata,
            queue_ms=self._queue_ms(rec),
            error=ErrorInfo(type=_snake(etype), message=message, retryable=False),
        )
        return self._completion(rec, comp)

    def _rejected(self, rec: InputRecord, rej: Rejected) -> Outcome:
        if not rej.dlq and rej.request_id is not None:
            return self._error(
                rec, rej.request_id, rej.model, rej.metadata, rej.reason, rej.message
            )
        return self.dead_letter(rec, rej.reason, rej.message)

    def dead_letter(self, rec: InputRecord, reason: str, message: str) -> Outcome:
        headers = list(rec.headers or [])
        headers += [
            ("llm_worker.reason", reason.encode()),
            ("llm_worker.error", message[:1000].encode("utf-8", "replace")),
            ("llm_worker.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
        ]
        return Outcome(
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
        out: Outcome | None = None
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
            out = self.dead_letter(rec, "internal_error", message)
        if self._tracing is not None:  # the message's own span was lost with the bug
            self._traced(self._tracing.start_message(rec), out)
        return out


def _result_size(call: CallResult) -> int:
    return len(call.result.text) + 256


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
