"""The worker's OTLP/HTTP span exporter: spans encoded by hand, sent over one kept-alive
connection.

Why not the SDK's `OTLPSpanExporter`: its encoder builds a protobuf object per span, attribute
and value in Python before serialising them (about 40 µs a span), which at 10% sampling is the
largest part of what tracing costs the worker's CPU (docs/BENCHMARKS.md). `encode_request`
writes the same `ExportTraceServiceRequest` bytes directly (varints and length-delimited fields,
the field numbers of opentelemetry-proto's trace.proto, common.proto and resource.proto), with
the same grouping by resource and instrumentation scope; the unit tests decode both with the
official classes and compare them. Where the two differ: a link's `trace_state` is sent here
(the SDK's encoder leaves it out).

`encode_json` writes OTLP/JSON (`http/json`) with msgspec, tested against protobuf's own JSON
parser. `OtlpHttpExporter` POSTs either (`application/x-protobuf` or `application/json`, gzip
if asked) with `http.client`,
retrying 429/502/503/504 and connection errors with exponential backoff until its timeout,
as the OTLP specification says. Nothing it logs holds a header value or the URL's userinfo.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import itertools
import logging
import math
import random
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind

from .leanspans import _UNSET, LeanSpan

__all__ = ["OtlpHttpExporter", "encode_json", "encode_request"]

log = logging.getLogger("llm_worker.tracing")

_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# SpanFlags: the parent's (a link's) is_remote is known; it is remote
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE)  # Span.flags (16, fixed32)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)
_LINK_FLAGS_LOCAL = b"\x35" + _FIXED32(_HAS_IS_REMOTE)  # Link.flags (6, fixed32)
_LINK_FLAGS_REMOTE = b"\x35" + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)
_EMPTY_STATUS = b"\x7a\x00"  # Span.status (15): always there, as the SDK's encoder sends it

_CACHED = 4096
"""Encoded strings and string attributes kept (span names, attribute keys, `kafka`...): they
repeat from span to span. The caches are emptied when they reach this many entries."""


class _Unencodable(Exception):
    """An attribute value protobuf cannot carry (an int beyond int64, an unknown type)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        if n >= 0:
            return _SMALL[n]
        n += 1 << 64  # int64: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")  # a lone surrogate: "?" rather than a lost batch


class _Strings:
    """Length-delimited string fields, encoded once: `tag + length + utf-8`."""

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._done: dict[str, bytes] = {}

    def __call__(self, text: str) -> bytes:
        got = self._done.get(text)
        if got is None:
            raw = _utf8(text)
            got = self._tag + _varint(len(raw)) + raw
            if len(self._done) >= _CACHED:
                self._done.clear()
            self._done[text] = got
        return got


_key = _Strings(b"\x0a")  # KeyValue.key (1)
_name = _Strings(b"\x2a")  # Span.name (5)
_event_name = _Strings(b"\x12")  # Event.name (2)


def _value(v: Any) -> bytes:
    """An AnyValue's content (without its own tag and length)."""
    if isinstance(v, str):
        raw = _utf8(v)
        return b"\x0a" + _varint(len(raw)) + raw
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _Unencodable(f"{v} is beyond int64")
        return b"\x18" + _varint(v)
    if isinstance(v, float):
        return b"\x21" + _DOUBLE(v)
    if v is None:
        return b""
    if isinstance(v, bytes):
        return b"\x3a" + _varint(len(v)) + v
    if isinstance(v, (tuple, list, Sequence)):  # ArrayValue (5) of AnyValue (1): tuple first
        items = bytearray()
        for item in v:
            inner = _value(item)
            items += b"\x0a" + _varint(len(inner)) + inner
        return b"\x2a" + _varint(len(items)) + items
    if isinstance(v, Mapping):  # KeyValueList (6) of KeyValue (1)
        kvs = b"".join(_key_value(str(k), x) for k, x in v.items())
        return b"\x32" + _varint(len(kvs)) + kvs
    raise _Unencodable(f"a {type(v).__name__} is not an attribute value")


def _key_value(key: str, v: Any) -> bytes:
    """A KeyValue, tag and length included (the caller adds the field's own tag)."""
    inner = _value(v)
    kv = (_key(key) if key else b"") + b"\x12" + _varint(len(inner)) + inner
    return _varint(len(kv)) + kv


def _items(attrs: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """The pairs of `attrs`: from the SDK's `BoundedAttributes`, its dict's (its own `items()`
    is a pure-Python view that costs a call per attribute)."""
    inner = getattr(attrs, "_dict", None)
    return inner.items() if isinstance(inner, dict) else attrs.items()


_ATTRIBUTE_TAGS = (b"\x0a", b"\x1a", b"\x22", b"\x4a")
"""KeyValue fields: Resource.attributes, Event (and scope) attributes, Link.attributes,
Span.attributes."""
_kv_cache: dict[bytes, dict[tuple[str, Any], bytes]] = {t: {} for t in _ATTRIBUTE_TAGS}
"""Per field: encoded `tag + KeyValue` of a (key, str or int value) seen before."""


def _one_attribute(tag: bytes, k: str, v: Any) -> bytes | None:
    """`tag` + the KeyValue of `k`: `v`; None (logged) when `v` cannot be encoded."""
    t = type(v)
    if t is str:
        got = _key_value(k, v)
    elif t is int and _INT64_MIN <= v <= _INT64_MAX:
        inner = b"\x18" + _varint(v)
        kv = (_key(k) if k else b"") + b"\x12" + _SMALL[len(inner)] + inner
        got = _varint(len(kv)) + kv
    elif t is bool:
        kv = (_key(k) if k else b"") + (b"\x12\x02\x10\x01" if v else b"\x12\x02\x10\x00")
        got = _varint(len(kv)) + kv
    elif t is float:
        kv = (_key(k) if k else b"") + b"\x12\x09\x21" + _DOUBLE(v)
        got = _varint(len(kv)) + kv
    else:
        try:
            got = _key_value(k, v)
        except _Unencodable as exc:
            log.warning("span attribute %r left out of the export: %s", k, exc)
            return None
    return tag + got


def _attributes(tag: bytes, attrs: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue field `tag`; an attribute that cannot be encoded is left out (logged),
    as the SDK's encoder does. A string or int attribute is encoded once per key and value
    (the usual ones repeat from span to span: `kafka`, the topic, the model...)."""
    if not attrs:
        return b""
    return _pairs(tag, _items(attrs))


def _pairs(tag: bytes, pairs: Iterable[tuple[str, Any]]) -> bytes:
    """`_attributes` of these (key, value) pairs."""
    cache = _kv_cache.get(tag)
    out = bytearray()
    for k, v in pairs:
        t = type(v)
        if cache is not None and (t is str or t is int):
            got = cache.get((k, v))
            if got is None:
                got = _one_attribute(tag, k, v)
                if got is None:
                    continue
                if len(cache) >= _CACHED:
                    cache.clear()
                cache[(k, v)] = got
        else:
            got = _one_attribute(tag, k, v)
            if got is None:
                continue
        out += got
    return bytes(out)


def _message(tag: bytes, content: bytes | bytearray) -> bytes:
    return tag + _varint(len(content)) + content


def _trace_state(ctx: SpanContext) -> str:
    ts = ctx.trace_state
    return ",".join(f"{k}={v}" for k, v in ts.items()) if ts else ""


def _events(span: ReadableSpan) -> bytes:
    out = bytearray()
    for ev in span.events:
        body = bytearray(b"\x09" + _FIXED64(ev.timestamp)) if ev.timestamp else bytearray()
        if ev.name:
            body += _event_name(ev.name)
        body += _attributes(b"\x1a", ev.attributes)
        if ev.dropped_attributes:
            body += b"\x20" + _varint(ev.dropped_attributes)
        out += _message(b"\x5a", body)  # Span.events (11)
    return bytes(out)


def _links(span: ReadableSpan) -> bytes:
    out = bytearray()
    for link in span.links:
        ctx = link.context
        body = bytearray(b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"))
        body += b"\x12\x08" + ctx.span_id.to_bytes(8, "big")
        ts = _trace_state(ctx)
        if ts:
            raw = _utf8(ts)
            body += b"\x1a" + _varint(len(raw)) + raw
        body += _attributes(b"\x22", link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += _LINK_FLAGS_REMOTE if ctx.is_remote else _LINK_FLAGS_LOCAL
        out += _message(b"\x6a", body)  # Span.links (13)
    return bytes(out)


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    if status is None:
        return b""
    code = status.status_code.value
    text = status.description
    if not code and not text:
        return _EMPTY_STATUS
    body = bytearray()
    if text:
        raw = _utf8(text)
        body += b"\x12" + _varint(len(raw)) + raw
    if code:
        body += b"\x18" + _varint(code)
    return _message(b"\x7a", body)


def _span(span: ReadableSpan) -> bytes:
    """A Span, with its tag (ScopeSpans.spans, 2) and length (nothing without a context)."""
    ctx = span.get_span_context()
    if ctx is None:
        return b""
    out = bytearray(b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"))
    out += b"\x12\x08" + ctx.span_id.to_bytes(8, "big")
    ts = _trace_state(ctx)
    if ts:
        raw = _utf8(ts)
        out += b"\x1a" + _varint(len(raw)) + raw
    parent = span.parent
    if parent is not None:
        out += b"\x22\x08" + parent.span_id.to_bytes(8, "big")
    if span.name:
        out += _name(span.name)
    out += b"\x30" + _SMALL[span.kind.value + 1]  # OTLP's kinds: the SDK's, plus one
    if span.start_time:
        out += b"\x39" + _FIXED64(span.start_time)
    if span.end_time:
        out += b"\x41" + _FIXED64(span.end_time)
    # the span's own attributes, not the read-only view `span.attributes` wraps them in
    out += _attributes(b"\x4a", getattr(span, "_attributes", None) or span.attributes)
    if span.dropped_attributes:
        out += b"\x50" + _varint(span.dropped_attributes)
    if span.events:
        out += _events(span)
    if span.dropped_events:
        out += b"\x60" + _varint(span.dropped_events)
    if span.links:
        out += _links(span)
    if span.dropped_links:
        out += b"\x70" + _varint(span.dropped_links)
    out += _status(span)
    out += _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL
    return _message(b"\x12", out)


_KIND = {kind: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}  # Span.kind (6)


def _events_and_links(span: LeanSpan) -> bytes:
    """A lean span's events and links (`()` until one is added, then a `BoundedList`)."""
    out = bytearray()
    events, links = span._events, span._links
    if type(events) is BoundedList:
        if events:
            out += _events(span)
        if events.dropped:
            out += b"\x60" + _varint(events.dropped)
    if type(links) is BoundedList:
        if links:
            out += _links(span)
        if links.dropped:
            out += b"\x70" + _varint(links.dropped)
    return bytes(out)


def _lean_span(span: LeanSpan) -> bytes:
    """`_span` of the worker's own span: the same bytes, read from its fields (no properties,
    no copies)."""
    ctx = span._context
    assert ctx is not None
    out = bytearray(b"\x0a\x10")
    out += ctx.trace_id.to_bytes(16, "big")
    out += b"\x12\x08"
    out += ctx.span_id.to_bytes(8, "big")
    if ctx.trace_state:
        raw = _utf8(_trace_state(ctx))
        out += b"\x1a" + _varint(len(raw)) + raw
    parent = span._parent
    if parent is not None:
        out += b"\x22\x08"
        out += parent.span_id.to_bytes(8, "big")
    if span._name:
        out += _name(span._name)
    out += _KIND[span._kind]
    if span._start_time:
        out += b"\x39"
        out += _FIXED64(span._start_time)
    if span._end_time:
        out += b"\x41"
        out += _FIXED64(span._end_time)
    fixed = span._fixed
    if fixed is None:
        out += _attributes(b"\x4a", span._attributes)
    else:  # the span's first attributes are these, as they were: encoded once for all
        if fixed.encoded is None:
            fixed.encoded = _attributes(b"\x4a", fixed.attrs)
        out += fixed.encoded
        if len(span._attributes) > len(fixed.attrs):
            out += _pairs(
                b"\x4a", itertools.islice(span._attributes.items(), len(fixed.attrs), None)
            )
    if span._dropped:
        out += b"\x50" + _varint(span._dropped)
    if type(span._events) is BoundedList or type(span._links) is BoundedList:
        out += _events_and_links(span)
    out += _EMPTY_STATUS if span._status is _UNSET else _status(span)
    out += _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL
    return b"\x12" + _varint(len(out)) + out


def _scope(scope: Any) -> bytes:
    """ScopeSpans.scope (1): an InstrumentationScope, empty when the span has none."""
    if scope is None:
        return b"\x0a\x00"
    body = bytearray()
    if scope.name:
        raw = _utf8(scope.name)
        body += b"\x0a" + _varint(len(raw)) + raw
    if scope.version:
        raw = _utf8(scope.version)
        body += b"\x12" + _varint(len(raw)) + raw
    body += _attributes(b"\x1a", scope.attributes)
    return _message(b"\x0a", body)


def _schema_url(url: str | None) -> bytes:
    if not url:
        return b""
    raw = _utf8(url)
    return b"\x1a" + _varint(len(raw)) + raw  # (3) in ResourceSpans and ScopeSpans


def _grouped(spans: Sequence[ReadableSpan]) -> list[tuple[Any, list[tuple[Any, list[bytes]]]]]:
    """The encoded spans by resource, then by scope, in the order first seen; equal resources
    (scopes) are one group, as in the SDK's encoder. Objects are compared by identity first:
    a worker has one resource and one scope, and comparing resources costs."""
    by_resource: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        group = by_resource.get(id(resource))
        if group is None:
            group = by_resource[id(resource)] = (resource, {})
        scope = span.instrumentation_scope or None
        scoped = group[1].get(id(scope))
        if scoped is None:
            scoped = group[1][id(scope)] = (scope, [])
        scoped[1].append(_lean_span(span) if type(span) is LeanSpan else _span(span))
    out: list[tuple[Any, list[tuple[Any, list[bytes]]]]] = []
    for resource, scopes in by_resource.values():
        merged = _merge(out, resource)
        for scope, encoded in scopes.values():
            _merge(merged, scope).extend(encoded)
    return out


def _merge(groups: list[tuple[Any, Any]], key: Any) -> Any:
    """The items of the group of `key` in `groups` (added, empty, if there is none)."""
    for have, items in groups:
        if have is key or have == key:
            return items
    added: list[Any] = []
    groups.append((key, added))
    return added


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as a serialised OTLP `ExportTraceServiceRequest`."""
    out = bytearray()
    for resource, scopes in _grouped(spans):
        body = bytearray(_message(b"\x0a", _attributes(b"\x0a", resource.attributes)))
        for scope, encoded in scopes:
            scoped = bytearray(_scope(scope))
            for one in encoded:
                scoped += one
            scoped += _schema_url(scope.schema_url if scope is not None else None)
            body += _message(b"\x12", scoped)  # ResourceSpans.scope_spans (2)
        body += _schema_url(resource.schema_url)
        out += _message(b"\x0a", body)  # ExportTraceServiceRequest.resource_spans (1)
    return bytes(out)


# -- OTLP/JSON ----------------------------------------------------------------------------
# The protobuf JSON mapping with OTLP's exceptions: ids as hex strings, enums as integers;
# 64-bit integers (int_value, the fixed64 times) as strings, as the mapping says.

_json = msgspec.json.Encoder()


def _json_value(v: Any) -> dict[str, Any]:
    """An AnyValue."""
    if isinstance(v, str):
        return {"stringValue": v.encode("utf-8", "replace").decode()}
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _Unencodable(f"{v} is beyond int64")
        return {"intValue": str(v)}
    if isinstance(v, float):
        if math.isfinite(v):
            return {"doubleValue": v}
        return {"doubleValue": "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")}
    if v is None:
        return {}
    if isinstance(v, bytes):
        return {"bytesValue": base64.b64encode(v).decode()}
    if isinstance(v, (tuple, list, Sequence)):
        return {"arrayValue": {"values": [_json_value(x) for x in v]}}
    if isinstance(v, Mapping):
        return {"kvlistValue": {"values": [_json_kv(str(k), x) for k, x in v.items()]}}
    raise _Unencodable(f"a {type(v).__name__} is not an attribute value")


def _json_kv(key: str, v: Any) -> dict[str, Any]:
    return {"key": key, "value": _json_value(v)}


def _json_attributes(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for k, v in _items(attrs) if attrs else ():
        try:
            out.append(_json_kv(k, v))
        except _Unencodable as exc:
            log.warning("span attribute %r left out of the export: %s", k, exc)
    return out


def _flags(ctx: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | _IS_REMOTE if ctx is not None and ctx.is_remote else _HAS_IS_REMOTE


def _json_span(span: ReadableSpan, ctx: SpanContext) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": f"{ctx.trace_id:032x}",
        "spanId": f"{ctx.span_id:016x}",
        "traceState": _trace_state(ctx),
        "name": span.name,
        "kind": span.kind.value + 1,
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _json_attributes(getattr(span, "_attributes", None) or span.attributes),
        "droppedAttributesCount": span.dropped_attributes,
        "events": [
            {
                "timeUnixNano": str(ev.timestamp or 0),
                "name": ev.name,
                "attributes": _json_attributes(ev.attributes),
                "droppedAttributesCount": ev.dropped_attributes,
            }
            for ev in span.events
        ],
        "droppedEventsCount": span.dropped_events,
        "links": [
            {
                "traceId": f"{link.context.trace_id:032x}",
                "spanId": f"{link.context.span_id:016x}",
                "traceState": _trace_state(link.context),
                "attributes": _json_attributes(link.attributes),
                "droppedAttributesCount": link.dropped_attributes,
                "flags": _flags(link.context),
            }
            for link in span.links
        ],
        "droppedLinksCount": span.dropped_links,
        "flags": _flags(span.parent),
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    status = span.status
    if status is not None:
        out["status"] = {"code": status.status_code.value, "message": status.description or ""}
    return out


def _json_scope(scope: Any) -> dict[str, Any]:
    if scope is None:
        return {}
    return {
        "name": scope.name or "",
        "version": scope.version or "",
        "attributes": _json_attributes(scope.attributes),
    }


def encode_json(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as an OTLP/JSON `ExportTraceServiceRequest` (grouped as `encode_request`)."""
    by_resource: list[tuple[Any, list[tuple[Any, list[dict[str, Any]]]]]] = []
    for span in spans:
        ctx = span.get_span_context()
        if ctx is not None:
            scopes = _merge(by_resource, span.resource)
            _merge(scopes, span.instrumentation_scope or None).append(_json_span(span, ctx))
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": _json_attributes(resource.attributes)},
                "scopeSpans": [
                    {
                        "scope": _json_scope(scope),
                        "spans": encoded,
                        "schemaUrl": (scope.schema_url if scope is not None else "") or "",
                    }
                    for scope, encoded in scopes
                ],
                "schemaUrl": resource.schema_url or "",
            }
            for resource, scopes in by_resource
        ]
    }
    return _json.encode(request)


_RETRIED = frozenset((429, 502, 503, 504))
_TIMEOUT_S = 10.0
"""OTEL_EXPORTER_OTLP_TIMEOUT's default: one export, its retries included."""
_FIRST_BACKOFF_S = 1.0


class _Retry(Exception):
    def __init__(self, why: str, after_s: float | None = None) -> None:
        super().__init__(why)
        self.after_s = after_s


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP date form is not worth parsing: backoff instead)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers http.client would refuse, refused now, naming the header but never its value
    (http.client's own error would show the value: often a token)."""
    for k, v in headers.items():
        if not k or any(c in k for c in ":\r\n\0 ") or any(c in v for c in "\r\n\0"):
            raise ValueError(f"OTLP header {k!r}: its name or value is not a valid HTTP header")
    return dict(headers)


class OtlpHttpExporter(SpanExporter):
    """OTLP/HTTP to `endpoint` (the traces URL), protobuf or (`json`) JSON, on one kept-alive
    connection that is opened again after an error."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float = _TIMEOUT_S,
        compression: str | None = None,
        json: bool = False,
    ) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the OTLP traces endpoint is not an http(s):// URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._where = f"{self._host}:{self._port or (443 if self._https else 80)}"
        """For log lines: no userinfo, no path (it may hold a token too)."""
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._encode = encode_json if json else encode_request
        self._headers = {
            "Content-Type": "application/json" if json else "application/x-protobuf",
            "User-Agent": "llm-worker-otlp-exporter",
        }
        if parts.username is not None:  # userinfo in the URL: basic auth, as requests does
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._headers.update(_check_headers(headers or {}))
        self._gzip = compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._failing = False

    def __repr__(self) -> str:  # headers usually carry a token
        return f"OtlpHttpExporter({self._where!r}, headers={sorted(self._headers)!r})"

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s,
                    context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._conn = conn
        else:
            conn.timeout = timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(timeout_s)
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body: bytes, timeout_s: float) -> None:
        """One POST; `_Retry` for what the specification retries, else an exception to give
        up on. A kept-alive connection the collector closed meanwhile is opened again once."""
        for fresh in (False, True):
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._connection(timeout_s)
            try:
                conn.request("POST", self._path, body, self._headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if reused and not fresh:
                    continue
                raise _Retry(f"{type(exc).__name__}: {exc}") from None
            if resp.will_close:
                self._drop_connection()
            if 200 <= resp.status < 300:
                return
            if resp.status in _RETRIED:
                raise _Retry(f"HTTP {resp.status}", _retry_after(resp.getheader("Retry-After")))
            raise RuntimeError(f"HTTP {resp.status}")
        raise AssertionError("unreachable")

    def _send(self, body: bytes) -> str | None:
        """POST `body`, retried until the timeout: None when it was taken, else why not."""
        deadline = time.monotonic() + self._timeout_s
        backoff = _FIRST_BACKOFF_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timed out"
            try:
                self._post(body, left)
                return None
            except _Retry as exc:
                why = str(exc)
                wait = (
                    exc.after_s if exc.after_s is not None else backoff * random.uniform(0.8, 1.2)
                )
            except RuntimeError as exc:
                return str(exc)
            backoff *= 2
            if time.monotonic() + wait >= deadline:
                return f"{why} (no time left to retry)"
            if self._closed.wait(wait):
                return f"{why} (shutting down)"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed.is_set():
            return SpanExportResult.FAILURE
        body = self._encode(spans)
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        with self._lock:
            why = self._send(body)
        if why is None:
            if self._failing:
                self._failing = False
                log.info("OTLP export to %s works again", self._where)
            return SpanExportResult.SUCCESS
        # the first failure is a warning, the next ones (each batch) debug until one works
        log.log(
            logging.DEBUG if self._failing else logging.WARNING,
            "OTLP export of %d spans to %s failed: %s",
            len(spans), self._where, why,
        )  # fmt: skip
        self._failing = True
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop_connection()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
