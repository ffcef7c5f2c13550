"""The standard OTEL_* variables and the new telemetry settings, as an operator writes them."""

from __future__ import annotations

from typing import Any

import pytest

from llm_worker.worker.app import App
from llm_worker.worker.config import ConfigError, load_settings
from llm_worker.worker.ops.otelconf import otel_config
from llm_worker.worker.ops.tracing import Tracing

COLLECTOR = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def test_tracing_is_off_without_an_endpoint() -> None:
    assert not otel_config({}).enabled
    assert App(load_settings({"OTEL_SERVICE_NAME": "x"}), http=False).tracing is None
    assert not otel_config({**COLLECTOR, "OTEL_SDK_DISABLED": "true"}).enabled
    assert not otel_config({**COLLECTOR, "OTEL_TRACES_EXPORTER": "none"}).enabled


def test_endpoints_follow_the_specification() -> None:
    assert otel_config(COLLECTOR).endpoint == "http://collector:4318/v1/traces"
    assert otel_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).endpoint == (
        "http://c:4318/v1/traces"
    )
    exact = {**COLLECTOR, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/custom"}
    assert otel_config(exact).endpoint == "https://t.example/custom"  # used as it is


def test_http_json_is_sent_as_json() -> None:
    cfg = otel_config({**COLLECTOR, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert cfg.enabled and cfg.protocol == "http/json"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "ten percent"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "team"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"LLM_WORKER_LOG_OUTCOMES": "some"}, "LLM_WORKER_LOG_OUTCOMES"),
        ({"LLM_WORKER_LOOP_STALL_S": "0"}, "LLM_WORKER_LOOP_STALL_S"),
        ({"LLM_WORKER_TRACE_CONTENT": "maybe"}, "LLM_WORKER_TRACE_CONTENT"),
        ({"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-1"}, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"),
        ({"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "lots"}, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"),
    ],
)
def test_bad_values_stop_the_worker_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**COLLECTOR, **env})


def test_grpc_without_its_exporter_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_grpc(name: str, *a: Any) -> Any:  # as in an install without the extra
        return None if name.startswith("opentelemetry.exporter.otlp.proto.grpc") else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", without_grpc)
    with pytest.raises(ConfigError, match=r"llm-worker\[grpc\]"):
        load_settings({**COLLECTOR, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    monkeypatch.undo()
    grpc = load_settings({**COLLECTOR, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})  # installed here
    assert otel_config(grpc.otel_env).protocol == "grpc"


def test_otlp_headers_and_endpoint_credentials_never_show() -> None:
    s = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pa55word@collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok-123456",
        }
    )
    for text in (repr(s), str(s), repr(otel_config(s.otel_env))):
        assert "tok-123456" not in text and "pa55word" not in text
    assert otel_config(s.otel_env).headers == {"authorization": "Bearer tok-123456"}


def test_the_sdk_is_built_from_the_variables() -> None:
    s = load_settings(
        {
            **COLLECTOR,
            "OTEL_SERVICE_NAME": "llm-worker-prod",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=ml%20ops",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "LLM_WORKER_TRACE_CONTENT": "true",
        }
    )
    tracing = Tracing.from_settings(s)
    assert tracing is not None
    try:
        attrs = tracing.provider.resource.attributes
        assert attrs["service.name"] == "llm-worker-prod"
        assert attrs["deployment.environment"] == "prod" and attrs["team"] == "ml ops"
        # the worker decides before any span exists; the SDK records what it is given
        assert tracing.sampler.parent_based and tracing.sampler.ratio == 0.1
    finally:
        tracing.close(0.1)


def _limited_span(env: dict[str, str]) -> dict[str, Any]:
    """The attributes a span of the SDK built from `env` keeps of 200 values of 10,000 chars."""
    tracing = Tracing.from_settings(load_settings({**COLLECTOR, **env}))
    assert tracing is not None
    try:
        tracer = tracing.provider.get_tracer("t")
        span = tracer.start_span("x", attributes={f"a{i}": "v" * 10_000 for i in range(200)})
        return dict(span.attributes or {})  # not ended: nothing is exported
    finally:
        tracing.close(0.1)


def test_span_attributes_are_bounded_by_default() -> None:
    """Issue 21, finding 5: the specification leaves attribute values unlimited; a prompt's
    values made an export a collector refused. The worker sets a length by default."""
    kept = _limited_span({})
    assert len(kept) == 128 and {len(v) for v in kept.values()} == {4096}
    assert otel_config({}).limits.span_value_length == 4096


def test_the_standard_limit_variables_are_honoured() -> None:
    kept = _limited_span(
        {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "100", "OTEL_ATTRIBUTE_COUNT_LIMIT": "10"}
    )
    assert len(kept) == 10 and {len(v) for v in kept.values()} == {100}
    kept = _limited_span(
        {
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "100",
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "20000",  # the span's own wins
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3",
        }
    )
    assert len(kept) == 3 and {len(v) for v in kept.values()} == {10_000}
