"""The devkit's commands on `llm-worker`: dev, fake-provider, bench, bench-failover,
bench-adapters, bench-telemetry (the service's command line adds them when the devkit is here:
`llm_worker.worker.cli.main`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TypeAlias

__all__ = ["add_commands"]

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_commands(sub: Subcommands) -> None:
    for add in (_add_dev, _add_fake_provider, _add_bench, _add_bench_tools):
        add(sub)


def _cmd_fake_provider(args: argparse.Namespace) -> int:
    from llm_worker.devkit.fake_server import run_fake_server

    profiles: dict[str, dict[str, Any]] = {}
    for spec in args.profile or []:
        name, _, rest = spec.partition(":")
        conf: dict[str, Any] = {}
        for kv in filter(None, rest.split(",")):
            k, _, v = kv.partition("=")
            conf[k.strip()] = float(v) if k.strip() != "error_status" else int(v)
        profiles[name] = conf
    run_fake_server(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        profiles=profiles,
    )
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from llm_worker.devkit.dev import run_dev

    return run_dev(
        demo=args.demo,
        fake_port=args.fake_port,
        http_port=args.http_port,
        once=args.once,
        broker_kind=args.broker,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.plot and not args.scenario:
        print(
            "bench: --plot draws a scenario: latency-sweep or soak (`bench latency-sweep --plot"
            " FILE.png`)",
            file=sys.stderr,
        )
        return 2
    if args.py_spy:
        from llm_worker.devkit.bench.harness import py_spy_path

        if not args.scenario or py_spy_path() is None:
            why = "a suite scenario" if not args.scenario else "py-spy (pip install py-spy)"
            print(f"bench: --py-spy needs {why}", file=sys.stderr)
            return 2
    if args.scenario:
        from llm_worker.devkit.bench.suite import run_suite

        return run_suite(args)
    from llm_worker.devkit.bench.throughput import run_bench

    # without a scenario: the single load of before the suite, with its defaults
    args.count = args.count or 20_000
    args.latency_ms = 20.0 if args.latency_ms is None else args.latency_ms
    return run_bench(args)


def _cmd_bench_failover(args: argparse.Namespace) -> int:
    from llm_worker.devkit.bench.failover import run_failover_bench

    return run_failover_bench(args)


def _cmd_bench_adapters(args: argparse.Namespace) -> int:
    from llm_worker.devkit.bench.adapters import run_adapter_bench

    return run_adapter_bench(args.calls)


def _cmd_bench_telemetry(args: argparse.Namespace) -> int:
    from llm_worker.devkit.bench.telemetry import run_telemetry_bench

    return run_telemetry_bench(args)


def _broker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="the local broker: tansu (pip only, memory) or kafka (Apache Kafka 4, needs Java 17+"
        " and KAFKA_HOME or Maven); ignored when KAFKA_BOOTSTRAP_SERVERS is set",
    )


def _add_dev(sub: Subcommands) -> None:
    """`dev`: the local stack."""
    dev = sub.add_parser("dev", help="local broker + Postgres + fake provider + worker")
    dev.add_argument("--demo", action="store_true", help="also send sample prompts and print them")
    dev.add_argument(
        "--fake-port", type=int, default=0, help="the fake provider's port (default: a free one)"
    )
    dev.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="the worker's /metrics and /readyz port on 127.0.0.1 (default: 8080; 0: a free one)",
    )
    dev.add_argument("--once", action="store_true", help="with --demo: exit after the demo")
    _broker_flag(dev)
    dev.set_defaults(fn=_cmd_dev)


def _add_fake_provider(sub: Subcommands) -> None:
    """`fake-provider`: the built-in OpenAI-compatible fake."""
    fake = sub.add_parser("fake-provider", help="the built-in OpenAI-compatible fake provider")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8100)
    fake.add_argument("--latency-ms", type=float, default=20.0)
    fake.add_argument("--error-rate", type=float, default=0.0)
    fake.add_argument("--error-status", type=int, default=500)
    fake.add_argument(
        "--profile",
        action="append",
        help="NAME:latency_ms=20,error_rate=1.0 (served under /NAME/v1)",
    )
    fake.set_defaults(fn=_cmd_fake_provider)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def _add_bench(sub: Subcommands) -> None:
    """`bench`: one load, or the benchmark suite's scenarios."""
    bench = sub.add_parser(
        "bench",
        help="load the worker and measure it",
        description="Without a scenario: one load of -n prompts. With scenarios (throughput, "
        "latency-sweep, duplicates, structured, half-load, ordering, streaming, failover, "
        "slow-provider, soak, priority, batch): the benchmark suite, one JSON line per scenario "
        "and a summary table (docs/BENCHMARKS.md).",
    )
    bench.add_argument("scenario", nargs="*", help="suite scenarios to run, in order")
    bench.add_argument("-n", "--count", type=int, help="prompts per run (default: 20000)")
    bench.add_argument("--latency-ms", type=float, help="fake provider latency (default: 20)")
    bench.add_argument(
        "--duration", type=float, help="paced scenarios (soak: 1800): seconds of publishing"
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="latency-sweep: a PNG of throughput and p99; soak: of RSS over time (only those"
        " two: others are refused before anything runs)",
    )
    bench.add_argument(
        "--variant",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="suite: also run the worker with these environment variables, labelled NAME",
    )
    bench.add_argument(
        "--py-spy", metavar="DIR", help="suite: py-spy record each run's process into DIR"
    )
    bench.add_argument(
        "--no-baseline", action="store_true", help="suite: skip the plain loop next to the worker"
    )
    bench.add_argument(
        "--max-cpu-ratio",
        type=float,
        metavar="RATIO",
        help="suite: exit 1 when the worker's (or a variant's) CPU per completion is over "
        "RATIO times the plain loop's in the same run (a regression check)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="suite: run the worker, its variants and the plain loop this many times, "
        "interleaved, and compare their medians",
    )
    bench.add_argument(
        "--duplicates", type=float, default=0.0, help="fraction of duplicate prompts"
    )
    bench.add_argument("--partitions", type=int, default=4)
    bench.add_argument("--timeout", type=float, default=600.0)
    bench.add_argument("--workers", type=int, default=1, help="worker processes (replicas)")
    bench.add_argument("--rate", type=float, help="publish at this many prompts/s (default: burst)")
    _broker_flag(bench)
    bench.set_defaults(fn=_cmd_bench)


def _add_bench_tools(sub: Subcommands) -> None:
    """`bench-failover`, `bench-adapters`, `bench-telemetry`: the single-purpose benchmarks."""
    bf = sub.add_parser("bench-failover", help="time from a registry UPDATE to the new target")
    bf.add_argument("--workers", type=int, default=2)
    bf.add_argument("--switches", type=int, default=20)
    bf.add_argument("--rate", type=float, default=500.0)
    bf.add_argument("--latency-ms", type=float, default=20.0)
    _broker_flag(bf)
    bf.set_defaults(fn=_cmd_bench_failover)

    ba = sub.add_parser("bench-adapters", help="CPU per call of each adapter (no network)")
    ba.add_argument("--calls", type=int, default=20_000)
    ba.set_defaults(fn=_cmd_bench_adapters)

    bt = sub.add_parser(
        "bench-telemetry", help="worker CPU and throughput, tracing off vs sampled, side by side"
    )
    bt.add_argument("-n", "--count", type=int, default=20000)
    bt.add_argument("--rounds", type=int, default=5, help="runs of each mode, interleaved")
    bt.add_argument("--sample", type=float, default=0.1, help="trace sampling ratio when on")
    bt.add_argument(
        "--also-sample",
        type=float,
        nargs="+",
        metavar="RATIO",
        help="more sampling ratios, each a mode of its own next to off and on (0: tracing on, "
        "nothing sampled; 1: every message)",
    )
    bt.add_argument("--latency-ms", type=float, default=20.0)
    bt.add_argument("--timeout", type=float, default=600.0)
    bt.set_defaults(fn=_cmd_bench_telemetry)
