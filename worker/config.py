"""Settings, read once from the environment (and an optional JSON/TOML-free `KEY=VALUE` file),
typed and checked as `worker/settings.py` declares them.

Every setting is `LLM_WORKER_<NAME>` except the two fixed names `KAFKA_BOOTSTRAP_SERVERS` and
`DATABASE_URL`. Any `LLM_WORKER_KAFKA_<PROPERTY>` is handed to librdkafka as `<property>` with
underscores turned into dots (`LLM_WORKER_KAFKA_SECURITY_PROTOCOL` -> `security.protocol`).
Errors name the variable that is wrong. An `LLM_WORKER_*` variable that is none of these (a typo:
`LLM_WORKER_MAX_INFLIGHT`) is refused, naming the closest settings, unless
`LLM_WORKER_ALLOW_UNKNOWN_SETTINGS=true` makes it a warning.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Collection, Mapping
from typing import Any

from llm_worker.registry._db import redact_dsn

from .ops.otelconf import otel_problem
from .secret_files import SecretFileError, read_secret_files
from .setting_rules import PREFIX, Declared
from .settings import (
    SETTINGS,
    ConfigError,
    Settings,
    endpoint_url_key,
    parse_limits,
    secret_property,
)

__all__ = [
    "ConfigError",
    "Settings",
    "endpoint_url_key",
    "env_name",
    "kafka_property_error",
    "load_settings",
    "parse_limits",
    "redact_dsn",
    "unknown_settings",
]

log = logging.getLogger("llm_worker.config")

KAFKA_PREFIX = "LLM_WORKER_KAFKA_"
OTEL_PREFIX = "OTEL_"

_BY_NAME = {d.name: d for d in SETTINGS}
_FIXED = {d.env: d for d in SETTINGS if d.spec.env is not None and d.kind is not dict}
"""The two settings with a name of their own: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL."""
_PREFIXED = {d.env: d for d in SETTINGS if d.from_prefix}
"""`LLM_WORKER_<NAME>` -> its setting."""
_ALLOW_UNKNOWN = _BY_NAME["allow_unknown_settings"]
_READ_BY_PATTERN = frozenset({"LLM_WORKER_CONFIG_FILE"})
"""Variables read here that are no setting: the file of more settings."""
_TOOLING = ("LLM_WORKER_TEST_", "LLM_WORKER_CHAOS_REPORT")
"""Variables of the test suite (`LLM_WORKER_TEST_BROKER` of `make test-kafka`,
`LLM_WORKER_TEST_MODEL`, the chaos report...), which may be in the environment of a worker the
tests start."""
_SUGGESTIONS = {
    **{d.env[len(PREFIX) :]: d.env for d in _PREFIXED.values()},
    **{d.env: d.env for d in _FIXED.values()},  # LLM_WORKER_DATABASE_URL -> DATABASE_URL
}
"""What an unknown variable is compared with (without the prefix every one shares) -> the
variable to suggest."""


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
    _refuse_unknown(source)
    wanted = set(_BY_NAME) if only is None else set(only)
    secrets_dir = overrides.get("secrets_dir") or source.get(PREFIX + "SECRETS_DIR")
    try:
        read_secret_files(source, wanted, overrides, secrets_dir or Settings().secrets_dir)
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None
    values: dict[str, Any] = {}
    kafka_extra: dict[str, str] = {}
    otel_env: dict[str, str] = {}
    for var, raw in source.items():
        if var.startswith(OTEL_PREFIX):
            otel_env[var] = raw
        elif var.startswith(KAFKA_PREFIX):
            prop = var[len(KAFKA_PREFIX) :].lower().replace("_", ".")
            if prop:
                kafka_extra[prop] = raw
        elif (setting := _FIXED.get(var) or _PREFIXED.get(var)) and setting.name in wanted:
            values[setting.name] = _convert(setting, raw)
    values["kafka_extra"] = kafka_extra
    if "otel_env" in wanted:
        values["otel_env"] = otel_env
    values.update({k: _as_declared(k, v) for k, v in overrides.items()})
    settings = Settings(**values)
    _validate(settings, wanted | set(overrides))
    return settings


def unknown_settings(source: Mapping[str, str]) -> list[str]:
    """Each `LLM_WORKER_*` variable of `source` that no setting reads, as `unknown setting
    LLM_WORKER_MAX_INFLIGHT: did you mean LLM_WORKER_MAX_IN_FLIGHT?`."""
    out = []
    for var in sorted(source):
        if not var.startswith(PREFIX) or var.startswith(KAFKA_PREFIX) or var in _PREFIXED:
            continue
        if var in _READ_BY_PATTERN or var.startswith(_TOOLING):
            continue
        if close := _closest(var[len(PREFIX) :]):
            names = " or ".join(_SUGGESTIONS[c] for c in close)
            out.append(f"unknown setting {var}: did you mean {names}?")
        else:
            out.append(
                f"unknown setting {var}: no setting is named like it (docs/configuration.md)"
            )
    return out


def _closest(name: str) -> list[str]:
    """The known names most like `name` (up to 3, each nearly as close as the best)."""
    ratio = {k: difflib.SequenceMatcher(None, name, k).ratio() for k in _SUGGESTIONS}
    best = max(ratio.values())
    if best < 0.75:
        return []
    return sorted((k for k in ratio if ratio[k] >= best - 0.1), key=lambda k: -ratio[k])[:3]


def _refuse_unknown(source: Mapping[str, str]) -> None:
    """ConfigError naming each unknown `LLM_WORKER_*` variable, or a warning when
    `LLM_WORKER_ALLOW_UNKNOWN_SETTINGS` is true."""
    problems = unknown_settings(source)
    if not problems:
        return
    raw = source.get(_ALLOW_UNKNOWN.env)
    if raw is not None and _convert(_ALLOW_UNKNOWN, raw):
        for problem in problems:
            log.warning("%s (ignored: %s=%s)", problem, _ALLOW_UNKNOWN.env, raw.strip())
        return
    raise ConfigError("; ".join(problems))


def _as_declared(name: str, value: Any) -> Any:
    """An override as the setting declares it (a choice in its declared case)."""
    setting = _BY_NAME.get(name)
    return setting.choice(value) if setting and isinstance(value, str) else value


def _convert(setting: Declared, raw: str) -> Any:
    kind, var = setting.kind, setting.env
    text = raw.strip()
    if kind is str:
        return setting.choice(raw)
    if not text:
        raise ConfigError(f"{var} is empty; expected a {_KIND[kind]}")
    try:
        if kind is bool:
            return _boolean(text)
        if kind is float:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
        return int(text)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {_KIND[kind]}") from None


def _boolean(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_KIND: dict[type, str] = {
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
    if secret_property(prop):
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
    return _BY_NAME[field].env


def _validate(s: Settings, fields: Collection[str]) -> None:
    for setting in SETTINGS:
        if setting.name not in fields:
            continue
        value = getattr(s, setting.name)
        if problem := setting.problem(value):
            raise ConfigError(f"{setting.env}={setting.shown(value)!r} {problem}")
    _check_together(s, fields)


def _check_together(s: Settings, fields: Collection[str]) -> None:
    """The rules that are more than one setting's bounds: a DSN's form, the limits' JSON,
    OpenTelemetry's variables, topics that must differ."""
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
    topics = ("prompts_topic", "completions_topic", "dlq_topic", "chunks_topic")
    if all(t in fields for t in topics):
        for out in topics[1:]:
            if getattr(s, out) == s.prompts_topic:
                raise ConfigError(
                    f"{env_name(out)}={s.prompts_topic!r} is also LLM_WORKER_PROMPTS_TOPIC: "
                    "the worker would read its own output"
                )
