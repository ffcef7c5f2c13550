"""Lean spans for the worker's three spans a message, and the processor that exports them.

Why: at 10% sampling the SDK's span machinery was most of what tracing cost the worker's CPU
(docs/operations.md, "Tracing"). Per span, the SDK's `Span` builds a `BoundedAttributes` (a lock
and a recursive validation per attribute), takes a lock per `set_attribute`, copies itself into
a `ReadableSpan` when it ends; its `BatchSpanProcessor` then takes a lock and notifies a
condition per span. A sampled message cost about 150 µs of CPU in all.

`LeanSpan` is an OpenTelemetry API `Span` (so `trace.use_span`, `get_current_span`,
`set_span_in_context` and W3C propagation work with it as with the SDK's) and an SDK
`ReadableSpan` (so any `SpanProcessor`/`SpanExporter`, the in-memory one of the tests included,
reads it as it reads the SDK's): attributes are a plain dict, bounded and cut as the SDK's
`SpanLimits` say (the oldest attribute goes when a new one comes to a full span, string values
and the strings of arrays are cut to the value length); events and links are the SDK's own
classes with the same bounds. It is handed to the processors as it is when it ends: nothing
changes it after that (every setter is a no-op on an ended span). It has no lock: the worker's
spans are made and changed on its event loop thread only; the exporter's thread reads them
once they have ended.

`LeanTracer` makes them for a `TracerProvider` whose sampler is `always_on` or the default
`parentbased_always_on` (the worker's: its head sampler (`ops.sampling`) decides before any
span exists), with the provider's resource, limits, id generator and span processors;
`lean_tracer` gives None for any other sampler, and the SDK's tracer is used.

`SpanQueue` replaces the SDK's `BatchSpanProcessor`: `on_end` appends to a bounded deque (no
lock, no notify); its thread wakes when a batch is full (one `Event.set` a batch) or every
`OTEL_BSP_SCHEDULE_DELAY` ms, and exports in batches of `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`. A
span that finds `OTEL_BSP_MAX_QUEUE_SIZE` spans waiting is dropped and counted (`dropped`, a
warning at the first). `force_flush` and `shutdown` export what is queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from time import time_ns
from typing import Any, cast

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes, _clean_attribute_value
from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanProcessor,
    TracerProvider,
    _is_valid_link,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

__all__ = ["Fixed", "LeanSpan", "LeanTracer", "SpanQueue", "lean_tracer"]

log = logging.getLogger("llm_worker.tracing")

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NOT_SAMPLED_RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_UNSET = Status(StatusCode.UNSET)


class Fixed:
    """Attributes that many spans carry the same (a topic's, an endpoint's), cleaned and
    bounded once (`LeanTracer.fixed`): a lean span starts with a copy of them, and the
    exporter's encoder writes them once (`encoded`) for all. `clean` is False when the span
    limits cut the group itself (then each span takes them one by one, as any others)."""

    __slots__ = ("attrs", "clean", "encoded")

    def __init__(self, attrs: dict[str, types.AnyValue], clean: bool) -> None:
        self.attrs = attrs
        self.clean = clean
        self.encoded: bytes | None = None
        """Set by the encoder (`ops.otlp_export`) the first time."""


class LeanSpan(trace_api.Span, ReadableSpan):
    """A recording span: see the module's docstring."""

    # what every span starts with (immutable: replaced, never changed in place)
    _end_time: int | None = None
    _events: Sequence[Event] = ()
    _links: Sequence[Link] = ()
    _status = _UNSET
    _instrumentation_info = None
    _dropped = 0
    _fixed: Fixed | None = None
    """The `Fixed` attributes it started with, while they are its first ones, unchanged."""

    def __init__(
        self,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
    ) -> None:
        # ReadableSpan's fields, set here rather than through its __init__ (what it reads)
        self._name = name
        self._context = context
        self._kind = kind
        self._parent = parent
        self._start_time: int | None = None
        self._attributes: dict[str, types.AnyValue] = {}
        self._resource = tracer.resource
        self._instrumentation_scope = tracer.scope
        self._tracer = tracer

    def __repr__(self) -> str:
        return f'LeanSpan(name="{self._name}", context={self._context})'

    @property
    def dropped_attributes(self) -> int:
        return self._dropped

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # (never None here)

    def _put(self, key: str, value: types.AnyValue) -> None:
        """One attribute, cleaned and bounded as the SDK's `BoundedAttributes` does."""
        tracer = self._tracer
        t = type(value)
        if t is str:
            cut = tracer.value_length
            if cut is not None and len(value) > cut:  # type: ignore[arg-type]
                value = value[:cut]  # type: ignore[index]
        elif t is tuple and all(type(x) is str for x in cast(tuple[Any, ...], value)):
            cut = tracer.value_length  # (a tuple of strings: the finish reasons)
            strings = cast(tuple[str, ...], value)
            if cut is not None and any(len(x) > cut for x in strings):
                value = tuple(x[:cut] for x in strings)
        elif t is not int and t is not float and t is not bool:
            value = _clean_attribute_value(value, tracer.value_length)
        if not key or type(key) is not str:
            self._dropped += 1
            return
        attrs = self._attributes
        if key in attrs:
            del attrs[key]
            self._fixed = None  # its attributes are no longer the first ones, as they were
        elif tracer.max_attributes is not None and len(attrs) >= tracer.max_attributes:
            self._dropped += 1
            if not attrs:  # a limit of 0
                return
            del attrs[next(iter(attrs))]
            self._fixed = None
        attrs[key] = value

    def _update(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """`_put` of each pair: the usual case (a str key not yet there, a str, int, float or
        bool value, room left) written out here, anything else through `_put`."""
        tracer = self._tracer
        cut = tracer.value_length
        room = tracer.max_attributes
        attrs = self._attributes
        for key, value in attributes.items():
            t = type(value)
            if (
                type(key) is not str
                or not key
                or key in attrs
                or (room is not None and len(attrs) >= room)
                or (t is not str and t is not int and t is not float and t is not bool)
            ):
                self._put(key, value)
            elif t is str and cut is not None and len(value) > cut:  # type: ignore[arg-type]
                attrs[key] = value[:cut]  # type: ignore[index]
            else:
                attrs[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            self._update(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is None:
            self._put(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        limits = self._tracer.limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is not None or not _is_valid_link(context, attributes):
            return
        limits = self._tracer.limits
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's: an OK status is final, UNSET changes nothing."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        cls = type(exception)
        module = cls.__module__
        attrs: dict[str, types.AnyValue] = {
            "exception.type": (
                f"{module}.{cls.__qualname__}"
                if module and module != "builtins"
                else cls.__qualname__
            ),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        for on_end in self._tracer.enders():  # as it is: nothing changes it any more
            on_end(self)


class _Cleaning:
    """What `LeanSpan._update` reads and writes: attributes cleaned and bounded without a span
    object (`LeanTracer.fixed`)."""

    __slots__ = ("_attributes", "_dropped", "_fixed", "_tracer")

    def __init__(self, tracer: LeanTracer) -> None:
        self._tracer = tracer
        self._attributes: dict[str, types.AnyValue] = {}
        self._dropped = 0
        self._fixed: Fixed | None = None

    def _put(self, key: str, value: types.AnyValue) -> None:
        LeanSpan._put(self, key, value)  # type: ignore[arg-type]


_PARENT_BASED_ALWAYS_ON = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]


class LeanTracer(trace_api.Tracer):
    """Makes `LeanSpan`s for `provider` (see `lean_tracer`)."""

    def __init__(
        self,
        provider: TracerProvider,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        *,
        parent_based: bool,
    ) -> None:
        sdk = provider.get_tracer(name, version, schema_url)
        self.scope = sdk._instrumentation_scope  # type: ignore[attr-defined]
        self.resource = provider.resource
        self.limits = provider._span_limits
        self.max_attributes: int | None = self.limits.max_span_attributes
        self.value_length: int | None = self.limits.max_span_attribute_length
        self._processor = provider._active_span_processor
        self._seen: tuple[SpanProcessor, ...] = ()
        self._starts: tuple[Any, ...] = ()
        self._ends: tuple[Any, ...] = ()
        self._ids = provider.id_generator
        self._parent_based = parent_based

    def _processors(self) -> None:
        """The provider's span processors' `on_start` (those that do something) and `on_end`,
        taken again when a processor is added."""
        procs: tuple[SpanProcessor, ...] = self._processor._span_processors
        self._seen = procs
        self._starts = tuple(p.on_start for p in procs if type(p) not in _NOOP_ON_START)
        self._ends = tuple(p.on_end for p in procs)

    def enders(self) -> tuple[Any, ...]:
        if self._processor._span_processors is not self._seen:
            self._processors()
        return self._ends

    def fixed(self, attributes: Mapping[str, types.AnyValue]) -> Fixed:
        """`attributes` as a `Fixed` group for `start_span`."""
        probe = _Cleaning(self)
        LeanSpan._update(probe, attributes)  # type: ignore[arg-type]  # (what it reads)
        if probe._dropped or len(probe._attributes) != len(attributes):
            return Fixed(dict(attributes), False)
        return Fixed(probe._attributes, True)

    def start_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        *,
        fixed: Fixed | None = None,
    ) -> trace_api.Span:
        """The API's, and `fixed`: attributes the span starts with, before `attributes`."""
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        ids = self._ids
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            random = parent.trace_flags.random_trace_id
            state = parent.trace_state
            if self._parent_based and not parent.trace_flags.sampled:
                flags = _NOT_SAMPLED_RANDOM if random else _NOT_SAMPLED
                ctx = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
                return NonRecordingSpan(ctx)
        else:
            parent = state = None
            trace_id = ids.generate_trace_id()
            random = ids.is_trace_id_random()
        flags = _SAMPLED_RANDOM if random else _SAMPLED
        ctx = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        span = LeanSpan(self, name, ctx, parent, kind)
        if fixed is not None:
            if fixed.clean:
                span._attributes = fixed.attrs.copy()
                span._fixed = fixed
            else:
                span._update(fixed.attrs)
        if attributes:
            span._update(attributes)
        for link in links or ():
            span.add_link(link.context, link.attributes)
        span._start_time = start_time if start_time is not None else time_ns()
        if self._processor._span_processors is not self._seen:
            self._processors()
        for on_start in self._starts:
            on_start(span, parent_context=context)
        return span

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace_api.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace_api.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


def lean_tracer(
    provider: Any,
    name: str = "llm_worker",
    version: str | None = None,
    schema_url: str | None = None,
) -> LeanTracer | None:
    """A `LeanTracer` for an SDK `provider` that records every span it is asked for
    (`always_on`, or `parentbased_always_on`: then a span under a parent that is not sampled is
    not recorded, as the SDK decides); None for any other provider or sampler."""
    if not isinstance(provider, TracerProvider):
        return None
    sampler = provider.sampler
    if sampler is ALWAYS_ON:
        return LeanTracer(provider, name, version, schema_url, parent_based=False)
    if sampler.get_description() == _PARENT_BASED_ALWAYS_ON:  # type: ignore[no-untyped-call]
        return LeanTracer(provider, name, version, schema_url, parent_based=True)
    return None


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive integer: %d", name, raw, default)
        return default
    return value


class SpanQueue(SpanProcessor):
    """Ended spans queued for `exporter`, exported from one thread: see the module's docstring.
    Its bounds default to the `OTEL_BSP_*` variables, as the SDK's `BatchSpanProcessor`."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        schedule_delay_s: float | None = None,
        max_queue: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        self._exporter = exporter
        self._delay_s = (
            schedule_delay_s
            if schedule_delay_s is not None
            else _env_count("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        )
        self._max_queue = max_queue or _env_count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._max_batch = min(
            max_batch or _env_count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._max_queue
        )
        self._queue: deque[ReadableSpan] = deque()
        self.dropped = 0
        """Spans that found the queue full, never exported."""
        self._wake = threading.Event()
        self._flushed: list[threading.Event] = []
        self._flush_lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llm-worker-spans", daemon=True)
        self._thread.start()

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        pass  # (not even called for `LeanSpan`s)

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or not span.context.trace_flags.sampled:  # type: ignore[union-attr]
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "OTLP span queue full (%d spans): spans are dropped (and counted) until "
                    "the exporter catches up",
                    self._max_queue,
                )
            return
        queue.append(span)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def _export_all(self) -> None:
        queue = self._queue
        while queue:
            batch = []
            with contextlib.suppress(IndexError):
                for _ in range(self._max_batch):
                    batch.append(queue.popleft())
            try:
                self._exporter.export(batch)
            except Exception:  # an exporter's bug must not stop the thread
                log.exception("the span exporter failed")

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._flush_lock:
                flushed, self._flushed = self._flushed, []
            self._export_all()
            for done in flushed:
                done.set()
            if self._stopping:
                self._export_all()  # what came while it exported
                return

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what is queued (on the processor's thread); False if it took longer than
        `timeout_millis`."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        with self._flush_lock:
            self._flushed.append(done)
        self._wake.set()
        return done.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        if self.dropped:
            log.warning("OTLP span queue: %d spans were dropped in all", self.dropped)
        self._exporter.shutdown()


_NOOP_ON_START = frozenset((SpanProcessor, SimpleSpanProcessor, BatchSpanProcessor, SpanQueue))
"""Span processors whose `on_start` does nothing: `LeanTracer` does not call it."""
