"""OpenTelemetry traces of the path of one message, following the messaging and GenAI
semantic conventions.

Per message: a CONSUMER span `process {topic}` that continues the input record's W3C
`traceparent`/`tracestate` (or starts a trace), a CLIENT span `chat {model}` per provider
attempt under it, and a PRODUCER span `send {topic}` for the outcome record, ended when Kafka
acknowledges the record. The outcome record's `traceparent`/`tracestate` carry the PRODUCER
span's context (the CONSUMER span's when the message is not sampled), so a consumer of
`llm_completions` continues the same trace. Retries, fallbacks, rate-limit waits, circuit
breaker skips and holds (a retry backoff, a wait for a half-open probe) are events on the
message's span; a deduplicated message links to the span of
the message whose call answered it.

Off unless an OTLP endpoint is configured (`ops.otelconf`): then no `Tracing` exists, the
message path holds `NO_TRACING` (a `MessageTracer` that does nothing) and makes no span objects
at all. When on, a message that is not
sampled costs its CONSUMER span's sampling decision and one `traceparent` header: nothing
else is built for it.

What spans never carry: secrets (API keys, the provider's echoes of them), and what a prompt
says unless `LLM_WORKER_TRACE_CONTENT=true`: its text and the answer's
(`gen_ai.input.messages` / `gen_ai.output.messages`), its stop sequences
(`gen_ai.request.stop_sequences`), its metadata and tenant (never). What a prompt names is kept:
its id and model (bounded by validation: 128 and 256 characters), its sampling numbers.

The spans are the worker's own (`ops.leanspans`: API spans the SDK's processors and exporters
read, without the SDK span's locks and copies) and go to its `SpanQueue` rather than the SDK's
`BatchSpanProcessor`; the attributes every span of a topic (an endpoint) carries the same are
cleaned once (`Fixed`). A provider given with another sampler (tests) gets the SDK's spans.

Every span is bounded: the SDK's `SpanLimits` are set from `ops.otelconf.SpanBounds` (each
attribute value at most `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` characters, 4096 by default; 128
attributes, events and links), and the stop sequences traced with content on are cut so that
all of them together fit one value's length.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import ProviderError
from llm_worker.registry.resolve import Candidate

from ..config import ConfigError, Settings
from ..messages import Completion
from ..records import InputRecord, Outcome
from ..spans import MessageTrace
from .genai import Servers, call_attributes, endpoint_attributes, result_attributes
from .leanspans import Fixed, SpanQueue, lean_tracer
from .otelconf import ATTRIBUTE_VALUE_LENGTH, OtelConfig, SpanBounds, otel_config
from .otlp_export import OtlpHttpExporter
from .sampling import HeadSampler, parse_traceparent, unsampled_traceparent

__all__ = ["NO_TRACING", "MessageTrace", "MessageTracer", "NoTracing", "Sending", "Tracing"]

log = logging.getLogger("llm_worker.tracing")

LEADERS_KEPT = 4096
"""Span contexts of dedup leaders kept for followers to link to (oldest dropped first)."""

_ROOT = Context()  # a parent with no span: a message without `traceparent` starts a trace
_W3C = TraceContextTextMapPropagator()


Headers = list[tuple[str, bytes]]


class Sending(Protocol):
    """What the tracer reads of an outcome record about to be built."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers | None: ...
    @property
    def completion(self) -> Completion | None: ...
    @property
    def dlq_reason(self) -> str | None: ...


class MessageTracer(Protocol):
    """The spans of the message path (`worker.pipeline`): `Tracing`, or `NO_TRACING` when off."""

    def start_message(self, rec: InputRecord) -> MessageTrace: ...

    def activate(self, mt: MessageTrace) -> contextlib.AbstractContextManager[Any]: ...

    def abandon(self, mt: MessageTrace, why: str) -> None: ...

    def finish_message(
        self, mt: MessageTrace, outcome: Sending
    ) -> tuple[MessageTrace | None, Headers | None]: ...

    def lead(self, key: str) -> None: ...

    def follow(self, mt: MessageTrace, key: str) -> None: ...


_UNTRACED = MessageTrace(None)
_IDLE = contextlib.nullcontext()


class _Current:
    """`trace.use_span(span, end_on_exit=False, record_exception=False,
    set_status_on_exception=False)` without its generator: `span` is the current span inside."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


class NoTracing:
    """Tracing off: no spans, and the input's `traceparent`/`tracestate` go on as they are."""

    def start_message(self, rec: InputRecord) -> MessageTrace:
        return _UNTRACED

    def activate(self, mt: MessageTrace) -> contextlib.AbstractContextManager[Any]:
        return _IDLE

    def abandon(self, mt: MessageTrace, why: str) -> None:
        pass

    def finish_message(self, mt: MessageTrace, outcome: Sending) -> tuple[None, Headers | None]:
        return None, outcome.headers

    def lead(self, key: str) -> None:
        pass

    def follow(self, mt: MessageTrace, key: str) -> None:
        pass


NO_TRACING = NoTracing()


def _text_key(key: bytes | None) -> str | None:
    if not key or len(key) > 256:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _with_context(headers: list[tuple[str, bytes]] | None, ctx: SpanContext) -> list[Any]:
    """`headers` with `traceparent`/`tracestate` replaced by `ctx` (W3C Trace Context)."""
    out: list[tuple[str, bytes]] = [
        (k, v) for k, v in headers or () if k != "traceparent" and k != "tracestate"
    ]
    flags = int(ctx.trace_flags)
    out.append(("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}".encode()))
    if ctx.trace_state:
        out.append(("tracestate", ctx.trace_state.to_header().encode()))
    return out


def _exporter(cfg: OtelConfig) -> SpanExporter:
    headers = cfg.headers or None
    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'llm-worker[grpc]' (or use http/protobuf)"
            ) from None
        return GrpcExporter(endpoint=cfg.endpoint, headers=headers)  # type: ignore[no-any-return]
    try:
        return OtlpHttpExporter(
            cfg.endpoint,
            cfg.headers,
            compression=cfg.compression or None,
            json=cfg.protocol == "http/json",
        )
    except ValueError as exc:  # names the header, never its value
        raise ConfigError(str(exc)) from None


def span_limits(bounds: SpanBounds) -> SpanLimits:
    """The SDK's limits, every one given (the SDK reads `os.environ` for any left out; the
    worker's `OTEL_*` variables may come from its config file too)."""
    return SpanLimits(
        max_attributes=bounds.attributes,
        max_events=bounds.events,
        max_links=bounds.links,
        max_span_attributes=bounds.span_attributes,
        max_event_attributes=bounds.event_attributes,
        max_link_attributes=bounds.link_attributes,
        max_attribute_length=bounds.value_length,
        max_span_attribute_length=bounds.span_value_length,
    )


class Tracing:
    def __init__(
        self,
        provider: TracerProvider,
        *,
        group_id: str,
        trace_content: bool = False,
        sampler: HeadSampler | None = None,
        value_length: int = ATTRIBUTE_VALUE_LENGTH,
    ) -> None:
        self.provider = provider
        self.sampler = sampler if sampler is not None else HeadSampler()
        # the worker's own spans (`ops.leanspans`) when the provider records every span
        self._lean = lean_tracer(provider)
        self._tracer: trace.Tracer = self._lean or provider.get_tracer("llm_worker")
        self._group = group_id
        self._content = trace_content
        self._value_length = value_length
        self._process: dict[str, tuple[str, Fixed]] = {}
        """Per input topic: its CONSUMER span's name and the attributes all of them carry."""
        self._send: dict[str, tuple[str, Fixed]] = {}
        """Per outcome topic: the same of its PRODUCER span."""
        self._chat_names: dict[str, str] = {}
        self._endpoints: dict[tuple[Any, ...], Fixed] = {}
        """Per endpoint (and fallback, server): what its CLIENT spans all carry."""
        self._servers = Servers()
        self._leaders: dict[str, SpanContext] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """The SDK set up from the `OTEL_*` variables, or None when tracing is off."""
        cfg = otel_config(settings.otel_env)
        if not cfg.enabled:
            return None
        # the head sampler decides (`ops.sampling`); the SDK records every span started
        provider = TracerProvider(
            resource=Resource.create(cfg.resource),
            sampler=ALWAYS_ON,
            span_limits=span_limits(cfg.limits),
        )
        provider.add_span_processor(SpanQueue(_exporter(cfg)))
        log.info("tracing on: %s", cfg)
        return cls(
            provider,
            group_id=settings.group_id,
            trace_content=settings.trace_content,
            sampler=HeadSampler(cfg.sampler, cfg.sampler_arg),
            value_length=cfg.limits.span_value_length,
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Export what is left (blocking, up to about `timeout_s`) and stop."""
        try:
            self.provider.force_flush(int(timeout_s * 1000))
        finally:
            self.provider.shutdown()

    # -- the message ---------------------------------------------------------------------
    def start_message(self, rec: InputRecord) -> MessageTrace:
        """The CONSUMER span of `rec`, continuing its `traceparent` if it has one; no span
        at all when the message is not sampled."""
        tp = ts = None
        if rec.headers:
            for k, v in rec.headers:
                if k == "traceparent":
                    tp = v
                elif k == "tracestate":
                    ts = v
        parent = parse_traceparent(tp) if tp else None
        if not self.sampler.sampled(parent):
            if parent is not None and not parent.sampled:
                return MessageTrace(None, None, tp)  # carried on as it is
            return MessageTrace(None, unsampled_traceparent(parent))
        context = _ROOT
        if parent is not None:
            carrier = {"traceparent": tp.decode("ascii")}  # type: ignore[union-attr]
            if ts:
                carrier["tracestate"] = ts.decode("latin-1")
            context = _W3C.extract(carrier, _ROOT)
        process = self._process.get(rec.topic)
        if process is None:
            process = self._process[rec.topic] = (
                f"process {rec.topic}",
                self._fixed(
                    {
                        "messaging.system": "kafka",
                        "messaging.operation.type": "process",
                        "messaging.operation.name": "process",
                        "messaging.destination.name": rec.topic,
                        "messaging.consumer.group.name": self._group,
                    }
                ),
            )
        attrs: dict[str, Any] = {
            "messaging.destination.partition.id": str(rec.partition),
            "messaging.kafka.offset": rec.offset,
        }
        key = _text_key(rec.key)
        if key is not None:
            attrs["messaging.kafka.message.key"] = key
        return MessageTrace(self._start(*process, context, SpanKind.CONSUMER, attrs))

    def _fixed(self, attrs: dict[str, Any]) -> Fixed:
        return self._lean.fixed(attrs) if self._lean is not None else Fixed(attrs, False)

    def _start(
        self,
        name: str,
        fixed: Fixed,
        context: Context | None,
        kind: SpanKind,
        attrs: dict[str, Any],
    ) -> Span:
        """A span with `fixed` attributes, then `attrs`."""
        if self._lean is not None:
            return self._lean.start_span(name, context, kind, attrs, fixed=fixed)
        return self._tracer.start_span(name, context, kind, {**fixed.attrs, **attrs})

    def activate(self, mt: MessageTrace) -> contextlib.AbstractContextManager[Any]:
        """Make the message's span the current one (its provider attempts become children)."""
        if mt.process is None or not mt.recording:
            return _IDLE
        return _Current(mt.process)

    def finish_message(
        self, mt: MessageTrace, outcome: Sending
    ) -> tuple[MessageTrace, Headers | None]:
        """End the message's span with its outcome; start the outcome record's PRODUCER span.
        What the outcome record carries: `mt`, and the headers with that span's context."""
        span = mt.process
        if span is None:  # not sampled
            if mt.traceparent is not None:  # (its tracestate, if any, goes on as it is)
                kept = [(k, v) for k, v in outcome.headers or () if k != "traceparent"]
                return mt, [*kept, ("traceparent", mt.traceparent)]
            return mt, outcome.headers  # the input's traceparent/tracestate, as they are
        if not mt.recording:  # the SDK's sampler dropped it (a provider given by a test)
            return mt, _with_context(outcome.headers, span.get_span_context())
        c = outcome.completion
        # what the outcome was, in as few attributes as say it (each one costs on every span)
        if c is None:
            span.set_attribute("error.type", outcome.dlq_reason or "dlq")
            span.set_status(StatusCode.ERROR, "dead-lettered")
        else:
            attrs: dict[str, Any] = {
                "llm_worker.request.id": c.id,
                "llm_worker.model": c.model,
                "llm_worker.attempts": c.attempts,
            }
            if c.deduplicated:
                attrs["llm_worker.deduplicated"] = True
            if c.fallback_used:
                attrs["llm_worker.fallback_used"] = True
            if c.error is not None:
                attrs["error.type"] = c.error.type
                span.set_status(StatusCode.ERROR, c.error.type)
            span.set_attributes(attrs)
        span.end()
        sending = self._send.get(outcome.topic)
        if sending is None:
            sending = self._send[outcome.topic] = (
                f"send {outcome.topic}",
                self._fixed(
                    {
                        "messaging.system": "kafka",
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "send",
                        "messaging.destination.name": outcome.topic,
                    }
                ),
            )
        key = _text_key(outcome.key)
        send = self._start(
            *sending,
            trace.set_span_in_context(span, _ROOT),
            SpanKind.PRODUCER,
            {} if key is None else {"messaging.kafka.message.key": key},
        )
        mt.send = send
        return mt, _with_context(outcome.headers, send.get_span_context())

    def abandon(self, mt: MessageTrace, why: str) -> None:
        """The message was cancelled (shutdown, lost partition): end its span saying so."""
        if mt.process is not None and mt.recording:
            mt.process.set_attribute("error.type", why)
            mt.process.set_status(StatusCode.ERROR, why)
            mt.process.end()

    @staticmethod
    def delivered(outcome: Outcome) -> None:
        """Kafka acknowledged the outcome record: its PRODUCER span ends."""
        mt = outcome.trace
        if mt is not None and mt.send is not None:
            mt.send.end()
            mt.send = None

    # -- dedup -----------------------------------------------------------------------------
    def lead(self, key: str) -> None:
        """The current message calls the provider for `key`: followers will link to it."""
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and ctx.trace_flags.sampled:
            leaders = self._leaders
            leaders.pop(key, None)
            if len(leaders) >= LEADERS_KEPT:
                del leaders[next(iter(leaders))]
            leaders[key] = ctx

    def follow(self, mt: MessageTrace, key: str) -> None:
        """`mt` got the answer of the message that led `key` (in flight or from the window)."""
        if mt.process is not None and mt.recording:
            leader = self._leaders.get(key)
            if leader is not None:
                mt.process.add_link(leader, {"llm_worker.dedup": "answered_by"})

    # -- provider attempts (through `ops.attempts.AttemptObserver`) ------------------------
    def attempt_started(
        self,
        cand: Candidate,
        target: Target,
        request: ProviderRequest,
        attempt: int,
        retry_of: ProviderError | None,
    ) -> Span | None:
        """A CLIENT span for the attempt, under the message's span if that is recorded."""
        parent = trace.get_current_span()
        if not parent.is_recording():
            return None
        name = cand.endpoint_name
        if retry_of is not None:
            parent.add_event(
                "llm_worker.retry",
                {"error.type": retry_of.type, "llm_worker.endpoint": name, "attempt": attempt},
            )
        if cand.fallback and attempt == 1:
            parent.add_event("llm_worker.fallback", {"llm_worker.endpoint": name})
        server = self._servers.of(target)
        key = (name, cand.fallback, target.provider, target.model, server)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= LEADERS_KEPT:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._fixed(endpoint_attributes(cand, target, server))
        attrs = call_attributes(
            target,
            request,
            attempt,
            retry_of,
            content=self._content,
            value_length=self._value_length,
        )
        chat = self._chat_names.get(target.model)
        if chat is None:
            if len(self._chat_names) >= LEADERS_KEPT:
                self._chat_names.clear()
            chat = self._chat_names[target.model] = f"chat {target.model}"
        return self._start(chat, endpoint, None, SpanKind.CLIENT, attrs)

    def attempt_finished(
        self,
        span: Span,
        target: Target,
        result: ProviderResult | None,
        error: ProviderError | None,
        cancelled: bool = False,
    ) -> None:
        if cancelled:
            span.set_attribute("error.type", "cancelled")
            span.set_status(StatusCode.ERROR, "cancelled")
        else:
            span.set_attributes(result_attributes(target, result, error, content=self._content))
            if error is not None:
                span.set_status(StatusCode.ERROR, error.type)
        span.end()

    @staticmethod
    def event(name: str, cand: Candidate, attrs: dict[str, Any]) -> None:
        """An event on the current message's span (a breaker skip, a rate-limit wait)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, {"llm_worker.endpoint": cand.endpoint_name, **attrs})
