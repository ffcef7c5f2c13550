"""The worker's OTLP encoder against the SDK's (golden: both decoded by the official classes),
and its exporter against a local OTLP/HTTP receiver."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from llm_worker.worker.config import ConfigError, load_settings
from llm_worker.worker.ops import otlp_export
from llm_worker.worker.ops.leanspans import LeanSpan, LeanTracer, lean_tracer
from llm_worker.worker.ops.otelconf import otel_config
from llm_worker.worker.ops.otlp_export import OtlpHttpExporter, encode_json, encode_request
from llm_worker.worker.ops.tracing import Tracing, _exporter

TOKEN = "Bearer s3cr3t-t0ken"
COLLECTOR = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}


class _Kept(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _provider(resource: Resource, kept: _Kept, **kw: Any) -> TracerProvider:
    provider = TracerProvider(resource=resource, **kw)
    provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider


REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1"), ("other", "y")]),
)
LOCAL = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
EVERY_TYPE: dict[str, Any] = {
    "s": "kafka",
    "empty": "",
    "unicode": "prompt \u00e9\u4e2d\U0001f600",
    "long": "x" * 300,  # a two-byte length
    "yes": True,
    "no": False,
    "i": 42,
    "zero": 0,
    "negative": -7,
    "big": 2**62,
    "f": 0.25,
    "f0": 0.0,
    "fneg": -1e300,
    "strs": ["a", "", "\u00e9"],
    "bools": [True, False],
    "ints": [1, -2, 0],
    "floats": [1.5, 0.0],
    "none": [],
}


def _tracer(provider: TracerProvider, lean: bool, *args: Any) -> Any:
    """The SDK's tracer, or (`lean`) the worker's (`ops.leanspans`)."""
    if lean:
        tracer = lean_tracer(provider, *args)
        assert isinstance(tracer, LeanTracer)
        return tracer
    return provider.get_tracer(*args)


def _every_field(links_trace_state: bool, lean: bool = False) -> list[ReadableSpan]:
    """Spans with every field the SDK fills: two resources (one with a schema URL), three
    scopes (name only, name + version + schema URL), a remote and a local parent, events,
    links, statuses, trace state, and dropped attributes, events and links; made by the SDK's
    tracer or (`lean`) the worker's."""
    kept = _Kept()
    limits = SpanLimits(max_span_attributes=20, max_events=2, max_links=1)
    res = Resource({"service.name": "llm-worker", "n": 3, "ok": True, "tags": ("a", "b")})
    one = _provider(res, kept, span_limits=limits)
    other = _provider(Resource({"service.name": "other"}, "https://schema/1"), kept)
    tracer = _tracer(one, lean, "llm_worker", "1.2.3", "https://opentelemetry.io/s/1")
    bare = _tracer(one, lean, "bare")
    link_ctx = REMOTE if links_trace_state else LOCAL
    parent = set_span_in_context(NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span(
        "process prompts",
        parent,
        SpanKind.CONSUMER,
        {**EVERY_TYPE, **{f"extra{i}": i for i in range(4)}},  # 22 attributes: 2 dropped
        links=[Link(link_ctx, {"llm_worker.dedup": "answered_by", "n": 1})],
    ) as span:
        span.add_event("llm_worker.retry", {"error.type": "timeout", "attempt": 2, "w": 0.5})
        span.add_event("no attributes")
        span.add_event("dropped")  # over max_events: the first is dropped
        with tracer.start_as_current_span("chat up", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.OK)
        span.set_status(StatusCode.ERROR, "dead-lettered \u00e9")
    for kind in (SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.PRODUCER):
        bare.start_span(f"k{kind.value}", kind=kind).end()
    _tracer(other, lean, "x").start_span("elsewhere", links=[Link(LOCAL)]).end()
    tracer.start_span("again", set_span_in_context(NonRecordingSpan(LOCAL))).end()
    assert len(kept.spans) == 7
    return kept.spans


@pytest.mark.parametrize("lean", [False, True])
def test_the_same_bytes_as_the_sdks_encoder(lean: bool) -> None:
    spans = _every_field(links_trace_state=False, lean=lean)
    assert all(isinstance(s, LeanSpan) for s in spans) == lean
    ours, theirs = encode_request(spans), encode_spans(spans).SerializeToString()
    assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(
        theirs
    )
    assert ours == theirs


def _without_ids_and_times(body: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest.FromString(body)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.trace_id = span.span_id = span.parent_span_id = b""
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    event.time_unix_nano = 0
    return req


def test_the_worker_s_spans_hold_what_the_sdk_s_hold() -> None:
    """The same calls on the SDK's tracer and the worker's: the same spans (but for their
    random ids and their times), attribute, event and link limits and status rules included."""
    sdk, lean = _every_field(True), _every_field(True, lean=True)
    assert _without_ids_and_times(encode_request(lean)) == _without_ids_and_times(
        encode_request(sdk)
    )
    by_name = {s.name: s for s in lean}
    chat, process = by_name["chat up"], by_name["process prompts"]
    assert chat.parent == process.get_span_context()  # a child of the current span
    assert process.parent == REMOTE and chat.context.trace_id == REMOTE.trace_id
    assert process.context.trace_state == REMOTE.trace_state  # as the SDK's sampler passes it


@pytest.mark.parametrize("lean", [False, True])
def test_every_field_is_there(lean: bool) -> None:
    spans = _every_field(links_trace_state=True, lean=lean)
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    theirs = encode_spans(spans)
    assert [len(rs.scope_spans) for rs in ours.resource_spans] == [2, 1]
    first = ours.resource_spans[0].scope_spans[0]
    assert first.scope.name == "llm_worker" and first.scope.version == "1.2.3"
    root = next(s for s in first.spans if s.name == "process prompts")
    assert root.dropped_attributes_count == 2 and root.dropped_events_count == 1
    assert root.trace_state == "vendor=x1,other=y" and root.flags == 0x300
    assert len(root.attributes) == 20 and len(root.events) == 2
    # the SDK's encoder leaves a link's trace_state out; this one sends it
    assert root.links[0].trace_state == "vendor=x1,other=y"
    assert theirs.resource_spans[0].scope_spans[0].spans[1].links[0].trace_state == ""
    root.links[0].trace_state = ""
    assert ours == theirs


def test_equal_resources_and_scopes_are_one_group() -> None:
    kept = _Kept()
    for _ in range(2):  # two providers: equal resources, distinct objects
        provider = _provider(Resource({"service.name": "w"}), kept)
        provider.get_tracer("lib", "1").start_span("s").end()
    ours = encode_request(kept.spans)
    assert ours == encode_spans(kept.spans).SerializeToString()
    req = ExportTraceServiceRequest.FromString(ours)
    assert len(req.resource_spans) == 1 and len(req.resource_spans[0].scope_spans) == 1
    assert len(req.resource_spans[0].scope_spans[0].spans) == 2


def test_what_protobuf_cannot_carry_is_left_out_like_the_sdk_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = _Kept()
    attrs = {"ok": 1, "huge": 2**64, "min": -(2**63), "max": 2**63 - 1, "lone": "\ud800"}
    _provider(Resource({}), kept).get_tracer("t").start_span("s", attributes=attrs).end()
    with caplog.at_level(logging.ERROR):
        theirs = ExportTraceServiceRequest.FromString(encode_spans(kept.spans).SerializeToString())
    ours = ExportTraceServiceRequest.FromString(encode_request(kept.spans))
    got = {kv.key: kv.value for kv in ours.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert "huge" not in got and got["min"].int_value == -(2**63)
    assert got["max"].int_value == 2**63 - 1 and got["lone"].string_value == "?"
    want = {kv.key for kv in theirs.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert set(got) - {"lone"} == want - {"lone"}


def test_nothing_to_send_is_an_empty_request() -> None:
    assert encode_request([]) == b""


# -- OTLP/JSON --------------------------------------------------------------------------------

_IDS = ("traceId", "spanId", "parentSpanId")


def _ids_as_base64(node: Any) -> Any:
    """OTLP/JSON's hex ids as protobuf's JSON mapping writes bytes (base64), for its parser."""
    if isinstance(node, list):
        return [_ids_as_base64(x) for x in node]
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in _IDS else _ids_as_base64(v)
            for k, v in node.items()
        }
    return node


def _parsed(body: bytes) -> ExportTraceServiceRequest:
    doc = _ids_as_base64(json.loads(body))
    return json_format.Parse(json.dumps(doc), ExportTraceServiceRequest())


@pytest.mark.parametrize("lean", [False, True])
def test_json_is_the_same_request(lean: bool) -> None:
    spans = _every_field(links_trace_state=True, lean=lean)
    ours = _parsed(encode_json(spans))
    theirs = encode_spans(spans)
    assert ours.resource_spans[0].scope_spans[0].spans[1].links[0].trace_state == (
        "vendor=x1,other=y"
    )
    ours.resource_spans[0].scope_spans[0].spans[1].links[0].trace_state = ""  # see above
    assert ours == theirs


def test_json_follows_otlps_exceptions_to_the_mapping() -> None:
    kept = _Kept()
    attrs = {"i": 2**62, "nan": float("nan"), "inf": float("-inf"), "b": b"\x00\xff"}
    provider = _provider(Resource({}), kept)
    provider.get_tracer("t").start_span(
        "s", set_span_in_context(NonRecordingSpan(REMOTE)), attributes=attrs
    ).end()
    doc = json.loads(encode_json(kept.spans))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "0af7651916cd43dd8448eb211c80319c"  # hex, not base64
    assert span["parentSpanId"] == "b7ad6b7169203331"
    assert span["kind"] == 1 and span["status"] == {"code": 0, "message": ""}  # enums: numbers
    assert isinstance(span["startTimeUnixNano"], str)  # 64-bit: strings
    values = {kv["key"]: kv["value"] for kv in span["attributes"]}
    assert values["i"] == {"intValue": str(2**62)}
    assert values["nan"] == {"doubleValue": "NaN"} and values["inf"] == {"doubleValue": "-Infinity"}
    parsed = _parsed(encode_json(kept.spans))
    got = {kv.key: kv.value for kv in parsed.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert got["b"].bytes_value == b"\x00\xff" and got["i"].int_value == 2**62


def test_exports_json(receiver: _Receiver, spans: list[ReadableSpan]) -> None:
    exporter = OtlpHttpExporter(receiver.url, json=True)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    ((headers, req),) = receiver.requests
    assert headers["Content-Type"] == "application/json"
    assert req == _parsed(encode_json(spans))
    assert (
        _exporter(otel_config({**COLLECTOR, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}))._encode
        is encode_json
    )


# -- the exporter ---------------------------------------------------------------------------


class _Receiver:
    """An OTLP/HTTP receiver: what it got, on which connections; `answers` first (then 200)."""

    def __init__(self, answers: Sequence[int] = (), *, hang_up: bool = False) -> None:
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        self.peers: set[tuple[str, int]] = set()
        self.answers = list(answers)
        got = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                got.peers.add(self.client_address)
                if self.headers["Content-Type"] == "application/json":
                    req = _parsed(body)
                else:
                    req = ExportTraceServiceRequest.FromString(body)
                got.requests.append((dict(self.headers), req))
                self.send_response(got.answers.pop(0) if got.answers else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.close_connection = hang_up

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.close()


@pytest.fixture
def spans() -> list[ReadableSpan]:
    return _every_field(links_trace_state=True)


def test_exports_protobuf_with_the_headers(receiver: _Receiver, spans: list[ReadableSpan]) -> None:
    exporter = OtlpHttpExporter(receiver.url, {"Authorization": TOKEN, "x-tenant": "t1"})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    ((headers, req),) = receiver.requests
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Authorization"] == TOKEN and headers["x-tenant"] == "t1"
    assert "Content-Encoding" not in headers
    assert req == ExportTraceServiceRequest.FromString(encode_request(spans))
    assert TOKEN not in repr(exporter)
    exporter.shutdown()


def test_gzip_when_asked(receiver: _Receiver, spans: list[ReadableSpan]) -> None:
    exporter = OtlpHttpExporter(receiver.url, compression="gzip")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    ((headers, req),) = receiver.requests
    assert headers["Content-Encoding"] == "gzip"
    assert sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans) == 7


def test_one_connection_for_many_exports(receiver: _Receiver, spans: list[ReadableSpan]) -> None:
    exporter = OtlpHttpExporter(receiver.url)
    for _ in range(5):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(receiver.requests) == 5 and len(receiver.peers) == 1
    exporter.shutdown()


def test_a_kept_alive_connection_the_receiver_closed_is_opened_again(
    spans: list[ReadableSpan],
) -> None:
    r = _Receiver(hang_up=True)  # closes each connection after answering, without saying so
    try:
        exporter = OtlpHttpExporter(r.url)
        t0 = time.monotonic()
        for _ in range(3):
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert time.monotonic() - t0 < 0.9  # at once, not after a backoff
        assert len(r.requests) == 3 and len(r.peers) == 3
    finally:
        r.close()


def test_503_is_retried(monkeypatch: pytest.MonkeyPatch, spans: list[ReadableSpan]) -> None:
    monkeypatch.setattr(otlp_export, "_FIRST_BACKOFF_S", 0.05)
    r = _Receiver(answers=[503, 429])
    try:
        exporter = OtlpHttpExporter(r.url, timeout_s=5)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert len(r.requests) == 3 and r.requests[0][1] == r.requests[2][1]
    finally:
        r.close()


def test_400_is_not_retried(spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture) -> None:
    r = _Receiver(answers=[400])
    try:
        with caplog.at_level(logging.WARNING, "llm_worker.tracing"):
            assert OtlpHttpExporter(r.url).export(spans) is SpanExportResult.FAILURE
        assert len(r.requests) == 1 and "HTTP 400" in caplog.text
    finally:
        r.close()


def test_a_receiver_that_is_down(
    monkeypatch: pytest.MonkeyPatch, spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(otlp_export, "_FIRST_BACKOFF_S", 0.1)
    r = _Receiver()
    url = r.url.replace("http://", "http://user:pa55word@")
    r.close()  # nothing listens there now
    exporter = OtlpHttpExporter(url, {"Authorization": TOKEN}, timeout_s=1.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG, "llm_worker.tracing"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - t0 < 2 * 1.0 + 0.5
    assert "failed" in caplog.text and "ConnectionRefusedError" in caplog.text
    assert [rec.levelno for rec in caplog.records] == [logging.WARNING, logging.DEBUG]
    for secret in ("s3cr3t", "pa55word", "user"):
        assert secret not in caplog.text
        assert secret not in repr(exporter)


def test_userinfo_is_basic_auth(receiver: _Receiver, spans: list[ReadableSpan]) -> None:
    url = receiver.url.replace("http://", "http://me:p%40ss@")
    assert OtlpHttpExporter(url).export(spans) is SpanExportResult.SUCCESS
    assert receiver.requests[0][0]["Authorization"] == "Basic bWU6cEBzcw=="  # me:p@ss


def test_shutdown_stops_a_retry_wait(spans: list[ReadableSpan]) -> None:
    r = _Receiver(answers=[503] * 10)
    try:
        exporter = OtlpHttpExporter(r.url, timeout_s=30)
        threading.Timer(0.3, exporter.shutdown).start()
        t0 = time.monotonic()
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert time.monotonic() - t0 < 2.0
        assert exporter.export(spans) is SpanExportResult.FAILURE  # shut down
    finally:
        r.close()


def test_a_bad_header_is_refused_without_its_value() -> None:
    with pytest.raises(ValueError, match="x-token") as err:
        OtlpHttpExporter("http://c:4318/v1/traces", {"x-token": "s3cr3t\r\nInjected: 1"})
    assert "s3cr3t" not in str(err.value)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-token=s3cr3t%0d%0aInjected: 1",
    }
    with pytest.raises(ConfigError, match="x-token") as cerr:
        _exporter(otel_config(env))
    assert "s3cr3t" not in str(cerr.value)


def test_the_worker_exports_with_it() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
    cfg = otel_config(env)
    assert cfg.compression == "gzip"
    exporter = _exporter(cfg)
    assert isinstance(exporter, OtlpHttpExporter) and exporter._gzip
    assert otel_config({**env, "OTEL_EXPORTER_OTLP_COMPRESSION": "none"}).compression == ""
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"):
        otel_config({**env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "zstd"})


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_the_worker_sends_its_spans_through_it(receiver: _Receiver, protocol: str) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    tracing = Tracing.from_settings(load_settings(env))
    assert tracing is not None
    tracing.provider.get_tracer("llm_worker").start_span("process p").end()
    tracing.close()  # the batch processor exports what it holds
    ((headers, req),) = receiver.requests
    assert headers["Content-Type"] == (
        "application/json" if protocol == "http/json" else "application/x-protobuf"
    )
    (rs,) = req.resource_spans
    assert {kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"] == (
        "llm-worker"
    )
    assert [s.name for s in rs.scope_spans[0].spans] == ["process p"]
