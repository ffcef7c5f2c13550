"""What each acknowledged outcome leaves behind: counters, metrics and one log line.

Called by the consume loop with every batch of delivery reports, so the per-message cost is a
few dictionary updates; metric children are looked up once per batch and label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..records import InputRecord, Outcome
from .metrics import Metrics

__all__ = ["OutcomeRecorder"]

outcome_log = logging.getLogger("llm_worker.outcome")


class OutcomeRecorder:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}
        self.counters: dict[str, int] = {"completed": 0, "errors": 0, "dlq": 0}

    def forget_children(self) -> None:
        """After series were removed: look children up again."""
        self._children.clear()

    def record(self, delivered: Sequence[tuple[InputRecord, Outcome, Any]]) -> None:
        """Counters, metrics and outcome logs for delivered messages, one batch at a time."""
        if not delivered:
            return
        m = self._metrics
        counters = self.counters
        now = time.time()
        log_info = outcome_log.isEnabledFor(logging.INFO)
        observe = m.e2e_latency.observe
        by_label: dict[tuple[str, str], int] = {}
        label: tuple[str, str]
        for rec, outcome, _ in delivered:
            c = outcome.completion
            if c is None:
                self._record_dlq(rec, outcome)
                continue
            label = (outcome.model_label, c.status)
            by_label[label] = by_label.get(label, 0) + 1
            if c.status == "error":
                counters["errors"] += 1
                m.errors.labels(c.error.type if c.error else "unknown").inc()
            if rec.timestamp_ms:
                observe(max(0.0, now - rec.timestamp_ms / 1000))
            if log_info:
                outcome_log.info(
                    "completion",
                    extra={
                        "request_id": c.id,
                        "model": c.model,
                        "provider": c.provider,
                        "endpoint": c.endpoint_name,
                        "status": c.status,
                        "error_type": c.error.type if c.error else None,
                        "latency_ms": c.latency_ms,
                        "attempts": c.attempts,
                        "fallback_used": c.fallback_used,
                        "partition": rec.partition,
                        "offset": rec.offset,
                    },
                )
        for label, n in by_label.items():
            counters["completed"] += n
            child = self._children.get(label)
            if child is None:
                child = self._children[label] = m.completions.labels(*label)
            child.inc(n)

    def _record_dlq(self, rec: InputRecord, outcome: Outcome) -> None:
        self.counters["dlq"] += 1
        self._metrics.dlq.labels(outcome.dlq_reason or "unknown").inc()
        outcome_log.warning(
            "dead-lettered",
            extra={
                "status": "dlq",
                "reason": outcome.dlq_reason,
                "partition": rec.partition,
                "offset": rec.offset,
            },
        )
