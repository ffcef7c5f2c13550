"""The suite's named scenarios: what load each runs, against which systems, what it adds.

Each scenario is a function `(stack, options, progress) -> result`, registered in `SCENARIOS`
under its name with a one-line help. A result is one JSON line: `scenario`, `broker`, `runs`
(one `stats.metrics` dict per system and load) and what the scenario adds (ratios against the
baseline, the soak's RSS slope...). Where the plain loop can run the same load it runs in the
same invocation, right after the worker, on the same broker, Postgres and fake provider.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from llm_worker.devkit.bench.harness import (
    Load,
    Run,
    Stack,
    provider_batches,
    read_topic,
    run_load,
    set_profile,
)
from llm_worker.devkit.bench.progress import Progress
from llm_worker.devkit.bench.stats import after_warmup, metrics, percentile, slope, steady
from llm_worker.devkit.bench.streaming import chunk_figures, prompt_times, scraped

__all__ = [
    "SCENARIOS",
    "SWEEP_MS",
    "Options",
    "Scenario",
    "batch_figures",
    "compare",
    "describe",
    "priority_figures",
    "soak_summary",
]

SWEEP_MS = (5.0, 20.0, 100.0, 500.0, 2000.0)
"""Provider latencies of `latency-sweep` (and of its plot)."""

SWEEP_COUNT = {5.0: 10_000, 20.0: 10_000, 100.0: 10_000, 500.0: 20_000, 2000.0: 20_000}
"""Prompts per sweep point (without -n): enough at the slow points for the worker's adaptive
limit to have grown (it starts low and learns), at most a few minutes of the plain loop."""


@dataclass(frozen=True)
class Options:
    count: int | None = None  # prompts per run (scenario default when None)
    latency_ms: float | None = None
    rate: float | None = None  # paced prompts/s (scenario default when None)
    duration_s: float | None = None  # paced scenarios: how long to publish
    baseline: bool = True  # run the plain loop next to the worker where it can
    # more worker runs next to the worker: (name, environment on top of the worker's)
    variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    partitions: int = 4
    timeout_s: float = 900.0
    rounds: int = 1  # side-by-side scenarios: the systems this many times, interleaved


Result = dict[str, Any]
Runner = Callable[[Stack, Options, Progress], Result]


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    run: Runner


SCENARIOS: dict[str, Scenario] = {}


def _scenario(name: str, help: str) -> Callable[[Runner], Runner]:
    def register(fn: Runner) -> Runner:
        SCENARIOS[name] = Scenario(name, help, fn)
        return fn

    return register


_COUNT = re.compile(r"^[\d,]+(?:-[\d,]+)? prompts")


def describe(name: str, opts: Options) -> str:
    """The scenario's banner: its help, with the prompt count `-n` gives when it gives one."""
    text = SCENARIOS[name].help
    if not opts.count:
        return text
    count = f"{opts.count:,} prompts"
    if _COUNT.match(text):
        return _COUNT.sub(count, text)
    return f"{text}; {count} per run"


def compare(worker: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The worker against the plain loop in one run: throughput and CPU per completion."""

    def ratio(a: Any, b: Any) -> float | None:
        return round(a / b, 2) if a and b else None

    return {
        "throughput_ratio": ratio(worker["throughput_per_s"], base["throughput_per_s"]),
        "sustained_ratio": ratio(worker["sustained_per_s"], base["sustained_per_s"]),
        "cpu_per_completion_ratio": ratio(worker["cpu_s_per_1k"], base["cpu_s_per_1k"]),
    }


def _systems(opts: Options) -> list[tuple[str, dict[str, str]]]:
    systems: list[tuple[str, dict[str, str]]] = [("worker", {})]
    systems += [(name, dict(env)) for name, env in opts.variants]
    return [*systems, ("baseline", {})] if opts.baseline else systems


T = TypeVar("T")


def rotation(systems: list[T], rounds: int) -> list[T]:
    """The systems' runs, round after round, each round starting one system later: over as
    many rounds as systems, each runs once in each place (first, after a given other one),
    so what a place costs (the run before it still settling on the broker, say) falls on
    each alike."""
    n = len(systems)
    return [systems[(r + i) % n] for r in range(max(1, rounds)) for i in range(n)]


def paired_cpu_ratio(runs: list[Result], system: str, n_systems: int) -> float | None:
    """The median over the rounds of `system`'s CPU per completion over the plain loop's in
    the same round (`runs` in rounds of `n_systems`): the machine's drift between rounds
    weighs on both sides of each ratio."""
    ratios = []
    for start in range(0, len(runs), n_systems):
        by = {r["system"]: r.get("cpu_s_per_1k") for r in runs[start : start + n_systems]}
        a, b = by.get(system), by.get("baseline")
        if a and b:
            ratios.append(a / b)
    return round(statistics.median(ratios), 3) if ratios else None


def _side_by_side(stack: Stack, opts: Options, progress: Progress, load: Load) -> Result:
    systems = _systems(opts)
    runs = [
        metrics(run_load(stack, system, load, progress, env)[0])
        for system, env in rotation(systems, opts.rounds)
    ]
    out: Result = {"runs": runs}
    if opts.rounds > 1:  # each system's median over the rounds, compared as one run's are
        by = {name: medians([r for r in runs if r["system"] == name]) for name, _ in systems}
        out["medians"] = by
        picked = list(by.values())
    else:
        picked = runs
    if opts.baseline:
        out["vs_baseline"] = compare(picked[0], picked[-1])
        for run in picked[1:-1]:
            out[f"{run['system']}_vs_baseline"] = compare(run, picked[-1])
        if opts.rounds > 1:
            out["summary"] = []
            for run in picked[:-1]:
                key = "vs_baseline" if run is picked[0] else f"{run['system']}_vs_baseline"
                paired = paired_cpu_ratio(runs, run["system"], len(systems))
                out[key]["paired_cpu_ratio"] = paired
                out["summary"].append(
                    f"{run['system']}: CPU per completion {paired}x the plain loop's, the median"
                    f" of {opts.rounds} rounds' own ratios (each round in a rotated order)"
                    if paired is not None
                    else f"{run['system']}: no paired CPU ratio (no round had both CPU figures)"
                )
    return out


def medians(runs: list[Result]) -> Result:
    """One system's rounds: the median of each figure a comparison reads, and the spread."""
    out: Result = {"system": runs[0]["system"], "rounds": len(runs)}
    for key in ("throughput_per_s", "sustained_per_s", "cpu_s_per_1k"):
        values = sorted(r[key] for r in runs if r.get(key) is not None)
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_range"] = [values[0], values[-1]]
    return out


def _paced(opts: Options, rate: float, duration_s: float) -> tuple[float, float, int]:
    r = opts.rate or rate
    d = opts.duration_s or duration_s
    return r, d, opts.count or max(1, round(r * d))


@_scenario("throughput", "20,000 prompts at 20 ms, all at once (or paced with --rate)")
def _throughput(stack: Stack, opts: Options, progress: Progress) -> Result:
    load = Load(
        count=opts.count or 20_000,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=opts.rate,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
    )
    return _side_by_side(stack, opts, progress, load)


@_scenario("latency-sweep", "10,000-20,000 prompts at once at each latency 5..2,000 ms")
def _sweep(stack: Stack, opts: Options, progress: Progress) -> Result:
    runs: list[dict[str, Any]] = []
    for latency in SWEEP_MS:
        load = Load(
            count=opts.count or SWEEP_COUNT[latency],
            latency_ms=latency,
            rate=opts.rate,
            partitions=opts.partitions,
            timeout_s=opts.timeout_s,
        )
        runs.extend(_side_by_side(stack, opts, progress, load)["runs"])
    return {"runs": runs}


@_scenario("duplicates", "20,000 prompts at once, 70% repeating an earlier prompt")
def _duplicates(stack: Stack, opts: Options, progress: Progress) -> Result:
    load = Load(
        count=opts.count or 20_000,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=opts.rate,
        duplicates=0.7,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
    )
    return _side_by_side(stack, opts, progress, load)


JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "classification",
        "schema": {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["label", "confidence"],
            "additionalProperties": False,
        },
    },
}
"""What the `structured` scenario asks of every prompt: a classification, checked."""


@_scenario("structured", "20,000 prompts at 20 ms: plain, then each with a json_schema (checked)")
def _structured(stack: Stack, opts: Options, progress: Progress) -> Result:
    """The output check's cost, side by side: the worker on plain prompts, the worker on the
    same prompts each asking a JSON schema (the fake answers valid JSON; every answer is
    parsed and validated), and the plain loop."""
    plain = Load(
        count=opts.count or 20_000,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=opts.rate,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
    )
    schema = replace(plain, response_format=JSON_SCHEMA_FORMAT)
    runs = [metrics(run_load(stack, "worker", plain, progress)[0])]
    runs.append(metrics(run_load(stack, "worker+json_schema", schema, progress)[0]))
    out: Result = {"runs": runs}
    if opts.baseline:
        runs.append(metrics(run_load(stack, "baseline", plain, progress)[0]))
        out["vs_baseline"] = compare(runs[0], runs[-1])
        out["worker+json_schema_vs_baseline"] = compare(runs[1], runs[-1])
    out["json_schema_vs_plain"] = compare(runs[1], runs[0])
    return out


@_scenario(
    "half-load",
    "the worker's burst rate, then (Apache Kafka) 60 s to warm the broker, 15 s of warm-up"
    " and 20 s paced at half of it; then the plain loop, its burst and paced at the same rate",
)
def _half_load(stack: Stack, opts: Options, progress: Progress) -> Result:
    burst = Load(
        count=opts.count or 20_000,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
    )
    full = metrics(run_load(stack, "worker", burst, progress)[0])
    # half the burst's completions/s (N / its duration). Its `sustained_per_s` (the rate after
    # the first 10%) is the burst's peak: paced at half of it, the broker, the fake provider,
    # the publisher and the worker together saturated the 2 cores and the run fell behind.
    rate = opts.rate or round((full["throughput_per_s"] or full["sustained_per_s"] or 100) / 2)
    warm_s = BROKER_WARMUP_S.get(stack.broker, 0.0)
    if warm_s:  # the broker's own warm-up, paced as the run: its figures are not kept
        warm = replace(burst, count=round(rate * warm_s), rate=rate)
        run_load(stack, "worker", warm, progress)
    paced = _paced_after(stack, "worker", burst, rate, opts, progress)
    out: Result = {"runs": [full, paced.half], "rate": rate, "steady": paced.calm}
    out["broker_warmup_s"] = warm_s
    out["paced_vs_burst_cpu"] = {"worker": paced.cpu_ratio(full)}
    summary = [f"worker {paced.line(rate, full)}; the broker warmed for {warm_s:g} s first"]
    if opts.baseline:
        # the plain loop under the same two loads: what pacing costs a consumer with none of
        # the worker's features (the same rate, so the same records/s reach both)
        base_full = metrics(run_load(stack, "baseline", burst, progress)[0])
        base = _paced_after(stack, "baseline", burst, rate, opts, progress)
        out["runs"] += [base_full, base.half]
        out["baseline_steady"] = base.calm
        out["paced_vs_burst_cpu"]["baseline"] = base.cpu_ratio(base_full)
        out["paced_vs_baseline"] = compare(paced.half, base.half)
        summary.append(f"plain loop {base.line(rate, base_full)}")
    out["summary"] = summary
    return out


@dataclass(frozen=True)
class _Paced:
    """A paced run's figures (`half`) and those of its steady state (`calm`)."""

    half: Result
    calm: Result

    def cpu_ratio(self, burst: Result) -> float | None:
        """CPU per completion against `burst`'s; None when either has none."""
        ratio: float | None = compare(self.half, burst)["cpu_per_completion_ratio"]
        return ratio

    def line(self, rate: float, burst: Result) -> str:
        ovh = self.calm["overhead_ms"]
        return (
            f"paced at {rate}/s ({self.half['throughput_per_s']}/s done): CPU per completion"
            f" {self.cpu_ratio(burst)}x the burst's; from {HALF_LOAD_WARMUP_S:g} s on,"
            f" worker-added ms p50 {ovh['p50']}, p99 {ovh['p99']}"
            f" ({self.calm['completions']} completions)"
        )


def _paced_after(
    stack: Stack, system: str, burst: Load, rate: float, opts: Options, progress: Progress
) -> _Paced:
    """`system` paced at `rate`: `HALF_LOAD_WARMUP_S` of warm-up, then `--duration` (20 s)
    measured."""
    count = round(rate * (HALF_LOAD_WARMUP_S + (opts.duration_s or 20.0)))
    sample = run_load(stack, system, replace(burst, count=count, rate=rate), progress)[0]
    return _Paced(metrics(sample), steady(sample, HALF_LOAD_WARMUP_S))


BROKER_WARMUP_S = {"kafka": 60.0}
"""Seconds of `half-load`'s paced load run through a freshly started broker before the run it
measures (a worker of its own; nothing of it is kept), by broker. Apache Kafka's JVM is still
compiling for a minute of load: six paced runs of 15 s at 2,400/s, one after the other on one
broker, gave worker-added p99 of 98, 29 and 73 ms in the first three (the broker 25-95 s into
its load) and 11, 5.5 and 7.8 ms in the next three, the same worker code and settings
(docs/BENCHMARKS.md, fourth round). Tansu has no such stretch."""

HALF_LOAD_WARMUP_S = 15.0
"""`half-load`'s paced run publishes this long before the `--duration` its `steady` latency
figures are taken from: on Apache Kafka the broker's JVM compiles for its first 10-15 s of load,
taking over a core of the two the whole stack shares (`top`: 90-113% in the first seconds,
35-55% at the end of a 20 s run), and the worker-added time of that stretch is the broker's."""


ORDERING_KEYS = 100
ORDERING_PARTITIONS = 6


@_scenario(
    "ordering",
    "5,000 prompts over 100 keys and 6 partitions, provider latency 20-200 ms: LLM_WORKER_ORDERING "
    "none, key and partition, and key mode with one key per partition (one call at a time "
    "per partition)",
)
def _ordering(stack: Stack, opts: Options, progress: Progress) -> Result:
    lat = opts.latency_ms if opts.latency_ms is not None else 110.0
    load = Load(
        count=opts.count or 5_000,
        latency_ms=lat,
        jitter_ms=lat * 9 / 11,  # 110 ms: 20-200 ms
        partitions=ORDERING_PARTITIONS,
        timeout_s=opts.timeout_s,
        keys=ORDERING_KEYS,
    )
    one_each = replace(load, key_per_partition=True)
    systems = [
        ("worker", load, {}),
        ("worker+key", load, {"LLM_WORKER_ORDERING": "key"}),
        ("worker+partition", load, {"LLM_WORKER_ORDERING": "partition"}),
        ("one-per-partition", one_each, {"LLM_WORKER_ORDERING": "key"}),
    ]
    runs = [metrics(run_load(stack, name, ld, progress, env)[0]) for name, ld, env in systems]
    by = {r["system"]: r for r in runs}

    def ratio(a: str, b: str) -> float | None:
        x, y = by[a]["throughput_per_s"], by[b]["throughput_per_s"]
        return round(x / y, 2) if x and y else None

    return {
        "runs": runs,
        "key_vs_none": ratio("worker+key", "worker"),
        "key_vs_one_per_partition": ratio("worker+key", "one-per-partition"),
        "partition_vs_none": ratio("worker+partition", "worker"),
    }


STREAM_TOKEN_DELAY_MS = 20.0
"""The fake's pause before each streamed event after the first (`streaming`)."""

STREAM_PAUSES = 11
"""Pauses in the fake's stream of a bench prompt's answer: its events are the role, the 8 words
("[fake:fake-bench] benchmark prompt number N about stream processing"), the finish, the usage
and `[DONE]`, so the call lasts `latency_ms + 11 * token_delay_ms`; the unstreamed runs of
`streaming` get that as their latency (the provider holds both calls as long)."""


def _streamed(stack: Stack, system: str, load: Load, progress: Progress) -> dict[str, Any]:
    """One run of `streaming`: its figures, and for a streamed load what its chunks say."""
    sample, run = run_load(stack, system, load, progress)
    out = metrics(sample)
    if not load.stream:
        return out
    prompts = read_topic(stack.bootstrap, f"bench_prompts_{run.run_id}", load.partitions)
    chunks = read_topic(stack.bootstrap, f"bench_chunks_{run.run_id}", load.partitions)
    first_word_ms = load.latency_ms + load.token_delay_ms
    out["chunks"] = chunk_figures(chunks, prompt_times(prompts), first_word_ms)
    out["worker_metrics"] = scraped(run.metrics_text)
    return out


@_scenario(
    "streaming",
    "5,000 prompts streamed (20 ms to the first event, 20 ms per word), the same unstreamed; "
    "then both paced at half the streamed burst rate for 20 s (worker only)",
)
def _streaming(stack: Stack, opts: Options, progress: Progress) -> Result:
    """Streaming's cost, side by side: the worker on prompts with `"stream": true` (the fake
    streams one event per word, `STREAM_TOKEN_DELAY_MS` apart), then on the same prompts
    without (the completion-only path; the fake answering whole after as long as the stream
    took), all at once; then both paced at half the streamed run's burst rate, where the time
    to the first chunk is read."""
    ttfb = opts.latency_ms if opts.latency_ms is not None else 20.0
    stream = Load(
        count=opts.count or 5_000,
        latency_ms=ttfb,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
        stream=True,
        token_delay_ms=STREAM_TOKEN_DELAY_MS,
        scrape_metrics=True,
    )
    plain = replace(stream, stream=False, latency_ms=ttfb + STREAM_PAUSES * STREAM_TOKEN_DELAY_MS)
    runs = [
        _streamed(stack, "worker+stream", stream, progress),
        _streamed(stack, "worker", plain, progress),
    ]
    burst = runs[0]
    rate = opts.rate or round((burst["sustained_per_s"] or burst["throughput_per_s"] or 100) / 2)
    count = max(1, round(rate * (opts.duration_s or 20.0)))
    runs.append(
        _streamed(stack, "worker+stream@half", replace(stream, count=count, rate=rate), progress)
    )
    runs.append(_streamed(stack, "worker@half", replace(plain, count=count, rate=rate), progress))
    return {
        "runs": runs,
        "rate": rate,
        "token_delay_ms": STREAM_TOKEN_DELAY_MS,
        "stream_vs_plain": compare(runs[0], runs[1]),
        "stream_vs_plain_at_half": compare(runs[2], runs[3]),
    }


def _fail_primary(run: Run) -> None:
    set_profile(run.stack, run.profile, error_rate=1.0, error_status=503)


def _heal_primary(run: Run) -> None:
    set_profile(run.stack, run.profile, error_rate=0.0)


@_scenario("failover", "paced load; the primary answers 503 for the middle third (worker only)")
def _failover(stack: Stack, opts: Options, progress: Progress) -> Result:
    rate, duration, count = _paced(opts, 500.0, 30.0)
    load = Load(
        count=count,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=rate,
        partitions=opts.partitions,
        timeout_s=max(opts.timeout_s, duration * 3),
        fallback=True,
        events=[(duration / 3, _fail_primary), (duration * 2 / 3, _heal_primary)],
    )
    sample, _run = run_load(stack, "worker", load, progress)
    return {"runs": [metrics(sample)], "fallback_answers": sample.fallbacks}


def _slow(latency_ms: float) -> Callable[[Run], None]:
    def act(run: Run) -> None:
        set_profile(run.stack, run.profile, latency_ms=latency_ms)

    return act


@_scenario("slow-provider", "paced load; the provider goes 200 ms -> 2 s -> 200 ms")
def _slow_provider(stack: Stack, opts: Options, progress: Progress) -> Result:
    rate, duration, count = _paced(opts, 400.0, 30.0)
    load = Load(
        count=count,
        latency_ms=200.0,
        rate=rate,
        partitions=opts.partitions,
        timeout_s=max(opts.timeout_s, duration * 4),
        events=[(duration / 3, _slow(2000.0)), (duration * 2 / 3, _slow(200.0))],
    )
    return _side_by_side(stack, opts, progress, load)


def soak_summary(rss: list[tuple[float, float]], duration_s: float) -> dict[str, Any]:
    """RSS samples -> the soak's verdict: growth after the warm-up, in MB per hour, and over
    the run's second half (bounded state fills over minutes, then stays: a leak keeps the
    slope of the second half; a level that was reached does not)."""
    warmup = min(120.0, duration_s * 0.2)
    steady = after_warmup(rss, warmup)
    late = after_warmup(rss, duration_s / 2)
    return {
        "warmup_s": warmup,
        "rss_samples": len(rss),
        "rss_mb_first_last": [round(steady[0][1], 1), round(steady[-1][1], 1)] if steady else None,
        "rss_slope_mb_per_h": round(slope(steady) * 3600, 2) if len(steady) >= 2 else None,
        "rss_slope_second_half_mb_per_h": round(slope(late) * 3600, 2) if len(late) >= 2 else None,
        "rss_mb": [round(mb, 1) for _, mb in rss],  # every sample, warm-up included
    }


@_scenario("soak", "steady paced load for 30 min (--duration), RSS every 10 s (worker only)")
def _soak(stack: Stack, opts: Options, progress: Progress) -> Result:
    rate, duration, count = _paced(opts, 500.0, 1800.0)
    load = Load(
        count=count,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=rate,
        partitions=opts.partitions,
        timeout_s=duration * 2 + 60,
        rss_every_s=10.0,
    )
    sample, run = run_load(stack, "worker", load, progress)
    return {
        "runs": [metrics(sample)],
        "duration_s": duration,
        "rate": rate,
        "rss_every_s": 10.0,
        **soak_summary(run.rss, duration),
    }


PRIORITY_MIX = ("high",) + ("low",) * 9
"""The `priority` scenario's prompts, in turn: one in ten high, the rest low."""

PRIORITY_RPM = 300
"""... its row's rpm_limit (5/s), below the rate it publishes at (`PRIORITY_RATE`) ..."""

PRIORITY_RATE = 7.5
"""... so a backlog of low prompts grows by 2.5/s in the worker: to 250 in the 100 s it
publishes, within the worker's intake (at least 256 in flight), so the worker holds the backlog
it reorders (records still in Kafka are read in partition order)."""


def priority_figures(
    completions: list[dict[str, Any]], run_id: str, mix: tuple[str, ...]
) -> dict[str, Any]:
    """The completions' `queue_ms` by the priority their prompt said (prompt `i` of the run,
    id `<run_id>-<i>`, said `mix[i % len(mix)]`): count, p50 and p95 of each, side by side,
    and the ratio of the high p95 to the low."""
    by: dict[str, list[float]] = {}
    for c in completions:
        head, _, number = str(c.get("id", "")).rpartition("-")
        queue_ms = c.get("queue_ms")
        if head != run_id or not number.isdigit() or queue_ms is None:
            continue
        by.setdefault(mix[int(number) % len(mix)], []).append(float(queue_ms))
    out: dict[str, Any] = {}
    for name in dict.fromkeys(mix):
        values = by.get(name, [])
        out[name] = {
            "count": len(values),
            "queue_ms_p50": round(percentile(values, 50), 1) if values else None,
            "queue_ms_p95": round(percentile(values, 95), 1) if values else None,
        }
    high, low = out.get("high", {}).get("queue_ms_p95"), out.get("low", {}).get("queue_ms_p95")
    out["high_vs_low_p95"] = round(high / low, 3) if high is not None and low else None
    return out


@_scenario(
    "priority",
    "750 prompts paced at 7.5/s, one in ten high-priority, the rest low, to a row limited to "
    "5/s: high and low queue_ms side by side (worker only)",
)
def _priority(stack: Stack, opts: Options, progress: Progress) -> Result:
    """Priority under saturation: the row's `rpm_limit` serves fewer prompts than arrive, so a
    backlog of low ones waits in the worker; the high ones among them should wait for about a
    burst of the limit (1 s), not for the backlog. Done when the high p95 is at most a tenth
    of the low's."""
    rate, _, count = _paced(opts, PRIORITY_RATE, 100.0)
    load = Load(
        count=count,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=rate,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
        priorities=PRIORITY_MIX,
        rpm_limit=PRIORITY_RPM,
    )
    sample, run = run_load(stack, "worker", load, progress)
    topic = f"bench_completions_{run.run_id}"
    done = [json.loads(r.value) for r in read_topic(stack.bootstrap, topic, load.partitions)]
    figures = priority_figures(done, run.run_id, PRIORITY_MIX)
    return {"runs": [metrics(sample)], "rate": rate, "rpm_limit": PRIORITY_RPM, **figures}


BATCH_COST_PER_1K = (0.001, 0.002)
"""The `batch` scenario's row prices, USD per 1,000 input and output tokens, in both runs; the
row gives no batch prices, so the batch lane's are half of these."""

BATCH_ENV = {"LLM_WORKER_BATCH_MAX_WAIT_S": "1", "LLM_WORKER_BATCH_POLL_S": "0.5"}
"""The batch run's worker: a job is submitted a second after its oldest request came (not 5
minutes), and asked about twice a second (not every 30 s), as the fake's jobs take 1 s."""


def batch_figures(completions: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """The completions of one run (id `<run_id>-<i>`, the first of each id): how many, by
    lane, their `usage.cost_usd` summed, and the batch jobs that answered them (distinct
    `batch_id`)."""
    seen: set[str] = set()
    lanes: dict[str, int] = {}
    jobs: set[str] = set()
    cost = 0.0
    for c in completions:
        cid = str(c.get("id", ""))
        head, _, number = cid.rpartition("-")
        if head != run_id or not number.isdigit() or cid in seen:
            continue
        seen.add(cid)
        lane = str(c.get("lane") or "online")
        lanes[lane] = lanes.get(lane, 0) + 1
        cost += float((c.get("usage") or {}).get("cost_usd") or 0.0)
        if c.get("batch_id"):
            jobs.add(str(c["batch_id"]))
    return {
        "completions": len(seen),
        "lanes": lanes,
        "cost_usd": round(cost, 6),
        "batch_jobs": len(jobs),
    }


def _lane_run(
    stack: Stack, system: str, load: Load, progress: Progress, env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run of `batch`: its figures, and what it cost and called."""
    sample, run = run_load(stack, system, load, progress, env)
    figures = metrics(sample)
    topic = f"bench_completions_{run.run_id}"
    done = [json.loads(r.value) for r in read_topic(stack.bootstrap, topic, load.partitions)]
    jobs = provider_batches(stack, run.profile)
    return figures, {
        **batch_figures(done, run.run_id),
        "seconds_to_last": round(max(sample.done) - sample.start, 2) if sample.done else None,
        "throughput_per_s": figures["throughput_per_s"],
        "live_provider_calls": sample.provider_calls,
        "provider_batch_jobs": len(jobs),
        "provider_batch_requests": sum(int(b.get("requests", 0)) for b in jobs),
    }


@_scenario(
    "batch",
    "10,000 prompts at 20 ms online, then the same through the batch lane (row prices set; "
    "the fake's batch clock runs a job in 1 s, a provider's in hours): completions, time, "
    "cost, provider calls and batch jobs side by side (worker only)",
)
def _batch(stack: Stack, opts: Options, progress: Progress) -> Result:
    """The batch lane against the online path on the same prompts and the same row prices: the
    worker answers them live, then (a row with `lane = 'batch'`) stores them and answers them
    through the fake's OpenAI Batch API, a job submitted a second after its oldest request.
    The batch run's time is the lane's own (intake, submit, poll, deliver) plus the fake's
    accelerated 1 s a job, not the provider's turnaround (up to 24 h). Done when every prompt
    is answered in both, the batch one with no live call and at about half the cost."""
    online = Load(
        count=opts.count or 10_000,
        latency_ms=opts.latency_ms if opts.latency_ms is not None else 20.0,
        rate=opts.rate,
        partitions=opts.partitions,
        timeout_s=opts.timeout_s,
        cost_per_1k=BATCH_COST_PER_1K,
    )
    batch = replace(online, lane="batch")
    run_on, side_on = _lane_run(stack, "worker", online, progress, {})
    run_b, side_b = _lane_run(stack, "worker+batch", batch, progress, dict(BATCH_ENV))
    cost_on, cost_b = side_on["cost_usd"], side_b["cost_usd"]
    return {
        "runs": [run_on, run_b],
        "cost_per_1k": list(BATCH_COST_PER_1K),
        "online": side_on,
        "batch": side_b,
        "cost_ratio": round(cost_b / cost_on, 3) if cost_on else None,
    }
