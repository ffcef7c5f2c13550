"""The standard `OTEL_*` variables, read and checked without importing the SDK.

Tracing is on only when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
`OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended for HTTP), and neither
`OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise. Everything else follows
the OpenTelemetry specification's defaults: protocol `http/protobuf`, sampler
`parentbased_always_on`, service name from `OTEL_SERVICE_NAME` (else `llm-worker`), resource
attributes from `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k=v`, percent-encoded values).

A value the worker cannot honour stops it at start with a message naming the variable, like
every other setting, rather than running without the traces someone asked for. `http/protobuf`
and `http/json` are sent by the worker's own exporter (`ops.otlp_export`), `grpc` by the SDK's.

Span limits (`SpanBounds`) are the specification's variables with the specification's defaults,
but for one: the length of an attribute value, which the specification leaves unlimited, is
`ATTRIBUTE_VALUE_LENGTH` characters unless `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` (or
`OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`) says otherwise. Attribute values come from prompts
and provider answers; a bound on each keeps a span, and a batch of them, a size a collector
takes (OTLP receivers refuse requests over 20 MiB by default, and every trace of that batch is
lost).
"""

from __future__ import annotations

import importlib.util
import re
import urllib.parse
from collections.abc import Mapping

import msgspec

__all__ = [
    "ATTRIBUTE_VALUE_LENGTH",
    "SAMPLERS",
    "OtelConfig",
    "SpanBounds",
    "otel_config",
    "otel_problem",
    "redacted_env",
]

ATTRIBUTE_VALUE_LENGTH = 4096
"""The default of OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: characters of one attribute value (of
each string in an array value). Enough for ids, model names, URLs and error types; prompt and
answer text (`LLM_WORKER_TRACE_CONTENT`) is cut here unless the variable raises it."""
COUNT_LIMIT = 128
"""The specification's default for every count limit (attributes, events, links)."""

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
"""The samplers of the specification that need no extra package."""

_PROTOCOLS = ("http/protobuf", "http/json", "grpc")
_GRPC = "opentelemetry.exporter.otlp.proto.grpc"
_TRUE = ("true", "1", "yes", "on")
_USERINFO = re.compile(r"//[^/@\s\"]*@")


class SpanBounds(msgspec.Struct, frozen=True, kw_only=True):
    """The span limits the SDK enforces (`SpanLimits`), resolved as the specification says:
    a span-specific variable, else the general one, else the default."""

    value_length: int = ATTRIBUTE_VALUE_LENGTH
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: event and link attribute values."""
    span_value_length: int = ATTRIBUTE_VALUE_LENGTH
    """OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, else the above: span attribute values."""
    attributes: int = COUNT_LIMIT
    """OTEL_ATTRIBUTE_COUNT_LIMIT."""
    span_attributes: int = COUNT_LIMIT
    """OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, else the above."""
    event_attributes: int = COUNT_LIMIT
    link_attributes: int = COUNT_LIMIT
    events: int = COUNT_LIMIT
    links: int = COUNT_LIMIT


class OtelConfig(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool
    endpoint: str = ""
    """The traces URL (HTTP) or collector address (gRPC) spans are exported to."""
    protocol: str = "http/protobuf"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource: dict[str, str] = msgspec.field(default_factory=dict)
    compression: str = ""
    """`gzip` (OTEL_EXPORTER_OTLP_COMPRESSION), else none."""
    limits: SpanBounds = msgspec.field(default_factory=SpanBounds)

    def __repr__(self) -> str:  # headers usually carry a token
        return (
            f"OtelConfig(enabled={self.enabled}, endpoint={_redact(self.endpoint)!r}, "
            f"protocol={self.protocol!r}, compression={self.compression or 'none'!r}, "
            f"sampler={self.sampler!r}, "
            f"sampler_arg={self.sampler_arg}, headers={sorted(self.headers)!r}, "
            f"attribute_value_length={self.limits.span_value_length})"
        )

    __str__ = __repr__


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _pick(env: Mapping[str, str], *names: str) -> tuple[str, str]:
    """The first of `names` set to something other than blanks: (name, stripped value)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return names[-1], ""


def _pairs(var: str, raw: str, *, decode: bool) -> dict[str, str]:
    """`k=v,k=v` (the format of OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{var}: expected key=value pairs separated by commas, got {item!r}")
        value = value.strip()
        out[key.strip()] = urllib.parse.unquote(value) if decode else value
    return out


def _endpoint(env: Mapping[str, str], protocol: str) -> str:
    var, url = _pick(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url:
        var, url = _pick(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if url and protocol != "grpc":  # the generic endpoint is a base: add the signal's path
            url = url.rstrip("/") + "/v1/traces"
    if not url:
        return ""
    parts = urllib.parse.urlsplit(url)
    if protocol != "grpc" and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise ValueError(f"{var}={_redact(url)!r} is not an http(s):// URL")
    return url


def _compression(env: Mapping[str, str]) -> str:
    var, raw = _pick(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    value = raw.lower()
    if value not in ("", "none", "gzip"):
        raise ValueError(f"{var}={raw!r} must be gzip or none")
    return "gzip" if value == "gzip" else ""


def _sampler(env: Mapping[str, str]) -> tuple[str, float]:
    _, name = _pick(env, "OTEL_TRACES_SAMPLER")
    name = name.lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} must be one of {', '.join(SAMPLERS)}")
    _, raw = _pick(env, "OTEL_TRACES_SAMPLER_ARG")
    arg = 1.0
    if raw and name.endswith("traceidratio"):
        try:
            arg = float(raw)
        except ValueError:
            arg = float("nan")
        if not 0.0 <= arg <= 1.0:  # also false for nan
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be a number from 0 to 1")
    return name, arg


def _limit(env: Mapping[str, str], default: int, *names: str) -> int:
    """The first of `names` that is set, as a count (a non-negative integer), else `default`."""
    var, raw = _pick(env, *names)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{var}={raw!r} must be a whole number of 0 or more")
    return value


def _bounds(env: Mapping[str, str]) -> SpanBounds:
    length = _limit(env, ATTRIBUTE_VALUE_LENGTH, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    count = _limit(env, COUNT_LIMIT, "OTEL_ATTRIBUTE_COUNT_LIMIT")
    return SpanBounds(
        value_length=length,
        span_value_length=_limit(env, length, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
        attributes=count,
        span_attributes=_limit(env, count, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"),
        event_attributes=_limit(env, count, "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT"),
        link_attributes=_limit(env, count, "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT"),
        events=_limit(env, COUNT_LIMIT, "OTEL_SPAN_EVENT_COUNT_LIMIT"),
        links=_limit(env, COUNT_LIMIT, "OTEL_SPAN_LINK_COUNT_LIMIT"),
    )


def otel_config(env: Mapping[str, str]) -> OtelConfig:
    """Read the `OTEL_*` variables of `env`; ValueError (naming the variable) if one is bad."""
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
    exporters = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporters not in ("otlp", "none"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporters!r}: only otlp (or none) is supported")
    pvar, protocol = _pick(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol.lower() or "http/protobuf"
    if protocol not in _PROTOCOLS:
        raise ValueError(f"{pvar}={protocol!r} must be one of {', '.join(_PROTOCOLS)}")
    endpoint = _endpoint(env, protocol)
    sampler, arg = _sampler(env)
    hvar, raw_headers = _pick(
        env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"
    )
    headers = _pairs(hvar, raw_headers, decode=True)
    _, raw_attrs = _pick(env, "OTEL_RESOURCE_ATTRIBUTES")
    resource = _pairs("OTEL_RESOURCE_ATTRIBUTES", raw_attrs, decode=True)
    _, service = _pick(env, "OTEL_SERVICE_NAME")
    resource["service.name"] = service or resource.get("service.name") or "llm-worker"
    if protocol == "grpc" and endpoint and importlib.util.find_spec(_GRPC) is None:
        raise ValueError(
            f"{pvar}=grpc needs the gRPC exporter: pip install 'llm-worker[grpc]' "
            "(the container image has it), or use http/protobuf"
        )
    limits = _bounds(env)
    return OtelConfig(
        enabled=bool(endpoint) and not disabled and exporters == "otlp",
        endpoint=endpoint,
        protocol=protocol,
        headers=headers,
        sampler=sampler,
        sampler_arg=arg,
        resource=resource,
        compression=_compression(env),
        limits=limits,
    )


def otel_problem(env: Mapping[str, str]) -> str | None:
    """What is wrong with the `OTEL_*` variables of `env` (naming the variable), or None."""
    try:
        otel_config(env)
    except ValueError as exc:
        return str(exc)
    return None


def redacted_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` fit for a log line: headers (tokens) hidden, userinfo out of URLs."""
    return {k: ("***" if "HEADERS" in k else _USERINFO.sub("//***@", v)) for k, v in env.items()}
