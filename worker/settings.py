"""Every setting of the worker, said once: its type (a `Literal` for a choice), its default and,
in its `Spec`, its bounds, whether it is shown redacted, and one doc line.

`worker.config` reads them from the environment and checks them against these declarations;
`tools/gen_settings.py` (`make settings`) writes the README's settings table, the Helm chart's
`config` schema and docs/configuration.md from them, and a unit test fails when one drifts.
Every setting is `LLM_WORKER_<NAME>` unless its `Spec` names another variable.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from llm_worker.adapters.urls import redact_url, redact_url_keys, strip_userinfo
from llm_worker.registry._db import redact_dsn

from .ops.otelconf import redacted_env
from .setting_rules import Declared, Spec, declared

__all__ = [
    "SETTINGS",
    "ConfigError",
    "HTTPClientName",
    "Limits",
    "LogFormat",
    "LogLevel",
    "LogOutcomes",
    "Objective",
    "Ordering",
    "ProcessingGuarantee",
    "Settings",
    "WhenAllOpen",
    "endpoint_url_key",
    "parse_limits",
    "secret_property",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "text"]
LogOutcomes = Literal["all", "errors", "none"]
Objective = Literal["priority", "latency", "cost", "reliability"]
WhenAllOpen = Literal["fail", "wait"]
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
HTTPClientName = Literal["aiohttp", "h1"]
Ordering = Literal["none", "key", "partition"]

MiB = 1024 * 1024

Limits = tuple[int | None, int | None]
"""(rpm, tpm) of one tenant or endpoint; None: no limit."""


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def secret_property(key: str) -> bool:
    """A librdkafka property that holds a credential (its value is never shown)."""
    return any(w in key for w in ("password", "secret", "key", "token"))


def _masked_properties(props: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if secret_property(k) else v) for k, v in props.items()}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Kafka
    kafka_bootstrap_servers: Annotated[
        str, Spec("Kafka bootstrap servers", env="KAFKA_BOOTSTRAP_SERVERS")
    ] = "127.0.0.1:9092"
    group_id: Annotated[str, Spec("consumer group")] = "llm-worker"
    prompts_topic: Annotated[str, Spec("input topic")] = "llm_prompts"
    completions_topic: Annotated[str, Spec("output topic")] = "llm_completions"
    dlq_topic: Annotated[str, Spec("dead-letter topic")] = "llm_prompts.dlq"
    chunks_topic: Annotated[
        str, Spec("streaming: the topic of the chunk records (docs/streaming.md)")
    ] = "llm_completions.chunks"
    batch_markers_topic: Annotated[
        str,
        Spec(
            "exactly-once mode: the batch lane's delivery markers, one per delivery, in its "
            "transaction (docs/batch.md)"
        ),
    ] = "llm_batch_delivered"
    create_topics: Annotated[
        bool,
        Spec(
            "create missing topics at start, with the cluster's default replication factor "
            "and `min.insync.replicas`"
        ),
    ] = True
    topic_partitions: Annotated[int, Spec("partitions of the topics it creates", ge=1)] = 4
    processing_guarantee: Annotated[
        ProcessingGuarantee,
        Spec("`exactly_once`: outcomes and offsets in Kafka transactions"),
    ] = "at_least_once"
    transactional_id: Annotated[
        str,
        Spec(
            "exactly-once: the producer's `transactional.id`; empty: `<group>-<host>-<slot>`. "
            "Keep it stable per replica (docs/delivery.md, After a crash)",
            blank=True,
        ),
    ] = ""
    commit_interval_ms: Annotated[
        int,
        Spec(
            "how often safe offsets are committed (exactly-once: how often a transaction commits)",
            ge=1,
        ),
    ] = 500
    consume_batch: Annotated[
        int, Spec("records per poll (librdkafka takes at most 1000000)", ge=1, le=1_000_000)
    ] = 500
    kafka_extra: Annotated[
        dict[str, str],
        Spec(
            "passed to librdkafka: `LLM_WORKER_KAFKA_SECURITY_PROTOCOL=SASL_SSL` → "
            "`security.protocol`, `LLM_WORKER_KAFKA_SASL_PASSWORD` → `sasl.password` (redacted "
            "in logs); a property librdkafka refuses stops the worker at start (exit 2, naming "
            "the variable); `LLM_WORKER_KAFKA_STATISTICS_INTERVAL_MS` (`5000`) paces the lag "
            "and queue metrics",
            env="LLM_WORKER_KAFKA_<PROPERTY>",
            redact=_masked_properties,
        ),
    ] = msgspec.field(default_factory=dict)
    # how much is in flight
    max_in_flight: Annotated[
        int,
        Spec(
            "the cap on messages in flight per worker; the limit below it adapts by itself "
            "(docs/routing.md, Adaptive concurrency)",
            ge=1,
        ),
    ] = 10_000
    max_in_flight_per_partition: Annotated[
        int,
        Spec(
            "pause a partition at this many in flight (resumed at half); `0`: twice a fair "
            "share of the adaptive limit",
            ge=0,
        ),
    ] = 0
    max_in_flight_bytes: Annotated[
        int,
        Spec(
            "memory budget for records in flight (key + value, from their average size); `0`: none",
            ge=0,
        ),
    ] = 64 * MiB
    ordering: Annotated[
        Ordering,
        Spec(
            "`key`: one record of a Kafka key at a time, its completions in offset order "
            "(records without a key are not ordered); `partition`: calls concurrent, "
            "completions produced in offset order per partition; `none`: as they finish "
            "(docs/delivery.md, Ordering)"
        ),
    ] = "none"
    max_message_bytes: Annotated[
        int, Spec("larger prompts are rejected (`payload_too_large`)", ge=1)
    ] = 1_000_000
    max_metadata_bytes: Annotated[int, Spec("larger `metadata` is rejected", ge=1)] = 16_384
    max_response_bytes: Annotated[
        int,
        Spec(
            "the most bytes of one provider answer read (after decompression); a longer answer "
            "is not read and is a retryable `response_too_large`",
            ge=1,
        ),
    ] = 8 * MiB
    http_client: Annotated[
        HTTPClientName,
        Spec(
            "the HTTP client of the provider calls: `h1`, the worker's own lean HTTP/1.1 "
            "client (a third of aiohttp's CPU per call; no compression), or `aiohttp`"
        ),
    ] = "h1"
    # one request
    max_attempts: Annotated[int, Spec("tries per candidate on retryable errors", ge=1)] = 3
    output_retries: Annotated[
        int,
        Spec(
            "more answers asked for when one fails its output check (not JSON, not valid for "
            "the prompt's schema or tool parameters, cut at max_tokens); then `invalid_output`",
            ge=0,
            le=10,
        ),
    ] = 1
    request_deadline_s: Annotated[
        float,
        Spec(
            "bound on all tries of one request (waits for rate-limit capacity and concurrency "
            "slots not counted)",
            gt=0,
        ),
    ] = 120.0
    capacity_wait_s: Annotated[
        float,
        Spec(
            "how much longer than its deadline a request may wait for rate-limit capacity and "
            "concurrency slots, in all; then it ends with `rate_limited` or `timeout`",
            gt=0,
        ),
    ] = 600.0
    default_ttl_ms: Annotated[
        int,
        Spec(
            "the deadline of a prompt that gives neither `deadline` nor `ttl_ms`: milliseconds "
            "from its record's timestamp; past it, a `deadline_exceeded` error, no call; `0`: none",
            ge=0,
        ),
    ] = 0
    priority_lookahead: Annotated[
        int,
        Spec(
            "while the worker is full, read on up to this many records and start them highest "
            "priority first when room frees (engages once a priority other than normal is "
            "seen); `0`: read in partition order only",
            ge=0,
        ),
    ] = 1000
    priority_aging_s: Annotated[
        float,
        Spec(
            "anti-starvation: a request waiting for capacity rises one priority (low, normal, "
            "high) per this many seconds waited",
            gt=0,
        ),
    ] = 30.0
    batch_max_wait_s: Annotated[
        float,
        Spec(
            "batch lane: a job is submitted when it is full or when its oldest request has "
            "waited this long",
            gt=0,
        ),
    ] = 300.0
    batch_poll_s: Annotated[
        float,
        Spec("batch lane: how often the collecting replica asks the provider about its jobs", gt=0),
    ] = 30.0
    batch_retention_s: Annotated[
        float,
        Spec(
            "batch lane: how long a delivered request's row is kept (then deleted, with its "
            "jobs once empty)",
            gt=0,
        ),
    ] = 7 * 86400.0
    max_tokens_cap: Annotated[
        int,
        Spec(
            "the most `max_tokens` any request asks a provider for (a row's `max_tokens` caps "
            "it too); `0`: no worker-wide cap",
            ge=0,
        ),
    ] = 0
    # streaming
    stream: Annotated[
        bool,
        Spec(
            "stream every prompt that does not say `stream` itself (a registry row's `stream` "
            "column overrides it per model)"
        ),
    ] = False
    stream_linger_ms: Annotated[
        float,
        Spec(
            "streaming: how long a chunk collects the provider's pieces before it is produced "
            "(the first chunk does not wait)",
            ge=0,
            le=10_000,
        ),
    ] = 5.0
    stream_idle_timeout_ms: Annotated[
        int,
        Spec(
            "streaming: a provider stream with no event for this long has stalled and counts "
            "as a timeout",
            ge=1,
        ),
    ] = 30_000
    stream_buffer_bytes: Annotated[
        int,
        Spec(
            "streaming: chunks kept per provider stream for identical prompts that join it "
            "late; past it a late joiner gets only the final completion",
            ge=0,
        ),
    ] = 1 * MiB
    # start and stop
    shutdown_timeout_s: Annotated[
        float,
        Spec(
            "in-flight deadline at shutdown/revoke; keep below `terminationGracePeriodSeconds`",
            gt=0,
        ),
    ] = 20.0
    broker_wait_s: Annotated[
        float,
        Spec("how long start-up waits for Kafka (with backoff) before exiting with code 2", gt=0),
    ] = 60.0
    registry_wait_s: Annotated[
        float,
        Spec(
            "how long start-up waits for Postgres (with backoff) before exiting with code 2",
            gt=0,
        ),
    ] = 60.0
    # the registry
    database_url: Annotated[
        str,
        Spec(
            "registry database (URL or key=value DSN); shown everywhere with its "
            "`password`/`sslpassword` as `***`, or as `<unparseable DSN>` when libpq cannot "
            "read it",
            env="DATABASE_URL",
            redact=redact_dsn,
        ),
    ] = "postgresql://postgres@127.0.0.1:5432/postgres"
    registry_refresh_s: Annotated[
        float, Spec("periodic full registry reload (NOTIFY makes changes faster)", gt=0)
    ] = 5.0
    secrets_dir: Annotated[
        str, Spec("one file per secret: API keys, and the secrets read from files (README)")
    ] = "/var/run/secrets/llm-worker"
    # the HTTP port and health
    http_host: Annotated[str, Spec("address of `/metrics`, `/healthz`, `/readyz`")] = "0.0.0.0"
    http_port: Annotated[
        int,
        Spec("their port (`0`: any free port, named in the start-up log)", ge=0, le=65535),
    ] = 8080
    http_max_connections: Annotated[
        int,
        Spec(
            "connections open at once on that port (at the cap the oldest one that has sent no "
            "request is closed to let a new one in); a client has 5 s to send its request",
            ge=1,
            le=10_000,
        ),
    ] = 64
    loop_stall_s: Annotated[
        float, Spec("`/healthz` fails when the event loop has not run for this long", gt=0)
    ] = 10.0
    intake_stall_s: Annotated[
        float,
        Spec(
            "`/readyz` fails when no record was taken for this long while work waits; `0`: "
            "the request deadline + capacity wait + 60 s (by then every request in flight has "
            "ended)",
            ge=0,
        ),
    ] = 0.0
    # logs and traces
    log_level: Annotated[
        LogLevel, Spec("the least level logged; one JSON line per outcome at INFO", fold=True)
    ] = "INFO"
    log_format: Annotated[
        LogFormat, Spec("`json` lines, or `text`: one line each with its fields as `key=value`")
    ] = "json"
    log_outcomes: Annotated[
        LogOutcomes,
        Spec("which outcomes get their log line (`errors`: error completions and dead letters)"),
    ] = "all"
    trace_content: Annotated[
        bool, Spec("`true` puts prompt and completion text on trace spans (personal data!)")
    ] = False
    otel_env: Annotated[
        dict[str, str],
        Spec(
            "OpenTelemetry's standard variables: tracing is on when "
            "`OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/operations.md, Traces)",
            env="OTEL_*",
            redact=redacted_env,
        ),
    ] = msgspec.field(default_factory=dict)
    # dedup
    dedup_enabled: Annotated[bool, Spec("the dedup window is on")] = True
    dedup_window_s: Annotated[float, Spec("how long an answer is kept for a repeat", gt=0)] = 60.0
    dedup_max_entries: Annotated[int, Spec("the most answers it keeps", ge=1)] = 100_000
    dedup_max_bytes: Annotated[int, Spec("the most bytes of answers it keeps", ge=1)] = 64 * MiB
    dedup_per_tenant: Annotated[bool, Spec("scope dedup per tenant")] = False
    # routing and circuit breakers
    routing_objective: Annotated[
        Objective, Spec("how candidates are ordered (a row's `routing_objective` wins)")
    ] = "priority"
    breaker_window_s: Annotated[
        float, Spec("error-rate trip: the window the error rate is measured over", gt=0)
    ] = 30.0
    breaker_error_threshold: Annotated[
        float, Spec("error-rate trip: the share of errors that opens a breaker", gt=0, le=1)
    ] = 0.5
    breaker_min_requests: Annotated[
        int, Spec("error-rate trip: calls in the window before the rate counts", ge=1)
    ] = 20
    breaker_consecutive_failures: Annotated[
        int, Spec("failures in a row that open a breaker too (`0`: off)", ge=0)
    ] = 10
    breaker_z_threshold: Annotated[
        float, Spec("latency demotion: how many standard deviations slower", gt=0)
    ] = 2.5
    breaker_latency_min_increase_s: Annotated[
        float, Spec("latency demotion: and at least this much slower (s)", ge=0)
    ] = 0.5
    breaker_cooldown_s: Annotated[
        float,
        Spec("half-open timing; also how long a demotion lasts at least", gt=0),
    ] = 10.0
    breaker_probes: Annotated[
        int, Spec("probe calls in half-open (and after a demotion)", ge=1)
    ] = 3
    breaker_when_all_open: Annotated[
        WhenAllOpen,
        Spec(
            "every candidate open: `wait` for a half-open probe (up to the deadline); `fail`: "
            "wait one cooldown, then `circuit_open`"
        ),
    ] = "wait"
    # rate limits
    tenant_rpm: Annotated[int, Spec("requests per minute of every tenant (`0`: none)", ge=0)] = 0
    tenant_tpm: Annotated[int, Spec("tokens per minute of every tenant (`0`: none)", ge=0)] = 0
    tenant_limits: Annotated[
        str,
        Spec(
            'JSON `{"tenant": {"rpm": N, "tpm": N}}`, overrides the two above per tenant',
            blank=True,
            json_limits=True,
        ),
    ] = ""
    endpoint_limits: Annotated[
        str,
        Spec(
            'JSON `{"https://endpoint/v1": {"rpm": N, "tpm": N}}`, shared by every row on '
            "that endpoint",
            blank=True,
            json_limits=True,
            redact=redact_url_keys,
        ),
    ] = ""
    # the process
    allow_unknown_settings: Annotated[
        bool,
        Spec(
            "`true`: an unknown `LLM_WORKER_*` variable (a typo, or a setting of another "
            "version during a rolling upgrade) is a warning; `false`: it stops the worker "
            "(exit 2, naming the closest setting)"
        ),
    ] = False
    gc_gen0_threshold: Annotated[
        int,
        Spec(
            "young-generation GC threshold (`0` keeps Python's default); see docs/BENCHMARKS.md",
            ge=0,
            le=2**31 - 1,  # gc.set_threshold takes a C int
        ),
    ] = 20_000

    def __repr__(self) -> str:
        shown = ", ".join(f"{d.name}={d.shown(getattr(self, d.name))!r}" for d in SETTINGS)
        return f"Settings({shown})"

    __str__ = __repr__

    def limits(self, kind: Literal["endpoint", "tenant"]) -> dict[str, Limits]:
        """`endpoint_limits` or `tenant_limits` as {name: (rpm, tpm)}; 0 or absent = none."""
        raw = self.endpoint_limits if kind == "endpoint" else self.tenant_limits
        return parse_limits(f"LLM_WORKER_{kind.upper()}_LIMITS", raw, urls=kind == "endpoint")

    def kafka_common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        conf.update(self.kafka_extra)
        return conf


SETTINGS: tuple[Declared, ...] = declared(Settings)
"""Every setting as declared, in the order above."""


def endpoint_url_key(url: str) -> str:
    """An endpoint URL as rate limits are kept per it: no userinfo, no trailing slash. The
    same for a configured key and for the endpoint a row calls, so they match."""
    return strip_userinfo(url).rstrip("/")


def parse_limits(var: str, raw: str, *, urls: bool = False) -> dict[str, Limits]:
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
    out: dict[str, Limits] = {}
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
