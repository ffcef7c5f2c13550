"""The worker's lean spans (`ops.leanspans`) against the SDK's, and its span queue: bounded,
drops counted, a wake per full batch, everything exported on flush and shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from llm_worker.devkit.bench.telemetry import _one_call
from llm_worker.worker.ops.leanspans import LeanSpan, LeanTracer, SpanQueue, lean_tracer
from llm_worker.worker.ops.otlp_export import encode_request
from llm_worker.worker.ops.tracing import Tracing
from llm_worker.worker.records import InputRecord, Outcome

UNSAMPLED_PARENT = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))


def _both(limits: SpanLimits) -> tuple[list[Any], InMemorySpanExporter, InMemorySpanExporter]:
    """An SDK tracer and a lean one, each with its in-memory exporter, under `limits`."""
    tracers, exporters = [], []
    for lean in (False, True):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ALWAYS_ON, span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracers.append(lean_tracer(provider) if lean else provider.get_tracer("llm_worker"))
        exporters.append(exporter)
    return tracers, exporters[0], exporters[1]


def _script(tracer: Any) -> None:
    """Every way the worker (and a caller of the API) changes a span, limits reached."""
    span = tracer.start_span(
        "process p", kind=SpanKind.CONSUMER, attributes={"a": "x" * 10, "n": 1, "": "bad"}
    )
    span.set_attribute("b", ["long value", "ok", "y" * 9])
    span.set_attribute("t", ("long value", "ok"))  # a tuple of strings: cut as a list is
    span.set_attributes({"a": "again", "c": 2.5, "d": True, "e": None, "f": {"k": "v" * 20}})
    span.set_attribute("g", object())  # not an attribute value: its str, as the SDK does
    span.set_status(StatusCode.ERROR, "first")
    span.set_status(StatusCode.UNSET)  # changes nothing
    span.add_event("e1", {"k": "z" * 20})
    span.add_link(UNSAMPLED_PARENT, {"why": "linked"})
    span.update_name("process q")
    span.end()
    span.set_attribute("after", "end")  # ignored: the span has ended
    span.set_status(Status(StatusCode.OK))
    span.end()  # once only
    ok = tracer.start_span("ok")
    ok.set_status(Status(StatusCode.OK))
    ok.set_status(StatusCode.ERROR, "too late")  # OK is final
    ok.end()


def _as_dicts(spans: Sequence[ReadableSpan]) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "attributes": dict(s.attributes or {}),
            "dropped": (s.dropped_attributes, s.dropped_events, s.dropped_links),
            "events": [(e.name, dict(e.attributes or {})) for e in s.events],
            "links": [(link.context, dict(link.attributes or {})) for link in s.links],
            "status": (s.status.status_code, s.status.description),
        }
        for s in spans
    ]


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_span_attributes=4, max_attribute_length=5, max_span_attribute_length=6),
        SpanLimits(max_span_attributes=0, max_events=0, max_links=0),
        SpanLimits(max_span_attributes=128, max_attribute_length=4096),
    ],
)
def test_the_same_spans_as_the_sdk(limits: SpanLimits) -> None:
    (sdk_tracer, lean), sdk, ours = _both(limits)
    assert isinstance(lean, LeanTracer)
    _script(sdk_tracer)
    _script(lean)
    assert all(isinstance(s, LeanSpan) for s in ours.get_finished_spans())
    assert _as_dicts(ours.get_finished_spans()) == _as_dicts(sdk.get_finished_spans())


def test_parents_and_the_current_span() -> None:
    (_, lean), _, exporter = _both(SpanLimits())
    root = lean.start_span("root")
    assert root.get_span_context().trace_flags.sampled
    with trace.use_span(root, end_on_exit=True):
        child = lean.start_span("child")  # under the current span
        assert trace.get_current_span() is root
        child.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["child"].parent == root.get_span_context()
    assert spans["root"].parent is None
    assert spans["child"].context.trace_id == root.get_span_context().trace_id


def test_parent_based_does_not_record_under_an_unsampled_parent() -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    lean = lean_tracer(provider)
    assert lean is not None
    span = lean.start_span("x", trace.set_span_in_context(NonRecordingSpan(UNSAMPLED_PARENT)))
    assert isinstance(span, NonRecordingSpan) and not span.is_recording()
    ctx = span.get_span_context()
    assert ctx.trace_id == UNSAMPLED_PARENT.trace_id and not ctx.trace_flags.sampled
    assert ctx.span_id != UNSAMPLED_PARENT.span_id
    # always_on records it all the same, as the SDK's tracer would
    always = lean_tracer(TracerProvider(sampler=ALWAYS_ON))
    assert always is not None
    recorded = always.start_span("x", trace.set_span_in_context(NonRecordingSpan(UNSAMPLED_PARENT)))
    assert isinstance(recorded, LeanSpan) and recorded.is_recording()


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, TraceIdRatioBased(0.5), ParentBased(ALWAYS_OFF)])
def test_other_samplers_keep_the_sdk_tracer(sampler: Any) -> None:
    assert lean_tracer(TracerProvider(sampler=sampler)) is None
    assert lean_tracer(trace.NoOpTracerProvider()) is None


class _Gate(SpanExporter):
    """Keeps what it is given; with `closed`, each export waits until the gate opens."""

    def __init__(self, closed: bool = False, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.open = threading.Event()
        if not closed:
            self.open.set()
        self.fail = fail
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.open.wait(10)
        self.batches.append([s.name for s in spans])
        if self.fail:
            raise RuntimeError("an exporter's bug")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True

    @property
    def names(self) -> list[str]:
        return [n for batch in self.batches for n in batch]


def _queued(exporter: SpanExporter, **kw: Any) -> tuple[LeanTracer, SpanQueue]:
    provider = TracerProvider(sampler=ALWAYS_ON)
    queue = SpanQueue(exporter, **kw)
    provider.add_span_processor(queue)
    tracer = lean_tracer(provider)
    assert tracer is not None
    return tracer, queue


def _wait_for(what: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_shutdown_exports_what_is_queued_then_shuts_the_exporter() -> None:
    exporter = _Gate()
    tracer, queue = _queued(exporter, schedule_delay_s=60.0)
    for i in range(5):
        tracer.start_span(f"s{i}").end()
    assert exporter.batches == []  # neither a full batch nor the delay yet
    queue.shutdown()
    assert exporter.names == [f"s{i}" for i in range(5)] and exporter.shut
    tracer.start_span("late").end()  # after shutdown: not queued
    assert exporter.names == [f"s{i}" for i in range(5)]


def test_a_full_batch_is_exported_without_waiting_for_the_delay() -> None:
    exporter = _Gate()
    tracer, queue = _queued(exporter, schedule_delay_s=60.0, max_batch=3)
    for i in range(7):
        tracer.start_span(f"s{i}").end()
    _wait_for(lambda: len(exporter.names) >= 6)
    assert all(len(b) <= 3 for b in exporter.batches)
    queue.shutdown()
    assert exporter.names == [f"s{i}" for i in range(7)]


def test_the_delay_exports_a_partial_batch() -> None:
    exporter = _Gate()
    tracer, queue = _queued(exporter, schedule_delay_s=0.05)
    tracer.start_span("one").end()
    _wait_for(lambda: exporter.names == ["one"])
    queue.shutdown()


def test_force_flush_exports_what_is_queued() -> None:
    exporter = _Gate()
    tracer, queue = _queued(exporter, schedule_delay_s=60.0)
    tracer.start_span("one").end()
    assert queue.force_flush(5000) and exporter.names == ["one"]
    queue.shutdown()
    assert not queue.force_flush(100)  # its thread has stopped


def test_a_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    exporter = _Gate(closed=True)  # the exporter is stuck: nothing leaves the queue
    tracer, queue = _queued(exporter, schedule_delay_s=60.0, max_queue=4, max_batch=2)
    tracer.start_span("first").end()
    tracer.start_span("second").end()  # a full batch: the thread takes them, then waits
    _wait_for(lambda: not queue._queue)
    for i in range(10):
        tracer.start_span(f"q{i}").end()
    assert queue.dropped == 6  # 4 queued, 6 found it full
    assert sum("spans are dropped" in r.getMessage() for r in caplog.records) == 1  # once
    exporter.open.set()
    queue.shutdown()
    assert exporter.names == ["first", "second", "q0", "q1", "q2", "q3"]
    assert "6 spans were dropped" in caplog.text


def test_an_exporter_that_raises_does_not_stop_the_queue(caplog: pytest.LogCaptureFixture) -> None:
    exporter = _Gate(fail=True)
    tracer, queue = _queued(exporter, schedule_delay_s=60.0)
    tracer.start_span("one").end()
    assert queue.force_flush(5000)
    tracer.start_span("two").end()
    assert queue.force_flush(5000)
    queue.shutdown()
    assert exporter.names == ["one", "two"] and "the span exporter failed" in caplog.text


def test_unsampled_spans_are_not_queued() -> None:
    exporter = _Gate()
    queue = SpanQueue(exporter, schedule_delay_s=60.0)
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(queue)
    provider.get_tracer("t").start_span("off").end()  # the SDK's: a non-recording span
    queue.on_end(
        ReadableSpan("unsampled", SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(0)))
    )
    queue.shutdown()
    assert exporter.names == []


def test_fixed_attributes_are_the_span_s_first_ones_and_encode_as_any_others() -> None:
    (_, lean), _, exporter = _both(SpanLimits(max_span_attributes=6, max_attribute_length=50))
    assert isinstance(lean, LeanTracer)
    fixed = lean.fixed({"a": "1", "b": 2, "cut": "x" * 100})
    assert fixed.clean and fixed.attrs["cut"] == "x" * 50
    too_many = lean.fixed({f"k{i}": i for i in range(10)})
    assert not too_many.clean  # the limits cut the group: each span takes them one by one
    lean.start_span("plain", attributes={"c": 3}, fixed=fixed).end()
    changed = lean.start_span("changed", attributes={"c": 3}, fixed=fixed)
    changed.set_attribute("a", "other")  # no longer the group as it was
    changed.end()
    lean.start_span("evicted", attributes={f"x{i}": i for i in range(4)}, fixed=fixed).end()
    lean.start_span("many", fixed=too_many).end()
    spans = exporter.get_finished_spans()
    by_name: dict[str, Any] = {s.name: s for s in spans}
    assert dict(by_name["plain"].attributes) == {"a": "1", "b": 2, "cut": "x" * 50, "c": 3}
    assert by_name["plain"]._fixed is fixed
    assert dict(by_name["changed"].attributes)["a"] == "other"
    assert by_name["changed"]._fixed is None and by_name["evicted"]._fixed is None
    assert by_name["evicted"].dropped_attributes == 1 and "a" not in by_name["evicted"].attributes
    assert by_name["many"].dropped_attributes == 4
    sdk_bytes = encode_spans(spans).SerializeToString()
    assert encode_request(spans) == sdk_bytes
    assert encode_request(spans) == sdk_bytes  # the group's bytes, kept from the first time


def test_what_tracing_makes_encodes_as_the_sdk_encodes_it() -> None:
    """One message through `Tracing` (CONSUMER, CLIENT, PRODUCER spans) on the worker's
    spans: the exporter's bytes are the SDK encoder's."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, group_id="g1")
    cand, target, request, result, comp = _one_call()
    for key in (b"k", None):
        rec = InputRecord(topic="p", partition=3, offset=7, value=b"{}", key=key)
        mt = tracing.start_message(rec)
        with tracing.activate(mt):
            span = tracing.attempt_started(cand, target, request, 1, None)
            assert span is not None
            tracing.attempt_finished(span, target, result, None)
        draft = Outcome(topic="c", value=b"{}", key=key, headers=None, completion=comp)
        traced, headers = tracing.finish_message(mt, draft)
        Tracing.delivered(
            Outcome(topic="c", value=b"{}", key=key, headers=headers, completion=comp, trace=traced)
        )
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["chat up", "process p", "send c"] * 2
    assert all(isinstance(s, LeanSpan) for s in spans)
    assert all(s._fixed is not None for s in spans)  # each starts with its group
    assert encode_request(spans) == encode_spans(spans).SerializeToString()
    process = dict(spans[1].attributes)
    assert process["messaging.destination.name"] == "p" and process["messaging.kafka.offset"] == 7
    assert process["messaging.consumer.group.name"] == "g1"
    assert process["llm_worker.request.id"] == "r"
