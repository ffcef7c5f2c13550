"""The rule of each setting that has one: a function of the typed value that says what is wrong
with it (`"must be >= 1"`), or None. `worker.config` prefixes the message with the variable's
name and value; a setting without a rule takes any value of its type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CHECKS", "Check"]

Check = Callable[[Any], str | None]


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low:g}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}"


def _one_of(*choices: str, fold: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = (v.upper() if fold else v) in choices
        return None if ok else f"must be one of {', '.join(choices)}"

    return check


def _not_blank(v: Any) -> str | None:
    return None if str(v).strip() else "must not be empty"


CHECKS: dict[str, Check] = {
    "kafka_bootstrap_servers": _not_blank,
    "group_id": _not_blank,
    "prompts_topic": _not_blank,
    "completions_topic": _not_blank,
    "dlq_topic": _not_blank,
    "http_host": _not_blank,
    "http_port": _between(0, 65535),  # 0: any free port (the start-up log names it)
    "http_max_connections": _between(1, 10_000),
    "max_in_flight": _at_least(1),
    "max_in_flight_per_partition": _at_least(0),
    "max_in_flight_bytes": _at_least(0),
    "consume_batch": _between(1, 1_000_000),  # librdkafka's consume() refuses more
    "commit_interval_ms": _at_least(1),
    "max_message_bytes": _at_least(1),
    "max_metadata_bytes": _at_least(1),
    "max_response_bytes": _at_least(1),
    "shutdown_timeout_s": _above(0),
    "request_deadline_s": _above(0),
    "capacity_wait_s": _above(0),
    "max_tokens_cap": _at_least(0),
    "intake_stall_s": _at_least(0),
    "max_attempts": _at_least(1),
    "registry_refresh_s": _above(0),
    "secrets_dir": _not_blank,
    "log_level": _one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", fold=True),
    "log_format": _one_of("json", "text"),
    "broker_wait_s": _above(0),
    "registry_wait_s": _above(0),
    "gc_gen0_threshold": _between(0, 2**31 - 1),  # gc.set_threshold takes a C int
    "log_outcomes": _one_of("all", "errors", "none"),
    "loop_stall_s": _above(0),
    "dedup_window_s": _above(0),
    "dedup_max_entries": _at_least(1),
    "dedup_max_bytes": _at_least(1),
    "routing_objective": _one_of("priority", "latency", "cost", "reliability"),
    "breaker_window_s": _above(0),
    "breaker_error_threshold": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "breaker_min_requests": _at_least(1),
    "breaker_consecutive_failures": _at_least(0),
    "breaker_z_threshold": _above(0),
    "breaker_latency_min_increase_s": _at_least(0),
    "breaker_cooldown_s": _above(0),
    "breaker_probes": _at_least(1),
    "tenant_rpm": _at_least(0),
    "tenant_tpm": _at_least(0),
    "breaker_when_all_open": _one_of("fail", "wait"),
    "topic_partitions": _at_least(1),
    "processing_guarantee": _one_of("at_least_once", "exactly_once"),
}
"""Per-setting rules; the message is prefixed with the variable's name and value."""
