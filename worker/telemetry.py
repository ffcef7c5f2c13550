"""Prometheus metrics and structured JSON logs.

Components keep plain counters; this module owns the prometheus-client objects. Each `Worker`
gets its own `Metrics` (own `CollectorRegistry`), so several workers in one process (tests) do not
collide.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["JsonFormatter", "Metrics", "configure_logging"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.consumed = Counter(
            "llm_worker_messages_consumed", "Input records consumed", registry=r
        )
        self.completions = Counter(
            "llm_worker_completions",
            "Completions produced and acknowledged",
            ["model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "llm_worker_completion_errors", "Error completions by error type", ["type"], registry=r
        )
        self.dlq = Counter(
            "llm_worker_dlq_records", "Records sent to the DLQ", ["reason"], registry=r
        )
        self.provider_calls = Counter(
            "llm_worker_provider_calls",
            "Provider attempts",
            ["provider", "endpoint", "outcome"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "llm_worker_provider_latency_seconds",
            "Provider attempt latency",
            ["provider", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "llm_worker_end_to_end_seconds",
            "Kafka timestamp of the prompt to acknowledged completion",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "llm_worker_fallbacks", "Completions answered by a fallback", ["model"], registry=r
        )
        self.in_flight = Gauge("llm_worker_in_flight", "Messages in flight", registry=r)
        self.paused = Gauge("llm_worker_paused_partitions", "Partitions paused", registry=r)
        self.commits = Counter("llm_worker_offset_commits", "Offset commits", registry=r)
        self.delivery_retries = Counter(
            "llm_worker_delivery_retries", "Produce attempts retried", registry=r
        )
        self.registry_rows = Gauge(
            "llm_worker_registry_rows", "Rows in the registry cache", registry=r
        )
        self.registry_stale = Gauge(
            "llm_worker_registry_stale", "1 when the registry cache could not refresh", registry=r
        )


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_encoder = msgspec.json.Encoder(enc_hook=repr)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
