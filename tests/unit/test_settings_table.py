"""Every setting is declared once, in `worker/settings.py`; these tests hold the rest to it.

- The variables and their defaults are public contracts: `CONTRACT` pins each one that exists
  (a new setting may be added; none may be renamed or change its default).
- The reader enforces each declaration: for every setting a valid value is read and typed, and
  each kind of invalid value its declaration implies (wrong type, empty, not finite, below or
  above a bound, not one of the choices) stops the worker with a message naming the variable.
  The cases are made from the declaration, so a new setting is covered without an edit here;
  the rules a declaration cannot say (a DSN's form, the limits' JSON, topics that must differ,
  OpenTelemetry's variables, librdkafka's properties) are listed by hand.
- The README table, the Helm chart's `config` schema and docs/configuration.md are generated
  (`make settings`); a test fails when one of them drifts from the declarations.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llm_worker.worker.calling.health_config import BreakerConfig
from llm_worker.worker.cli.main import main
from llm_worker.worker.config import (
    ConfigError,
    Settings,
    env_name,
    kafka_property_error,
    load_settings,
)
from llm_worker.worker.setting_rules import Declared
from llm_worker.worker.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]

CONTRACT: dict[str, object] = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "LLM_WORKER_GROUP_ID": "llm-worker",
    "LLM_WORKER_PROMPTS_TOPIC": "llm_prompts",
    "LLM_WORKER_COMPLETIONS_TOPIC": "llm_completions",
    "LLM_WORKER_DLQ_TOPIC": "llm_prompts.dlq",
    "LLM_WORKER_HTTP_HOST": "0.0.0.0",
    "LLM_WORKER_HTTP_PORT": 8080,
    "LLM_WORKER_HTTP_MAX_CONNECTIONS": 64,
    "LLM_WORKER_MAX_IN_FLIGHT": 10_000,
    "LLM_WORKER_MAX_IN_FLIGHT_PER_PARTITION": 0,
    "LLM_WORKER_MAX_IN_FLIGHT_BYTES": 64 * 1024 * 1024,
    "LLM_WORKER_ORDERING": "none",
    "LLM_WORKER_CONSUME_BATCH": 500,
    "LLM_WORKER_COMMIT_INTERVAL_MS": 500,
    "LLM_WORKER_MAX_MESSAGE_BYTES": 1_000_000,
    "LLM_WORKER_MAX_METADATA_BYTES": 16_384,
    "LLM_WORKER_MAX_RESPONSE_BYTES": 8 * 1024 * 1024,
    "LLM_WORKER_HTTP_CLIENT": "h1",
    "LLM_WORKER_SHUTDOWN_TIMEOUT_S": 20.0,
    "LLM_WORKER_REQUEST_DEADLINE_S": 120.0,
    "LLM_WORKER_CAPACITY_WAIT_S": 600.0,
    "LLM_WORKER_PRIORITY_AGING_S": 30.0,
    "LLM_WORKER_PRIORITY_LOOKAHEAD": 1000,
    "LLM_WORKER_MAX_TOKENS_CAP": 0,
    "LLM_WORKER_INTAKE_STALL_S": 0.0,
    "LLM_WORKER_MAX_ATTEMPTS": 3,
    "LLM_WORKER_REGISTRY_REFRESH_S": 5.0,
    "LLM_WORKER_SECRETS_DIR": "/var/run/secrets/llm-worker",
    "LLM_WORKER_LOG_LEVEL": "INFO",
    "LLM_WORKER_LOG_FORMAT": "json",
    "LLM_WORKER_BROKER_WAIT_S": 60.0,
    "LLM_WORKER_REGISTRY_WAIT_S": 60.0,
    "LLM_WORKER_GC_GEN0_THRESHOLD": 20_000,
    "LLM_WORKER_LOG_OUTCOMES": "all",
    "LLM_WORKER_TRACE_CONTENT": False,
    "LLM_WORKER_LOOP_STALL_S": 10.0,
    "LLM_WORKER_DEDUP_ENABLED": True,
    "LLM_WORKER_DEDUP_WINDOW_S": 60.0,
    "LLM_WORKER_DEDUP_MAX_ENTRIES": 100_000,
    "LLM_WORKER_DEDUP_MAX_BYTES": 64 * 1024 * 1024,
    "LLM_WORKER_DEDUP_PER_TENANT": False,
    "LLM_WORKER_ROUTING_OBJECTIVE": "priority",
    "LLM_WORKER_BREAKER_WINDOW_S": 30.0,
    "LLM_WORKER_BREAKER_ERROR_THRESHOLD": 0.5,
    "LLM_WORKER_BREAKER_MIN_REQUESTS": 20,
    "LLM_WORKER_BREAKER_CONSECUTIVE_FAILURES": 10,
    "LLM_WORKER_BREAKER_Z_THRESHOLD": 2.5,
    "LLM_WORKER_BREAKER_LATENCY_MIN_INCREASE_S": 0.5,
    "LLM_WORKER_BREAKER_COOLDOWN_S": 10.0,
    "LLM_WORKER_BREAKER_PROBES": 3,
    "LLM_WORKER_TENANT_RPM": 0,
    "LLM_WORKER_TENANT_TPM": 0,
    "LLM_WORKER_TENANT_LIMITS": "",
    "LLM_WORKER_ENDPOINT_LIMITS": "",
    "LLM_WORKER_BREAKER_WHEN_ALL_OPEN": "wait",
    "LLM_WORKER_PROCESSING_GUARANTEE": "at_least_once",
    "LLM_WORKER_TRANSACTIONAL_ID": "",
    "LLM_WORKER_CREATE_TOPICS": True,
    "LLM_WORKER_TOPIC_PARTITIONS": 4,
    "LLM_WORKER_KAFKA_<PROPERTY>": {},
    "OTEL_*": {},
}
"""Every variable the worker has read, with its default: none may go or change."""

CHOICES = {
    "LLM_WORKER_LOG_LEVEL": {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"},
    "LLM_WORKER_LOG_FORMAT": {"json", "text"},
    "LLM_WORKER_LOG_OUTCOMES": {"all", "errors", "none"},
    "LLM_WORKER_ROUTING_OBJECTIVE": {"priority", "latency", "cost", "reliability"},
    "LLM_WORKER_BREAKER_WHEN_ALL_OPEN": {"fail", "wait"},
    "LLM_WORKER_PROCESSING_GUARANTEE": {"at_least_once", "exactly_once"},
    "LLM_WORKER_HTTP_CLIENT": {"aiohttp", "h1"},
    "LLM_WORKER_ORDERING": {"none", "key", "partition"},
}
"""The values each choice setting has taken: none may go."""

# ---------------------------------------------------------------- cases from the declarations

INT = ("abc", "1.5", "", "  ")  # wrong type, empty
FLOAT = ("abc", "", "nan", "inf", "-inf")  # wrong type, empty, not finite
BOOL = ("maybe", "", "2")
BLANK = ("", "   ")


def _raw(x: float) -> str:
    return str(x)


def _declared_invalid(s: Declared) -> list[str]:
    """The invalid values the declaration implies."""
    spec = s.spec
    if s.choices:
        return [*BLANK, "not-" + s.choices[0].lower()]
    if s.kind is bool:
        return list(BOOL)
    if s.kind is str:
        return [] if spec.blank else list(BLANK)
    if s.kind is dict:
        return []
    out = list(INT if s.kind is int else FLOAT)
    step = 1 if s.kind is int else 0.5
    if spec.ge is not None:
        out.append(_raw(spec.ge - step))
    if spec.gt is not None:
        out += [_raw(spec.gt), _raw(spec.gt - step)]
    if spec.le is not None:
        out.append(_raw(spec.le + step))
    return out


def _declared_valid(s: Declared) -> tuple[str, Any]:
    """A value the declaration accepts that is not the default, and what it reads as."""
    if s.choices:
        other = next(c for c in s.choices if c != s.default)
        return (other.lower() if s.spec.fold else other), other
    if s.kind is bool:
        return ("off", False) if s.default else ("yes", True)
    if isinstance(s.default, int):
        le = s.spec.le
        n = s.default + 1 if le is None or s.default + 1 <= le else s.default - 1
        return str(n), n
    if isinstance(s.default, float):
        return str(s.default + 0.5), s.default + 0.5
    return "other-value", "other-value"


SPECIAL_VALID: dict[str, tuple[str, str, Any]] = {
    "database_url": ("DATABASE_URL", "postgresql://u@db:5432/reg", "postgresql://u@db:5432/reg"),
    "tenant_limits": ("LLM_WORKER_TENANT_LIMITS", '{"acme": {"rpm": 5}}', '{"acme": {"rpm": 5}}'),
    "endpoint_limits": (
        "LLM_WORKER_ENDPOINT_LIMITS",
        '{"http://e/v1": {"tpm": 9}}',
        '{"http://e/v1": {"tpm": 9}}',
    ),
    # librdkafka checks passthrough properties when a client is made: at start, see
    # test_a_bad_kafka_property_stops_the_worker_naming_the_variable
    "kafka_extra": (
        "LLM_WORKER_KAFKA_SECURITY_PROTOCOL",
        "SASL_SSL",
        {"security.protocol": "SASL_SSL"},
    ),
    "otel_env": ("OTEL_TRACES_SAMPLER", "always_off", {"OTEL_TRACES_SAMPLER": "always_off"}),
}
"""Settings whose valid values a declaration cannot make up (a DSN, JSON, a family of
variables): the variable, a raw value, and what it reads as."""

SPECIAL_INVALID: list[tuple[str, str, str]] = [
    ("database_url", "DATABASE_URL", "mysql://db/x"),
    ("completions_topic", "LLM_WORKER_COMPLETIONS_TOPIC", "llm_prompts"),  # reads its output
    ("dlq_topic", "LLM_WORKER_DLQ_TOPIC", "llm_prompts"),
    *(
        ("tenant_limits", "LLM_WORKER_TENANT_LIMITS", raw)
        for raw in (
            "{not json",
            '["acme"]',
            '{"acme": {"rpm": -1}}',
            '{"acme": {"rpm": 1.5}}',
            '{"acme": {"rps": 5}}',
        )
    ),
    *(
        ("endpoint_limits", "LLM_WORKER_ENDPOINT_LIMITS", raw)
        for raw in ("{not json", '{"http://e/v1": {}}', '{"http://e/v1": {"tpm": -9}}')
    ),
    ("otel_env", "OTEL_TRACES_SAMPLER", "sometimes"),  # ops.otelconf knows the samplers
]
"""The rules beyond one setting's declaration (config._check_together, parse_limits,
ops.otelconf)."""


def _valid(s: Declared) -> tuple[str, str, Any]:
    if s.name in SPECIAL_VALID:
        return SPECIAL_VALID[s.name]
    return (s.env, *_declared_valid(s))


VALID = [(s.name, *_valid(s)) for s in SETTINGS]
INVALID = [(s.name, s.env, raw) for s in SETTINGS for raw in _declared_invalid(s)]
INVALID += SPECIAL_INVALID


def _names(var: str) -> str:
    """A pattern matching `var` as a whole name (LLM_WORKER_MAX_IN_FLIGHT is not a part of
    LLM_WORKER_MAX_IN_FLIGHT_PER_PARTITION)."""
    return rf"(?<![A-Z0-9_]){re.escape(var)}(?![A-Z0-9_])"


# ---------------------------------------------------------------- the declarations


def test_no_variable_is_renamed_and_no_default_changes() -> None:
    declared = {s.env: s.default for s in SETTINGS}
    for var, default in CONTRACT.items():
        assert var in declared, f"{var} is no longer a setting"
        assert declared[var] == default and type(declared[var]) is type(default), var
    assert load_settings({}) == Settings(), "the defaults pass their own rules"


def test_choice_settings_are_typed_by_their_choices() -> None:
    declared = {s.env: set(s.choices) for s in SETTINGS if s.choices}
    assert set(declared) == set(CHOICES)
    for var, values in CHOICES.items():
        assert values <= declared[var], f"{var} lost {values - declared[var]}"


def test_every_setting_says_what_it_does() -> None:
    for s in SETTINGS:
        assert s.spec.doc.strip() and "\n" not in s.spec.doc, s.name
        assert env_name(s.name) == s.env


@pytest.mark.parametrize(("field", "var", "valid"), [(f, v, (r, e)) for f, v, r, e in VALID])
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
    others = [v for f, v, _, _ in VALID if f != field and re.search(_names(v), message)]
    if field in ("completions_topic", "dlq_topic") and raw == "llm_prompts":
        others.remove("LLM_WORKER_PROMPTS_TOPIC")  # the clash names both sides
    assert not others, f"{message!r} also names {others}"


def test_non_finite_numbers_are_refused_for_every_float_setting() -> None:
    floats = [s for s in SETTINGS if s.kind is float]
    assert floats
    for s in floats:
        for raw in ("nan", "inf", "-inf", "1e999"):
            with pytest.raises(ConfigError, match=_names(s.env)):
                load_settings({s.env: raw})
    assert math.isfinite(load_settings({}).request_deadline_s)


@pytest.mark.parametrize(
    ("var", "raw", "message"),
    [
        ("LLM_WORKER_MAX_IN_FLIGHT", "0", "LLM_WORKER_MAX_IN_FLIGHT=0 must be >= 1"),
        ("LLM_WORKER_DEDUP_WINDOW_S", "-5", "LLM_WORKER_DEDUP_WINDOW_S=-5.0 must be > 0"),
        ("LLM_WORKER_HTTP_PORT", "70000", "LLM_WORKER_HTTP_PORT=70000 must be between 0 and 65535"),
        (
            "LLM_WORKER_BREAKER_ERROR_THRESHOLD",
            "1.5",
            "LLM_WORKER_BREAKER_ERROR_THRESHOLD=1.5 must be in (0, 1]",
        ),
        ("LLM_WORKER_GROUP_ID", " ", "LLM_WORKER_GROUP_ID=' ' must not be empty"),
        ("LLM_WORKER_MAX_ATTEMPTS", "x", "LLM_WORKER_MAX_ATTEMPTS='x' is not a valid whole number"),
    ],
)
def test_a_refusal_reads_as_the_variable_its_value_and_its_rule(
    var: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings({var: raw})
    assert str(bad.value) == message


def test_a_choice_in_another_case_reads_as_declared() -> None:
    """`LLM_WORKER_LOG_LEVEL=debug` is DEBUG; the other choices are exact."""
    assert load_settings({"LLM_WORKER_LOG_LEVEL": "warning"}).log_level == "WARNING"
    assert load_settings(log_level="error").log_level == "ERROR"
    with pytest.raises(ConfigError, match="LLM_WORKER_LOG_FORMAT='JSON' must be one of"):
        load_settings({"LLM_WORKER_LOG_FORMAT": "JSON"})


def test_a_secret_setting_is_shown_redacted_in_its_error_and_repr() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://u:hunter2-xyz@db/reg",
            "LLM_WORKER_KAFKA_SASL_PASSWORD": "hunter3-xyz",
            "LLM_WORKER_ENDPOINT_LIMITS": '{"http://u:hunter4-xyz@e/v1": {"rpm": 1}}',
        }
    )
    assert not re.search("hunter[0-9]", repr(s)), repr(s)
    assert {d.env for d in SETTINGS if d.secret} >= {"DATABASE_URL", "LLM_WORKER_KAFKA_<PROPERTY>"}


def test_breaker_config_takes_every_breaker_setting() -> None:
    """Each `LLM_WORKER_BREAKER_<FIELD>` reaches the breakers (all but WHEN_ALL_OPEN, which
    the caller reads)."""
    breaker = [s for s in SETTINGS if s.name.startswith("breaker_")]
    env = {s.env: _declared_valid(s)[0] for s in breaker}
    config = BreakerConfig.from_settings(load_settings(env))
    taken = {
        f for f in BreakerConfig.__struct_fields__ if f"breaker_{f}" in Settings.__struct_fields__
    }
    assert {f"breaker_{f}" for f in taken} == {s.name for s in breaker} - {"breaker_when_all_open"}
    for field in taken:
        setting = next(s for s in breaker if s.name == f"breaker_{field}")
        assert getattr(config, field) == _declared_valid(setting)[1], field


# ---------------------------------------------------------------- the generated files


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_settings", ROOT / "tools" / "gen_settings.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


@pytest.mark.parametrize("path", list(GEN.outputs()), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_generated_file_matches_the_declarations(path: Path) -> None:
    want = GEN.outputs()[path]
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            have.splitlines(keepends=True), want.splitlines(keepends=True), "file", "declared", n=0
        )
    )
    assert not diff, (
        f"{path.relative_to(ROOT)} drifted from worker/settings.py (make settings):\n{diff[:3000]}"
    )


def test_every_setting_is_in_the_readme_the_reference_and_the_chart() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(GEN.BEGIN) : readme.index(GEN.END)]
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    chart = json.loads((ROOT / "helm" / "llm-worker" / "values.schema.json").read_text())
    keys = chart["properties"]["config"]["properties"]
    for s in SETTINGS:
        assert f"| `{s.env}` |" in table and f"| `{s.env}` |" in reference, s.env
        if s.from_prefix:
            assert s.env.removeprefix("LLM_WORKER_") in keys, s.env
    assert chart["properties"]["config"]["additionalProperties"] is False


def test_the_generator_runs_on_its_own_and_finds_no_drift() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_settings.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert r.returncode == 0, r.stdout + r.stderr


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
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
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
