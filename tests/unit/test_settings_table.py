"""Every setting, one table: a valid value is read and typed, and each kind of invalid value
that applies (wrong type, empty, negative, out of range, not finite, not one of the choices)
stops the worker with a message naming the variable.

The table is keyed by `Settings.__struct_fields__`: a new setting without a row here fails
`test_the_table_covers_every_setting`, and one without a rule fails its invalid cases.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from worker.cli.main import main
from worker.config import (
    _CHECKS,
    ConfigError,
    Settings,
    env_name,
    kafka_property_error,
    load_settings,
)

INT = ("abc", "1.5", "", "  ")  # wrong type, empty
FLOAT = ("abc", "", "nan", "inf", "-inf")  # wrong type, empty, not finite
BOOL = ("maybe", "", "2")
BLANK = ("", "   ")


class Row:
    """`valid`: a raw value and what it must read as; `invalid`: raw values to refuse."""

    def __init__(self, valid: tuple[str, Any], *invalid: str, var: str | None = None) -> None:
        self.valid = valid
        self.invalid = invalid
        self.var = var


TABLE: dict[str, Row] = {
    "kafka_bootstrap_servers": Row(("k1:9092,k2:9092", "k1:9092,k2:9092"), *BLANK),
    "database_url": Row(
        ("postgresql://u@db:5432/reg", "postgresql://u@db:5432/reg"), "mysql://db/x", *BLANK
    ),
    "group_id": Row(("g", "g"), *BLANK),
    "prompts_topic": Row(("in", "in"), *BLANK),
    "completions_topic": Row(("out", "out"), *BLANK, "llm_prompts"),  # would read its output
    "dlq_topic": Row(("dead", "dead"), *BLANK, "llm_prompts"),
    "http_host": Row(("127.0.0.1", "127.0.0.1"), *BLANK),
    "http_port": Row(("0", 0), *INT, "-1", "65536", "70000"),
    "http_max_connections": Row(("500", 500), *INT, "0", "-1", "10001"),
    "max_in_flight": Row(("1", 1), *INT, "0", "-3"),
    "max_in_flight_per_partition": Row(("64", 64), *INT, "-1"),  # 0 (default): automatic
    "max_in_flight_bytes": Row(("0", 0), *INT, "-1"),  # 0: no budget (default 64 MiB)
    "consume_batch": Row(("1000000", 1_000_000), *INT, "0", "-1", "1000001"),
    "commit_interval_ms": Row(("100", 100), *INT, "0", "-100"),
    "max_message_bytes": Row(("2048", 2048), *INT, "0", "-1"),
    "max_metadata_bytes": Row(("1", 1), *INT, "0", "-1"),
    "shutdown_timeout_s": Row(("0.5", 0.5), *FLOAT, "0", "-1"),
    "max_response_bytes": Row(("65536", 65536), *INT, "0", "-1"),
    "request_deadline_s": Row(("600", 600.0), *FLOAT, "0", "-5"),  # the loop keeps polling
    "capacity_wait_s": Row(("30", 30.0), *FLOAT, "0", "-1"),
    "max_tokens_cap": Row(("8192", 8192), *INT, "-1"),  # 0 (default): no worker-wide cap
    "intake_stall_s": Row(("300", 300.0), *FLOAT, "-1"),  # 0 (default): automatic
    "max_attempts": Row(("1", 1), *INT, "0", "-2"),
    "registry_refresh_s": Row(("0.25", 0.25), *FLOAT, "0", "-1"),
    "secrets_dir": Row(("/run/keys", "/run/keys"), *BLANK),
    "log_level": Row(("debug", "debug"), *BLANK, "LOUD"),
    "log_format": Row(("text", "text"), *BLANK, "xml"),
    "broker_wait_s": Row(("1", 1.0), *FLOAT, "0", "-1"),
    "registry_wait_s": Row(("2.5", 2.5), *FLOAT, "0", "-1"),
    "gc_gen0_threshold": Row(("0", 0), *INT, "-1", str(2**31)),
    "dedup_enabled": Row(("off", False), *BOOL),
    "dedup_window_s": Row(("0.5", 0.5), *FLOAT, "0", "-5"),
    "dedup_max_entries": Row(("10", 10), *INT, "0", "-1"),
    "dedup_max_bytes": Row(("4096", 4096), *INT, "0", "-1"),
    "dedup_per_tenant": Row(("yes", True), *BOOL),
    "routing_objective": Row(("cost", "cost"), *BLANK, "fastest"),
    "breaker_window_s": Row(("5", 5.0), *FLOAT, "0", "-1"),
    "breaker_error_threshold": Row(("1", 1.0), *FLOAT, "0", "-0.1", "1.5"),
    "breaker_min_requests": Row(("1", 1), *INT, "0", "-1"),
    "breaker_consecutive_failures": Row(("0", 0), *INT, "-1"),
    "breaker_z_threshold": Row(("3", 3.0), *FLOAT, "0", "-2"),
    "breaker_latency_min_increase_s": Row(("0", 0.0), *FLOAT, "-0.5"),
    "breaker_cooldown_s": Row(("0.1", 0.1), *FLOAT, "0", "-1"),
    "breaker_probes": Row(("1", 1), *INT, "0", "-1"),
    "tenant_rpm": Row(("60", 60), *INT, "-3"),
    "tenant_tpm": Row(("9000", 9000), *INT, "-1"),
    "tenant_limits": Row(
        ('{"acme": {"rpm": 5}}', '{"acme": {"rpm": 5}}'),
        "{not json",
        '["acme"]',
        '{"acme": {"rpm": -1}}',
        '{"acme": {"rpm": 1.5}}',
        '{"acme": {"rps": 5}}',
    ),
    "endpoint_limits": Row(
        ('{"http://e/v1": {"tpm": 9}}', '{"http://e/v1": {"tpm": 9}}'),
        "{not json",
        '{"http://e/v1": {}}',
        '{"http://e/v1": {"tpm": -9}}',
    ),
    "breaker_when_all_open": Row(("fail", "fail"), *BLANK, "hang"),
    "processing_guarantee": Row(("exactly_once", "exactly_once"), *BLANK, "maybe_once"),
    "transactional_id": Row(("w-1", "w-1")),
    "create_topics": Row(("false", False), *BOOL),
    "topic_partitions": Row(("12", 12), *INT, "0", "-4"),
    # librdkafka checks passthrough properties when a client is made: at start, see
    # test_an_unknown_kafka_property_stops_the_worker_naming_the_variable
    "kafka_extra": Row(
        ("SASL_SSL", {"security.protocol": "SASL_SSL"}),
        var="LLM_WORKER_KAFKA_SECURITY_PROTOCOL",
    ),
    "log_outcomes": Row(("errors", "errors"), *BLANK, "some"),
    "loop_stall_s": Row(("2.5", 2.5), *FLOAT, "0", "-1"),
    "trace_content": Row(("true", True), *BOOL),
    # every OTEL_* variable, checked by ops.otelconf (a sampler it does not know stops it)
    "otel_env": Row(
        ("always_off", {"OTEL_TRACES_SAMPLER": "always_off"}),
        "sometimes",
        var="OTEL_TRACES_SAMPLER",
    ),
}

CHECKED_ELSEWHERE = {
    "database_url": "a URL or key=value DSN, in _validate",
    "tenant_limits": "parse_limits",
    "endpoint_limits": "parse_limits",
    "kafka_extra": "librdkafka, at start",
    "transactional_id": "any string; empty means <group>-<host>-<slot> (stream.kafka_conf)",
    "otel_env": "ops.otelconf, in _validate",
}
"""Settings whose rule is not in `_CHECKS`; booleans need none (the conversion is the rule)."""


def _var(field: str) -> str:
    return TABLE[field].var or env_name(field)


def _names(var: str) -> str:
    """A pattern matching `var` as a whole name (LLM_WORKER_MAX_IN_FLIGHT is not a part of
    LLM_WORKER_MAX_IN_FLIGHT_PER_PARTITION)."""
    return rf"(?<![A-Z0-9_]){re.escape(var)}(?![A-Z0-9_])"


VALID = [(f, _var(f), TABLE[f].valid) for f in TABLE]
INVALID = [(f, _var(f), raw) for f, row in TABLE.items() for raw in row.invalid]


def test_the_table_covers_every_setting() -> None:
    assert set(TABLE) == set(Settings.__struct_fields__)


def test_every_setting_has_a_rule() -> None:
    defaults = Settings()
    for field in Settings.__struct_fields__:
        if isinstance(getattr(defaults, field), bool) or field in CHECKED_ELSEWHERE:
            continue
        assert field in _CHECKS, f"{field} has no rule in worker.config._CHECKS"


def test_defaults_pass_their_own_rules() -> None:
    assert load_settings({}) == Settings()


@pytest.mark.parametrize(("field", "var", "valid"), VALID, ids=[v[1] for v in VALID])
def test_a_valid_value_is_read_and_typed(field: str, var: str, valid: tuple[str, Any]) -> None:
    raw, expected = valid
    value = getattr(load_settings({var: raw}), field)
    assert value == expected and type(value) is type(expected)
    assert getattr(Settings(), field) != expected, "pick a valid value that is not the default"


@pytest.mark.parametrize(
    ("field", "var", "raw"), INVALID, ids=[f"{v}={r!r}" for _, v, r in INVALID]
)
def test_an_invalid_value_names_the_variable(field: str, var: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=_names(var)) as info:
        load_settings({var: raw})
    message = str(info.value)
    others = [v for f, v, _ in VALID if f != field and re.search(_names(v), message)]
    if field in ("completions_topic", "dlq_topic") and raw == "llm_prompts":
        others.remove("LLM_WORKER_PROMPTS_TOPIC")  # the clash names both sides
    assert not others, f"{message!r} also names {others}"


def test_non_finite_numbers_are_refused_for_every_float_setting() -> None:
    floats = [f for f in Settings.__struct_fields__ if isinstance(getattr(Settings(), f), float)]
    for field in floats:
        for raw in ("nan", "inf", "-inf", "1e999"):
            with pytest.raises(ConfigError, match=_names(env_name(field))):
                load_settings({env_name(field): raw})
    assert math.isfinite(load_settings({}).request_deadline_s)


@pytest.mark.parametrize(
    ("field", "var", "raw"), INVALID, ids=[f"{v}={r!r}" for _, v, r in INVALID]
)
def test_run_exits_2_naming_the_variable(
    field: str,
    var: str,
    raw: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`llm-worker run` refuses the value before it touches Kafka or Postgres."""
    for name in list(os.environ):
        if name.startswith("LLM_WORKER_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_WORKER_BROKER_WAIT_S", "1")  # an accepted value fails fast
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv(var, raw)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: ") and re.search(_names(var), err), err


def _config_error(stderr: str, var: str) -> bool:
    """stderr has a line `configuration error: ...` that names `var`."""
    return any(
        line.startswith("configuration error: ") and re.search(_names(var), line)
        for line in stderr.splitlines()
    )


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    base.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    base.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "run"],
        env={**base, "LLM_WORKER_BROKER_WAIT_S": "1", "LLM_WORKER_HTTP_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("LLM_WORKER_BREAKER_PROBES", "0"),
        ("LLM_WORKER_LOG_LEVEL", "LOUD"),
        ("LLM_WORKER_DEDUP_WINDOW_S", "-5"),
        ("LLM_WORKER_HTTP_PORT", "70000"),
        ("LLM_WORKER_MAX_IN_FLIGHT", ""),
    ],
)
def test_a_real_process_exits_2_without_a_traceback(var: str, raw: str) -> None:
    r = _run({var: raw})
    assert r.returncode == 2, r.stderr
    assert _config_error(r.stderr, var)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("LLM_WORKER_KAFKA_NO_SUCH_PROPERTY", "1"),
        ("LLM_WORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SOMETIMES"),
    ],
)
def test_a_bad_kafka_property_stops_the_worker_naming_the_variable(var: str, raw: str) -> None:
    """librdkafka refuses it when the first client is made, before any connection."""
    r = _run({var: raw})
    assert r.returncode == 2, r.stderr
    assert _config_error(r.stderr, var)
    assert "Traceback" not in r.stderr


def test_a_refused_secret_property_keeps_its_value_out_of_the_message() -> None:
    refused = 'KafkaError{code=_INVALID_ARG,val=-186,str="Invalid value "hunter2-xyz" for '
    refused += 'configuration property "sasl.password""}'
    problem = kafka_property_error(refused)
    assert problem is not None
    assert str(problem) == "LLM_WORKER_KAFKA_SASL_PASSWORD: invalid value for sasl.password"
    assert kafka_property_error("Failed to get metadata: Local: Broker transport failure") is None


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {"no.such.property": "1"},
            'LLM_WORKER_KAFKA_NO_SUCH_PROPERTY: No such configuration property: "no.such.property"',
        ),
        (
            {"security.protocol": "SASL_SOMETIMES"},
            'LLM_WORKER_KAFKA_SECURITY_PROTOCOL: Invalid value "SASL_SOMETIMES" for '
            'configuration property "security.protocol"',
        ),
    ],
)
def test_librdkafka_refusals_read_as_the_variable_and_librdkafka_reason(
    conf: dict[str, Any], message: str
) -> None:
    """The message `run` prints: librdkafka's own reason, without its KafkaError wrapper."""
    from confluent_kafka import KafkaException, Producer

    with pytest.raises(KafkaException) as refused:
        Producer(conf)
    problem = kafka_property_error(str(refused.value))
    assert problem is not None and str(problem) == message


def test_two_properties_that_disagree_name_both_variables() -> None:
    """librdkafka checks some properties against each other when the client is created: the
    worker must stop naming the variables (exit 2), not with a traceback."""
    from confluent_kafka import Consumer, KafkaException

    conf = {"group.id": "g", "session.timeout.ms": 400_000, "max.poll.interval.ms": 300_000}
    with pytest.raises(KafkaException) as refused:
        Consumer(conf)
    problem = kafka_property_error(str(refused.value))
    assert problem is not None
    assert str(problem) == (
        "LLM_WORKER_KAFKA_MAX_POLL_INTERVAL_MS / LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS: "
        "max.poll.interval.ms must be >= session.timeout.ms"
    )


def test_a_refusal_without_librdkafka_wrapper_is_passed_on_whole() -> None:
    """Another layer may re-raise librdkafka's reason as plain text: it is kept as it is."""
    plain = 'Invalid value "GSSAPI2" for configuration property "sasl.mechanism"'
    problem = kafka_property_error(plain)
    assert problem is not None and str(problem) == f"LLM_WORKER_KAFKA_SASL_MECHANISM: {plain}"


def test_a_value_not_among_the_choices_lists_them() -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings({"LLM_WORKER_LOG_FORMAT": "xml"})
    assert str(bad.value) == "LLM_WORKER_LOG_FORMAT='xml' must be one of json, text"
