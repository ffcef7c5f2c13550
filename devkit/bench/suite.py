"""`llm-worker bench <scenario>...`: the benchmark suite.

Starts one stack (broker of `--broker`, Postgres, a fake provider), runs the named scenarios
one after another (`scenarios.SCENARIOS`), prints one JSON line per scenario on stdout as it
finishes, a progress bar and finally a summary table on stderr. `--plot` draws the
latency-sweep. Exit code 1 when any run missed completions.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any

from llm_worker.devkit.bench.harness import open_stack
from llm_worker.devkit.bench.plot import PlotUnavailable, plot_soak, plot_sweep
from llm_worker.devkit.bench.progress import Progress
from llm_worker.devkit.bench.scenarios import SCENARIOS, Options, describe
from llm_worker.devkit.bench.stats import table

__all__ = [
    "check_names",
    "cpu_regressions",
    "options_from",
    "parse_variant",
    "run_suite",
    "scenario_line",
]


def parse_variant(spec: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`NAME:KEY=VALUE,KEY=VALUE` -> (NAME, ((KEY, VALUE), ...)); ValueError when malformed."""
    name, sep, rest = spec.partition(":")
    pairs = [kv.partition("=") for kv in rest.split(",") if kv]
    if not name or not sep or not pairs or any(not k or not eq for k, eq, _ in pairs):
        raise ValueError(f"--variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    if name in ("worker", "baseline"):
        raise ValueError(f"--variant {spec!r}: {name} is taken")
    return name, tuple((k, v) for k, _, v in pairs)


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        variants=tuple(parse_variant(v) for v in args.variant or ()),
        count=args.count,
        latency_ms=args.latency_ms,
        rate=args.rate,
        duration_s=args.duration,
        baseline=not args.no_baseline,
        partitions=args.partitions,
        timeout_s=args.timeout,
        rounds=args.rounds,
    )


def scenario_line(name: str, broker: str, result: dict[str, Any]) -> dict[str, Any]:
    """The JSON line of one scenario: its name and broker first, then what it measured."""
    return {"scenario": name, "broker": broker, **result}


PLOTTABLE = ("latency-sweep", "soak")
"""The scenarios `--plot` can draw."""


def cpu_regressions(name: str, result: dict[str, Any], max_ratio: float | None) -> list[str]:
    """The systems of one scenario whose CPU per completion is over `max_ratio` times the
    plain loop's in the same invocation (`--max-cpu-ratio`: the regression check)."""
    if max_ratio is None:
        return []
    out = []
    for key, cmp in result.items():
        if key == "vs_baseline" or key.endswith("_vs_baseline"):
            ratio = cmp.get("cpu_per_completion_ratio")
            system = "worker" if key == "vs_baseline" else key.removesuffix("_vs_baseline")
            if ratio is not None and ratio > max_ratio:
                out.append(
                    f"{name}: {system}'s CPU per completion is {ratio:g}x the plain loop's"
                    f" (--max-cpu-ratio {max_ratio:g})"
                )
    return out


def check_names(names: list[str], plot: str | None) -> str | None:
    """Why these scenario names (and --plot) cannot run, or None."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        return f"unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})"
    plotted = [n for n in names if n in PLOTTABLE]
    if plot and len(plotted) != 1:
        given = ", ".join(names) or "no scenario"
        return (
            f"--plot draws one scenario: latency-sweep or soak, once per run (given: {given});"
            " drop --plot or run one of those"
        )
    return None


def run_suite(args: argparse.Namespace) -> int:
    names: list[str] = list(args.scenario)
    problem = check_names(names, args.plot)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    try:
        opts = options_from(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    progress = Progress()
    rows: list[tuple[str, dict[str, Any]]] = []
    medians: list[tuple[str, dict[str, Any]]] = []
    summaries: list[str] = []
    over: list[str] = []  # the regression check's findings
    complete = True
    # the bench client shares the cores: keep the cyclic GC off its (acyclic) bookkeeping
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        with open_stack(args.broker, progress.note, args.py_spy) as stack:
            for name in names:
                progress.note(f"== {name}: {describe(name, opts)}")
                result = SCENARIOS[name].run(stack, opts, progress)
                print(json.dumps(scenario_line(name, args.broker, result)), flush=True)
                over += cpu_regressions(name, result, args.max_cpu_ratio)
                medians += [(name, m) for m in result.get("medians", {}).values()]
                summaries += [f"{name}: {line}" for line in result.get("summary", [])]
                for run in result["runs"]:
                    rows.append((name, run))
                    complete = complete and run["completions"] == run["count"]
                if name in ("latency-sweep", "soak") and args.plot:
                    title = f"llm-worker bench {name} ({args.broker})"
                    try:
                        if name == "soak":
                            plot_soak(result, args.plot, title)
                        else:
                            plot_sweep(result["runs"], args.plot, title)
                        progress.note(f"plot written to {args.plot}")
                    except PlotUnavailable as exc:
                        progress.note(str(exc))
    finally:
        gc.enable()
    print("\n" + table(rows), file=sys.stderr)
    for name, med in medians:
        spread = ", ".join(
            f"{k} {med[k]:g} ({med[k + '_range'][0]:g}-{med[k + '_range'][1]:g})"
            for k in ("throughput_per_s", "cpu_s_per_1k")
            if k in med
        )
        print(f"{name} {med['system']}, median of {med['rounds']}: {spread}", file=sys.stderr)
    for line in summaries:
        print(line, file=sys.stderr)
    for line in over:
        print(f"bench: {line}", file=sys.stderr)
    return 0 if complete and not over else 1
