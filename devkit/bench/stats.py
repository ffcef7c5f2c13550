"""What a benchmark run measured, reduced to the figures the suite reports.

    percentile      nearest-rank percentile of a list (nan when empty)
    slope           least-squares slope of (x, y) points; the soak's RSS growth
    after_warmup    the points from the warm-up's end on
    steady          a run's latency figures without its first seconds (a paced run's steady state)
    Sample          what one run collected: per-completion times, counters, process figures
    metrics         a Sample -> the fixed set of figures of one JSON line (`METRIC_KEYS`)
    table           rows of metrics -> a plain-text table for the terminal

Worker overhead is the time to answer less the provider's time: a completion's `queue_ms` (from
the prompt's Kafka timestamp to the completion built) minus its `latency_ms` (the provider
call), for completions that made a call (dedup followers wait for a leader, not a provider).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "METRIC_KEYS",
    "Sample",
    "after_warmup",
    "metrics",
    "percentile",
    "slope",
    "steady",
    "table",
]

METRIC_KEYS = (
    "system",
    "provider_latency_ms",
    "count",
    "completions",
    "ok",
    "errors",
    "throughput_per_s",
    "sustained_per_s",
    "e2e_ms",
    "overhead_ms",
    "provider_calls",
    "dedup_ratio",
    "peak_rss_mb",
    "cpu_s",
    "cpu_s_per_1k",
)
"""The keys of every run's figures, in order (a unit test holds the JSON line to it)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..100) of `values`; nan when there are none."""
    if not values:
        return math.nan
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx of the points; 0.0 with fewer than two distinct x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def after_warmup(
    points: Sequence[tuple[float, float]], warmup_s: float
) -> list[tuple[float, float]]:
    """The points whose x (seconds from the start) is at or past `warmup_s`."""
    return [(x, y) for x, y in points if x >= warmup_s]


@dataclass
class Sample:
    """What one run (one system, one load) collected."""

    system: str  # "worker" or "baseline"
    provider_latency_ms: float
    count: int  # prompts published
    start: float = 0.0  # wall time publishing began
    done: list[float] = field(default_factory=list)  # wall time each completion was read
    e2e_ms: list[float] = field(default_factory=list)  # published -> read
    overhead_ms: list[float] = field(default_factory=list)  # queue_ms - latency_ms
    sent_at: list[float] = field(default_factory=list)  # each e2e_ms's prompt: wall time sent
    overhead_sent_at: list[float] = field(default_factory=list)  # the same for overhead_ms
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error type -> count
    deduplicated: int = 0
    fallbacks: int = 0  # completions a fallback answered
    provider_calls: int = 0
    peak_rss_mb: float = math.nan
    cpu_s: float = math.nan  # the system process's CPU (user + system) during the load

    def add(self, comp: dict[str, Any], now: float, sent: float | None) -> None:
        """Count one completion read at wall time `now` for a prompt sent at `sent`."""
        self.done.append(now)
        if sent is not None:
            self.e2e_ms.append((now - sent) * 1000)
            self.sent_at.append(sent)
        if comp.get("status") == "ok":
            self.ok += 1
        else:
            kind = str((comp.get("error") or {}).get("type", "unknown"))
            self.errors[kind] = self.errors.get(kind, 0) + 1
        if comp.get("fallback_used"):
            self.fallbacks += 1
        if comp.get("deduplicated"):
            self.deduplicated += 1
            return
        queue, call = comp.get("queue_ms"), comp.get("latency_ms")
        if isinstance(queue, int | float) and isinstance(call, int | float):
            self.overhead_ms.append(max(0.0, queue - call))
            self.overhead_sent_at.append(math.nan if sent is None else sent)


def _r(value: float, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def metrics(s: Sample) -> dict[str, Any]:
    """The figures of one run, keyed as `METRIC_KEYS`."""
    n = len(s.done)
    last = max(s.done) if s.done else math.nan
    elapsed = last - s.start if n else math.nan
    ordered = sorted(s.done)
    warm = ordered[min(n - 1, n // 10)] if n else math.nan
    sustained = n * 0.9 / (last - warm) if n and last > warm else math.nan
    return {
        "system": s.system,
        "provider_latency_ms": s.provider_latency_ms,
        "count": s.count,
        "completions": n,
        "ok": s.ok,
        "errors": dict(s.errors),
        "throughput_per_s": _r(n / elapsed if n and elapsed > 0 else math.nan),
        "sustained_per_s": _r(sustained),
        "e2e_ms": {f"p{q}": _r(percentile(s.e2e_ms, q)) for q in (50, 95, 99)},
        "overhead_ms": {f"p{q}": _r(percentile(s.overhead_ms, q), 2) for q in (50, 99)},
        "provider_calls": s.provider_calls,
        "dedup_ratio": _r(s.deduplicated / n if n else math.nan, 3),
        "peak_rss_mb": _r(s.peak_rss_mb),
        "cpu_s": _r(s.cpu_s, 2),
        "cpu_s_per_1k": _r(s.cpu_s / n * 1000 if n else math.nan, 3),
    }


def steady(s: Sample, warmup_s: float) -> dict[str, Any]:
    """The latency figures of the prompts sent `warmup_s` or more after publishing began: a
    paced run's steady state, without the start-up of the worker and of a just-started broker
    (a JVM compiling its hot paths takes over a core for its first seconds, docs/BENCHMARKS.md)."""
    since = s.start + warmup_s
    e2e = [ms for ms, at in zip(s.e2e_ms, s.sent_at, strict=True) if at >= since]
    ovh = [ms for ms, at in zip(s.overhead_ms, s.overhead_sent_at, strict=True) if at >= since]
    return {
        "warmup_s": warmup_s,
        "completions": len(e2e),
        "e2e_ms": {f"p{q}": _r(percentile(e2e, q)) for q in (50, 95, 99)},
        "overhead_ms": {f"p{q}": _r(percentile(ovh, q), 2) for q in (50, 99)},
    }


_COLUMNS = (  # every number's unit in its header
    ("scenario", 14),
    ("system", 10),
    ("lat ms", 8),
    ("done/sent", 16),
    ("compl/s", 9),
    ("e2e p50/p99 ms", 17),
    ("ovh p50/p99 ms", 17),
    ("calls", 8),
    ("dedup %", 8),
    ("RSS MB", 8),
    ("CPU s/1k", 9),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """(scenario, metrics) rows as a fixed-width text table."""
    body: list[tuple[str, ...]] = []
    for scenario, m in rows:
        cells = (
            scenario,
            m["system"],
            _fmt(m["provider_latency_ms"]),
            f"{m['completions']:,}/{m['count']:,}" if m["count"] < 10**6 else _fmt(m["count"]),
            _fmt(m["throughput_per_s"]),
            f"{_fmt(m['e2e_ms']['p50'])}/{_fmt(m['e2e_ms']['p99'])}",
            f"{_fmt(m['overhead_ms']['p50'])}/{_fmt(m['overhead_ms']['p99'])}",
            _fmt(m["provider_calls"]),
            _fmt(None if m["dedup_ratio"] is None else round(m["dedup_ratio"] * 100, 1)),
            _fmt(m["peak_rss_mb"]),
            _fmt(m["cpu_s_per_1k"]),
        )
        body.append(tuple(str(c) for c in cells))
    # each column at least its usual width, wider when a cell needs it (a variant's long name)
    widths = [max([w, *(len(r[i]) + 1 for r in body)]) for i, (_, w) in enumerate(_COLUMNS)]
    lines = ["".join(name.ljust(w) for (name, _), w in zip(_COLUMNS, widths, strict=True))]
    lines += ["".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)
