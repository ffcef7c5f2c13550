"""What each acknowledged outcome leaves behind: counters, metrics, its span's end and one log
line.

Called by the consume loop with every batch of delivery reports, so the per-message cost is a
few dictionary updates and up to four histogram observations, tallied and added to the
histograms once a batch (`metrics.Tally`); counter children are looked up once per batch and
label. Token and cost counters count the completions that called a provider
(a deduplicated answer was paid for once, by the request that called). Overhead is observed
for answers from a provider call: the time to answer minus that call's own time.

`log_outcomes`: `all` logs one JSON line per outcome (INFO for completions, WARNING for dead
letters), `errors` only error completions and dead letters, `none` nothing (the metrics still
count everything). With JSON logs a completion's line is encoded here (msgspec, a struct in
the formatter's field order) and a batch's lines are written at once (`logs.line_sink`); the
line is the one `logging` would give, field for field. Text logs go through `logging`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, get_args

import msgspec

from ..messages import Completion, Usage
from ..records import InputRecord, Outcome
from ..settings import LogOutcomes
from .logs import LineSink, iso_ts, line_sink
from .metrics import PRIORITY_NAMES, Metrics, Tally
from .tracing import Tracing

__all__ = ["LOG_OUTCOMES", "OutcomeRecorder"]

outcome_log = logging.getLogger("llm_worker.outcome")

LOG_OUTCOMES: tuple[str, ...] = get_args(LogOutcomes)

Key = tuple[str, ...]


class CompletionLine(msgspec.Struct, omit_defaults=True):
    """A completion's log line, in `JsonFormatter`'s order (`trace_id`/`span_id` only when
    the outcome has a trace)."""

    ts: str
    level: str
    logger: str
    msg: str
    request_id: str
    model: str
    provider: str | None
    endpoint: str | None
    status: str
    error_type: str | None
    latency_ms: float | None
    queue_ms: float | None
    answer_ms: float | None
    attempts: int
    deduplicated: bool
    fallback_used: bool
    partition: int
    offset: int
    trace_id: str | None = None
    span_id: str | None = None


_encode_line = msgspec.json.Encoder().encode


class _Batch:
    """One batch of delivery reports: its clocks, what it logs, and the counts it adds up."""

    __slots__ = ("by_label", "cost", "lines", "log_errors", "log_ok", "mono", "now", "tokens", "ts")

    def __init__(self, now: float, mono: float, log_ok: bool, log_errors: bool) -> None:
        self.now = now
        self.mono = mono
        self.log_ok = log_ok
        self.log_errors = log_errors
        self.by_label: dict[Key, int] = {}
        self.tokens: dict[Key, int] = {}
        self.cost: dict[Key, float] = {}
        self.lines: list[bytes] = []
        self.ts = iso_ts(now)

    def used(self, model: str, provider: str, usage: Usage) -> None:
        tokens = self.tokens
        up, down = (model, provider, "input"), (model, provider, "output")
        tokens[up] = tokens.get(up, 0) + usage.input_tokens
        tokens[down] = tokens.get(down, 0) + usage.output_tokens
        self.cost[model, provider] = self.cost.get((model, provider), 0.0) + (usage.cost_usd or 0.0)


class OutcomeRecorder:
    def __init__(
        self,
        metrics: Metrics,
        *,
        log_outcomes: str = "all",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if log_outcomes not in LOG_OUTCOMES:
            raise ValueError(f"log_outcomes must be one of {LOG_OUTCOMES}")
        self._metrics = metrics
        self._log_ok = log_outcomes == "all"
        self._log_errors = log_outcomes != "none"
        self._clock = clock
        self._children: dict[tuple[str, Key], Any] = {}
        # a batch's observations, added to the histograms once a batch; queue time by the rank
        # of the completion's priority (label children bound once)
        self._e2e = Tally(metrics.e2e_latency)
        self._to_answer = Tally(metrics.time_to_answer)
        self._overhead = Tally(metrics.overhead)
        self._queue_time = tuple(Tally(metrics.queue_time.labels(n)) for n in PRIORITY_NAMES)
        self._tallies = (self._e2e, self._to_answer, self._overhead, *self._queue_time)
        self.counters: dict[str, int] = {"completed": 0, "errors": 0, "dlq": 0, "batched": 0}

    def _child(self, metric: str, label: Key) -> Any:
        child = self._children.get((metric, label))
        if child is None:
            child = self._children[metric, label] = getattr(self._metrics, metric).labels(*label)
        return child

    def forget_children(self) -> None:
        """After series were removed: look children up again."""
        self._children.clear()

    def record(self, delivered: Sequence[tuple[InputRecord, Outcome, Any]]) -> None:
        """Counters, metrics and outcome logs for delivered messages, one batch at a time."""
        if not delivered:
            return
        log_on = outcome_log.isEnabledFor(logging.INFO)
        batch = _Batch(
            time.time(), self._clock(), self._log_ok and log_on, self._log_errors and log_on
        )
        sink = line_sink(outcome_log) if batch.log_errors else None
        for rec, outcome, _ in delivered:
            if outcome.trace is not None:
                Tracing.delivered(outcome)  # its PRODUCER span ends: Kafka has the record
            c = outcome.completion
            if outcome.stored:
                self.counters["batched"] += 1
            elif c is None:
                self._record_dlq(rec, outcome)
            else:
                self._record_completion(rec, outcome, c, batch, sink)
        if sink is not None:
            sink.write(batch.lines)
        self._add_up(batch)

    def _add_up(self, batch: _Batch) -> None:
        """The batch's observations and counts, into the metrics."""
        for tally in self._tallies:
            tally.flush()
        counters = self.counters
        for key, n in batch.by_label.items():
            counters["completed"] += n
            self._child("completions", key).inc(n)
        for key, n in batch.tokens.items():
            if n:
                self._child("tokens", key).inc(n)
        for key, usd in batch.cost.items():
            if usd:
                self._child("cost", key).inc(usd)

    def _record_completion(
        self,
        rec: InputRecord,
        outcome: Outcome,
        c: Completion,
        batch: _Batch,
        sink: LineSink | None,
    ) -> None:
        label: Key = (outcome.model_label, c.status)
        batch.by_label[label] = batch.by_label.get(label, 0) + 1
        if c.status == "error":
            self.counters["errors"] += 1
            self._metrics.errors.labels(c.error.type if c.error else "unknown").inc()
        if rec.timestamp_ms:
            self._e2e.add(max(0.0, batch.now - rec.timestamp_ms / 1000))
        if outcome.priority >= 0 and c.queue_ms is not None:
            self._queue_time[outcome.priority].add(c.queue_ms / 1000)
        answered = batch.mono - outcome.started if outcome.started else None
        if answered is not None:
            self._to_answer.add(answered)
        usage = c.usage
        if usage is not None and not c.deduplicated and c.provider:
            if answered is not None and c.latency_ms is not None:
                self._overhead.add(max(0.0, answered - c.latency_ms / 1000))
            batch.used(outcome.model_label, c.provider, usage)
        if batch.log_ok or (batch.log_errors and c.status == "error"):
            if sink is not None:
                batch.lines.append(_encode_line(_line(rec, outcome, c, answered, batch.ts)))
            else:
                _log_completion(rec, outcome, answered)

    def _record_dlq(self, rec: InputRecord, outcome: Outcome) -> None:
        self.counters["dlq"] += 1
        self._metrics.dlq.labels(outcome.dlq_reason or "unknown").inc()
        if self._log_errors:
            extra: dict[str, Any] = {
                "status": "dlq",
                "reason": outcome.dlq_reason,
                "partition": rec.partition,
                "offset": rec.offset,
            }
            if outcome.trace is not None:
                extra["trace_id"], extra["span_id"] = outcome.trace.ids()
            outcome_log.warning("dead-lettered", extra=extra)


def _log_completion(rec: InputRecord, outcome: Outcome, answered: float | None) -> None:
    c = outcome.completion
    assert c is not None
    extra: dict[str, Any] = {
        "request_id": c.id,
        "model": c.model,
        "provider": c.provider,
        "endpoint": c.endpoint_name,
        "status": c.status,
        "error_type": c.error.type if c.error else None,
        "latency_ms": c.latency_ms,
        "queue_ms": c.queue_ms,
        "answer_ms": round(answered * 1000, 3) if answered is not None else None,
        "attempts": c.attempts,
        "deduplicated": c.deduplicated,
        "fallback_used": c.fallback_used,
        "partition": rec.partition,
        "offset": rec.offset,
    }
    if outcome.trace is not None:
        extra["trace_id"], extra["span_id"] = outcome.trace.ids()
    outcome_log.info("completion", extra=extra)


def _line(
    rec: InputRecord, outcome: Outcome, c: Completion, answered: float | None, ts: str
) -> CompletionLine:
    line = CompletionLine(
        ts,
        "info",
        "llm_worker.outcome",
        "completion",
        c.id,
        c.model,
        c.provider,
        c.endpoint_name,
        c.status,
        c.error.type if c.error else None,
        c.latency_ms,
        c.queue_ms,
        round(answered * 1000, 3) if answered is not None else None,
        c.attempts,
        c.deduplicated,
        c.fallback_used,
        rec.partition,
        rec.offset,
    )
    if outcome.trace is not None:
        line.trace_id, line.span_id = outcome.trace.ids()
    return line
