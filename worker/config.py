"""Settings, read once from the environment (and an optional JSON/TOML-free `KEY=VALUE` file).

Every setting is `LLM_WORKER_<NAME>` except the two fixed names `KAFKA_BOOTSTRAP_SERVERS` and
`DATABASE_URL`. Any `LLM_WORKER_KAFKA_<PROPERTY>` is handed to librdkafka as `<property>` with
underscores turned into dots (`LLM_WORKER_KAFKA_SECURITY_PROTOCOL` -> `security.protocol`).
Errors name the variable that is wrong.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping
from typing import Any

import msgspec

from adapters.urls import redact_url, redact_url_keys, strip_userinfo
from registry._db import redact_dsn

from .ops.otelconf import otel_problem, redacted_env
from .secret_files import SecretFileError, read_secret_files
from .setting_rules import CHECKS as _CHECKS

__all__ = [
    "ConfigError",
    "Settings",
    "endpoint_url_key",
    "env_name",
    "kafka_property_error",
    "load_settings",
    "redact_dsn",
]

PREFIX = "LLM_WORKER_"
KAFKA_PREFIX = "LLM_WORKER_KAFKA_"
OTEL_PREFIX = "OTEL_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    group_id: str = "llm-worker"
    prompts_topic: str = "llm_prompts"
    completions_topic: str = "llm_completions"
    dlq_topic: str = "llm_prompts.dlq"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    http_max_connections: int = 64  # open at once on the HTTP port; the oldest idle one yields
    max_in_flight: int = 10_000  # the cap; the limit below it adapts (calling/concurrency.py)
    max_in_flight_per_partition: int = 0  # 0: twice a fair share of the adaptive limit
    max_in_flight_bytes: int = 64 * 1024 * 1024  # memory budget for records in flight
    consume_batch: int = 500
    commit_interval_ms: int = 500
    max_message_bytes: int = 1_000_000
    max_metadata_bytes: int = 16_384
    max_response_bytes: int = 8 * 1024 * 1024  # one provider answer; a longer one is not read
    shutdown_timeout_s: float = 20.0
    request_deadline_s: float = 120.0
    capacity_wait_s: float = 600.0  # waits for rate limits / slots beyond the deadline, in all
    max_tokens_cap: int = 0  # the most max_tokens any request asks for (with the row's); 0: none
    intake_stall_s: float = 0.0  # /readyz fails when intake stood still this long; 0: automatic
    max_attempts: int = 3
    registry_refresh_s: float = 5.0
    secrets_dir: str = "/var/run/secrets/llm-worker"
    log_level: str = "INFO"
    log_format: str = "json"
    broker_wait_s: float = 60.0
    registry_wait_s: float = 60.0
    gc_gen0_threshold: int = 20_000
    log_outcomes: str = "all"  # all | errors | none: which outcomes get their JSON line
    trace_content: bool = False  # prompt and completion text on spans (personal data!)
    loop_stall_s: float = 10.0  # /healthz fails when the event loop has not run for this long
    dedup_enabled: bool = True
    dedup_window_s: float = 60.0
    dedup_max_entries: int = 100_000
    dedup_max_bytes: int = 64 * 1024 * 1024
    dedup_per_tenant: bool = False
    routing_objective: str = "priority"
    breaker_window_s: float = 30.0
    breaker_error_threshold: float = 0.5
    breaker_min_requests: int = 20
    breaker_consecutive_failures: int = 10
    breaker_z_threshold: float = 2.5
    breaker_latency_min_increase_s: float = 0.5
    breaker_cooldown_s: float = 10.0
    breaker_probes: int = 3
    tenant_rpm: int = 0
    tenant_tpm: int = 0
    tenant_limits: str = ""  # JSON {"tenant": {"rpm": N, "tpm": N}}, overrides tenant_rpm/tpm
    endpoint_limits: str = ""  # JSON {"https://api.example.com/v1": {"rpm": N, "tpm": N}}
    breaker_when_all_open: str = "wait"  # wait (for a half-open probe) | fail (after a cooldown)
    processing_guarantee: str = "at_least_once"  # at_least_once | exactly_once (transactions)
    transactional_id: str = ""  # exactly_once: default <group>-<host>-<slot>, see kafka_conf
    create_topics: bool = True
    topic_partitions: int = 4
    kafka_extra: dict[str, str] = msgspec.field(default_factory=dict)
    otel_env: dict[str, str] = msgspec.field(default_factory=dict)
    """Every `OTEL_*` variable (the OpenTelemetry SDK's own names), read by `ops.otelconf`."""

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f}={getattr(self, f)!r}"
            for f in self.__struct_fields__
            if f not in ("database_url", "kafka_extra", "endpoint_limits", "otel_env")
        )
        extra = {k: ("***" if _is_secret_key(k) else v) for k, v in self.kafka_extra.items()}
        dsn = redact_dsn(self.database_url)
        limits = redact_url_keys(self.endpoint_limits)
        return (
            f"Settings({shown}, database_url={dsn!r}, kafka_extra={extra!r}, "
            f"endpoint_limits={limits!r}, otel_env={redacted_env(self.otel_env)!r})"
        )

    __str__ = __repr__

    def limits(self, kind: str) -> dict[str, tuple[int | None, int | None]]:
        """`endpoint_limits` or `tenant_limits` as {name: (rpm, tpm)}; 0 or absent = none."""
        raw = self.endpoint_limits if kind == "endpoint" else self.tenant_limits
        return parse_limits(f"LLM_WORKER_{kind.upper()}_LIMITS", raw, urls=kind == "endpoint")

    def kafka_common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        conf.update(self.kafka_extra)
        return conf


_FIXED = {"KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers", "DATABASE_URL": "database_url"}


def endpoint_url_key(url: str) -> str:
    """An endpoint URL as rate limits are kept per it: no userinfo, no trailing slash. The
    same for a configured key and for the endpoint a row calls, so they match."""
    return strip_userinfo(url).rstrip("/")


def _is_secret_key(key: str) -> bool:
    return any(w in key for w in ("password", "secret", "key", "token"))


def parse_limits(
    var: str, raw: str, *, urls: bool = False
) -> dict[str, tuple[int | None, int | None]]:
    """`{"name": {"rpm": 600, "tpm": 90000}, ...}` -> {name: (rpm, tpm)}; ConfigError if bad.
    With `urls`, names are endpoint URLs and a trailing slash is dropped."""
    if not raw.strip():
        return {}
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{var} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{var} must be a JSON object like {{"name": {{"rpm": 600}}}}')
    out: dict[str, tuple[int | None, int | None]] = {}
    for name, limit in data.items():
        shown = redact_url(name) if urls else name  # a URL's credentials stay out of errors
        if not isinstance(limit, dict) or not limit or set(limit) - {"rpm", "tpm"}:
            raise ConfigError(f'{var}: {shown!r} needs {{"rpm": N, "tpm": N}} (either or both)')
        pair: list[int | None] = []
        for unit in ("rpm", "tpm"):
            v = limit.get(unit)
            if v is not None and (type(v) is not int or v < 0):
                raise ConfigError(f"{var}: {shown!r} {unit} must be a whole number >= 0, got {v!r}")
            pair.append(v or None)
        out[endpoint_url_key(name) if urls else name] = (pair[0], pair[1])
    return out


def _read_env_file(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" not in line:
                    raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip().strip('"').strip("'")
    except OSError as exc:
        raise ConfigError(f"LLM_WORKER_CONFIG_FILE={path!r} cannot be read: {exc}") from exc
    return out


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    only: Collection[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build `Settings` from `env` (default: `os.environ`), then apply `overrides`.

    `only`: the fields a command uses (`migrate` needs `database_url` alone); the others keep
    their defaults and are neither read nor checked, so a bad setting a command never uses does
    not stop it.
    """
    source = dict(os.environ if env is None else env)
    if "LLM_WORKER_CONFIG_FILE" in source:
        from_file = _read_env_file(source["LLM_WORKER_CONFIG_FILE"])
        source = {**from_file, **source}
    wanted = set(Settings.__struct_fields__) if only is None else set(only)
    secrets_dir = overrides.get("secrets_dir") or source.get(PREFIX + "SECRETS_DIR")
    try:
        read_secret_files(source, wanted, overrides, secrets_dir or Settings().secrets_dir)
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None
    fields = {f: t for f, t in zip(Settings.__struct_fields__, _field_types(), strict=True)}
    values: dict[str, Any] = {}
    kafka_extra: dict[str, str] = {}
    otel_env: dict[str, str] = {}
    for var, raw in source.items():
        if var.startswith(OTEL_PREFIX):
            otel_env[var] = raw
        elif var in _FIXED:
            if _FIXED[var] in wanted:
                values[_FIXED[var]] = raw
        elif var.startswith(KAFKA_PREFIX):
            prop = var[len(KAFKA_PREFIX) :].lower().replace("_", ".")
            if prop:
                kafka_extra[prop] = raw
        elif var.startswith(PREFIX) and var != "LLM_WORKER_CONFIG_FILE":
            name = var[len(PREFIX) :].lower()
            if name not in fields or name in _NOT_PREFIXED or name not in wanted:
                continue
            values[name] = _convert(var, raw, fields[name])
    values["kafka_extra"] = kafka_extra
    if "otel_env" in wanted:
        values["otel_env"] = otel_env
    values.update(overrides)
    settings = Settings(**values)
    _validate(settings, wanted | set(overrides))
    return settings


_NOT_PREFIXED = ("kafka_extra", "kafka_bootstrap_servers", "database_url", "otel_env")


def _field_types() -> list[type]:
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    defaults = Settings()
    return [hints.get(type(getattr(defaults, f)).__name__, str) for f in Settings.__struct_fields__]


def _convert(var: str, raw: str, tp: type) -> Any:
    text = raw.strip()
    if not text and tp is not str:
        raise ConfigError(f"{var} is empty; expected a {_KIND[tp]}")
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is str:
            return raw
        if tp is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
        return tp(text)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {_KIND[tp]}") from None


_KIND = {
    int: "whole number",
    float: "finite number",
    bool: "boolean (true/false)",
    str: "string",
}


_RDKAFKA_PROPERTY = re.compile(r'configuration property:? "?([A-Za-z0-9._-]+)"?')
_RDKAFKA_TEXT = re.compile(r'str="(.*)"\}$', re.DOTALL)


def kafka_property_error(message: str) -> ConfigError | None:
    """librdkafka's refusal of a passthrough property ("No such configuration property:
    "x.y"", "Invalid value ... for configuration property "x.y"") as a ConfigError naming
    the variable that set it (`LLM_WORKER_KAFKA_X_Y`); None for any other error. librdkafka
    checks its properties only when a client is created, so this runs at start."""
    text = _RDKAFKA_TEXT.search(message)
    detail = text.group(1) if text else message
    found = _RDKAFKA_PROPERTY.search(message)
    if found is None:
        return _kafka_pair_error(detail)
    prop = found.group(1)
    if _is_secret_key(prop):
        detail = f"invalid value for {prop}"  # librdkafka quotes the value: keep it out
    return ConfigError(f"{KAFKA_PREFIX}{prop.upper().replace('.', '_')}: {detail}")


_RDKAFKA_PAIR = re.compile(r"`([a-z0-9._-]+)` ?must be ([<>]=?) ?`([a-z0-9._-]+)`")


def _kafka_pair_error(detail: str) -> ConfigError | None:
    """librdkafka's refusal of two properties that disagree ("`max.poll.interval.ms`must be >=
    `session.timeout.ms`") as a ConfigError naming both variables; None for anything else."""
    pair = _RDKAFKA_PAIR.search(detail)
    if pair is None:
        return None
    first, relation, second = pair.groups()
    names = " / ".join(f"{KAFKA_PREFIX}{p.upper().replace('.', '_')}" for p in (first, second))
    return ConfigError(f"{names}: {first} must be {relation} {second}")


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    for var, name in _FIXED.items():
        if name == field:
            return var
    return PREFIX + field.upper()


def _validate(s: Settings, fields: Collection[str]) -> None:
    for name in Settings.__struct_fields__:
        check = _CHECKS.get(name)
        if check is None or name not in fields:
            continue
        problem = check(getattr(s, name))
        if problem:
            raise ConfigError(f"{env_name(name)}={getattr(s, name)!r} {problem}")
    if "database_url" in fields and (
        not s.database_url.startswith(("postgresql://", "postgres://"))
        and "=" not in s.database_url
    ):
        raise ConfigError(
            f"DATABASE_URL={redact_dsn(s.database_url)!r} is not a PostgreSQL URL or key=value DSN"
        )
    if "endpoint_limits" in fields:
        s.limits("endpoint")
    if "tenant_limits" in fields:
        s.limits("tenant")
    if "otel_env" in fields and (problem := otel_problem(s.otel_env)):
        raise ConfigError(problem)
    topics = ("prompts_topic", "completions_topic", "dlq_topic")
    if all(t in fields for t in topics):
        for out in topics[1:]:
            if getattr(s, out) == s.prompts_topic:
                raise ConfigError(
                    f"{env_name(out)}={s.prompts_topic!r} is also LLM_WORKER_PROMPTS_TOPIC: "
                    "the worker would read its own output"
                )
