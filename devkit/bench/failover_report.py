"""The failover bench's human summary, built from its JSON result."""

from __future__ import annotations

from typing import Any

from llm_worker.devkit.bench.throughput import percentile

__all__ = ["answered_by", "circuit_summary", "stats", "summary"]


def stats(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of `values`, rounded to 0.1 (None when there are none)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


def answered_by(comp: dict[str, Any]) -> str | None:
    """The upstream model the fake provider saw: its text is `[fake:<model>] ...`."""
    text = comp.get("text")
    if comp.get("status") != "ok" or not isinstance(text, str) or not text.startswith("[fake:"):
        return None
    return text[len("[fake:") : text.find("]")]


def circuit_summary(
    circuits: list[tuple[float, int, str]], commits: list[tuple[int, float]]
) -> list[str]:
    """Breaker state changes in the workers, each placed relative to the latest commit."""
    out = []
    for t, r, what in circuits:
        before = [(gen, c) for gen, c in commits if c <= t]
        where = (
            f"{(t - before[-1][1]) * 1000:.0f} ms after switch {before[-1][0]}"
            if before
            else "before the first switch"
        )
        out.append(f"replica {r}: -> {what}, {where}")
    return out


def _row(label: str, st: dict[str, float | None]) -> str:
    cells = "  ".join(f"{k} {st[k]}" for k in ("p50", "p95", "p99", "max"))
    return f"  {label:<58} {cells}"


def summary(result: dict[str, Any], model_id: str, stale_after_s: float) -> str:
    """The lines printed after the JSON result."""
    n, seen = result["switches"], result["switches_observed"]
    complete = n - result["switches_incomplete"]
    lines = [
        "",
        f"{n} switches a<->b of row {model_id!r} under {result['rate']:g} prompts/s, "
        f"{result['workers']} replicas, {result['partitions']} partitions, "
        f"provider {result['provider_latency_ms']:g} ms",
        _row(f"failover: commit -> first new answer ({seen}/{n}), ms", result["failover_ms"]),
        _row(f"every partition switched ({complete}/{n}), ms", result["all_partitions_ms"]),
        _row("commit -> a replica reloaded (NOTIFY), ms", result["reload_ms"]),
        _row("commit -> first new completion built (worker), ms", result["first_built_ms"]),
        _row("publish -> completion read, all prompts, ms", result["e2e_ms"]),
        _row("completion built -> read (output path), ms", result["output_path_ms"]),
        _row("update_row (connect, UPDATE, COMMIT), ms", result["update_ms"]),
    ]
    for rep in result["per_replica"]:
        r = rep["replica"]
        lines.append(
            _row(
                f"replica {r} {rep['partitions']}: first new answer "
                f"({rep['switches_observed']}/{n}), ms",
                rep["failover_ms"],
            )
        )
        lines.append(_row(f"replica {r}: reloaded, ms", rep["reload_ms"]))
        lines.append(_row(f"replica {r}: publish -> completion, ms", rep["e2e_ms"]))
    lines.append(
        f"  stale answers (earlier target, published > {stale_after_s:g} s after commit): "
        f"{result['stale_answers']}; earlier-target answers for prompts published after a "
        f"commit: {result['old_answers_after_commit']}, the latest published "
        f"{result['old_answer_latest_sent_ms']['max']} ms after its commit"
    )
    if result["found_only_by_reread"]:
        lines.append(
            f"  {result['found_only_by_reread']} completions the live reader skipped were found "
            "by a read from the start of the topic (left out of the latencies)"
        )
    error_types = result["error_types"]
    lines.append(
        f"  {result['completions']}/{result['published']} completions, {result['errors']} errors"
        f"{f' {error_types}' if error_types else ''}, "
        f"{result['rebalances_during_run']} rebalances during the run"
    )
    if seen < n or complete < n:
        lines.append(
            "  WARNING: some switches never reached every partition before the next one; "
            "the percentiles above leave them out (see errors and circuit changes)"
        )
    lines.extend(f"  circuit: {change}" for change in result["circuit_changes"])
    return "\n".join(lines)
