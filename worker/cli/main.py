"""`llm-worker` command line: run, migrate, dev, send, fake-provider, bench, registry."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

from registry.dsn import dsn_secrets, redact_error

from ..config import ConfigError, Settings, load_settings, redact_dsn
from ..ops.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("llm_worker.cli")

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


_KAFKA_CLIENT = ("kafka_bootstrap_servers", "prompts_topic", "completions_topic", "dlq_topic")
"""What `send` uses: a command reads and checks only the settings it uses."""


def _settings(args: argparse.Namespace, only: tuple[str, ...] | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return load_settings(only=only, **overrides)


def _secrets(s: Settings) -> list[str]:
    """What no log line may hold: the database passwords and the Kafka credentials."""
    kafka = [v for k, v in s.kafka_extra.items() if "password" in k or "secret" in k]
    return [*dsn_secrets(s.database_url), *kafka]


def _cmd_run(args: argparse.Namespace) -> int:
    from registry.errors import RegistryUnavailable

    from ..process import exit_leaving_stuck_threads, run_app, run_async
    from ..stream.admin import KafkaUnavailable

    s = _settings(args)
    configure_logging(s.log_level, s.log_format, secrets=_secrets(s))
    try:
        return exit_leaving_stuck_threads(run_async(run_app(s)))
    except (KafkaUnavailable, RegistryUnavailable) as exc:
        log.error("%s", exc)
        return 2


def _cmd_migrate(args: argparse.Namespace) -> int:
    from registry.errors import MigrationError
    from registry.migrate import migrate

    s = _settings(args, ("database_url",))
    try:
        applied = migrate(s.database_url)
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        why = redact_error(exc, s.database_url)
        print(f"cannot migrate {redact_dsn(s.database_url)}: {why}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def _load_prompts(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.file:
        prompts = []
        with open(args.file, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"{args.file}:{n}: not JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise SystemExit(f"{args.file}:{n}: expected a JSON object")
                obj.setdefault("id", uuid.uuid4().hex)
                prompts.append(obj)
        return prompts
    if not args.text:
        raise SystemExit("give a prompt text or --file FILE.jsonl")
    p: dict[str, Any] = {
        "id": args.id or uuid.uuid4().hex,
        "model": args.model,
        "prompt": args.text,
    }
    if args.max_tokens:
        p["max_tokens"] = args.max_tokens
    return [p]


def _cmd_send(args: argparse.Namespace) -> int:
    from .client import CompletionWaiter, publish

    s = _settings(args, _KAFKA_CLIENT)
    prompts = _load_prompts(args)
    total = len(prompts)
    show_progress = total > 1 and sys.stderr.isatty()
    state = {"sent": 0, "got": 0}

    def progress() -> None:
        if show_progress:
            print(
                f"\rsent {state['sent']}/{total}  completions {state['got']}/{total}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def on_sent(n: int) -> None:
        state["sent"] = n
        progress()

    def on_completion(comp: dict[str, Any]) -> None:
        state["got"] += 1
        if not args.quiet:
            print(json.dumps(comp, ensure_ascii=False), flush=True)
        progress()

    with CompletionWaiter(s) as waiter:
        publish(s, prompts, on_progress=on_sent)
        got = waiter.wait(
            [p["id"] for p in prompts], timeout=args.timeout, on_completion=on_completion
        )
    if show_progress:
        print(file=sys.stderr)
    missing = total - len(got)
    errors = sum(1 for c in got.values() if c.get("status") != "ok")
    print(f"{len(got)}/{total} completions ({errors} errors)", file=sys.stderr)
    if missing:
        print(
            f"timed out after {args.timeout:.0f} s waiting for {missing} completions",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_fake_provider(args: argparse.Namespace) -> int:
    from .fake_server import run_fake_server

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
    from .dev import run_dev

    return run_dev(
        demo=args.demo,
        fake_port=args.fake_port,
        http_port=args.http_port,
        once=args.once,
        broker_kind=args.broker,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.scenario:
        from ..bench.suite import run_suite

        return run_suite(args)
    from ..bench.throughput import run_bench

    # without a scenario: the single load of before the suite, with its defaults
    args.count = args.count or 20_000
    args.latency_ms = 20.0 if args.latency_ms is None else args.latency_ms
    return run_bench(args)


def _cmd_bench_failover(args: argparse.Namespace) -> int:
    from ..bench.failover import run_failover_bench

    return run_failover_bench(args)


def _cmd_bench_adapters(args: argparse.Namespace) -> int:
    from ..bench.adapters import run_adapter_bench

    return run_adapter_bench(args.calls)


def _cmd_bench_telemetry(args: argparse.Namespace) -> int:
    from ..bench.telemetry import run_telemetry_bench

    return run_telemetry_bench(args)


def _cmd_registry(args: argparse.Namespace) -> int:
    from registry.errors import RegistryUnavailable

    from .registry import run_registry_cli

    try:
        return run_registry_cli(_settings(args, ("database_url", "secrets_dir")), args)
    except RegistryUnavailable as exc:  # its text is redacted: no password, no traceback
        print(f"registry unavailable: {exc}", file=sys.stderr)
        return 1


def _broker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="the local broker: tansu (pip only, memory) or kafka (Apache Kafka 4, needs Java 17+"
        " and KAFKA_HOME or Maven); ignored when KAFKA_BOOTSTRAP_SERVERS is set",
    )


def _add_service_commands(sub: Subcommands) -> None:
    """`run` and `migrate`: what a deployment runs; both read the environment."""
    run = sub.add_parser("run", help="run the worker (configuration from the environment)")
    run.set_defaults(fn=_cmd_run)

    mig = sub.add_parser("migrate", help="apply pending database migrations")
    mig.add_argument("--database-url", help="overrides DATABASE_URL")
    mig.set_defaults(fn=_cmd_migrate)


def _add_dev(sub: Subcommands) -> None:
    """`dev`: the local stack."""
    dev = sub.add_parser("dev", help="local broker + Postgres + fake provider + worker")
    dev.add_argument("--demo", action="store_true", help="also send sample prompts and print them")
    dev.add_argument("--fake-port", type=int, default=0)
    dev.add_argument("--http-port", type=int, default=8080)
    dev.add_argument("--once", action="store_true", help="with --demo: exit after the demo")
    _broker_flag(dev)
    dev.set_defaults(fn=_cmd_dev)


def _add_send(sub: Subcommands) -> None:
    """`send`: publish prompts and wait for their completions."""
    send = sub.add_parser("send", help="publish prompts and print their completions")
    send.add_argument("text", nargs="?", help="the prompt text")
    send.add_argument("--model", default="chat-small")
    send.add_argument("--id")
    send.add_argument("--max-tokens", type=int)
    send.add_argument("--file", help="JSONL file of prompt objects")
    send.add_argument("--timeout", type=float, default=60.0)
    send.add_argument("--quiet", action="store_true", help="print only the summary")
    send.add_argument("--bootstrap", help="overrides KAFKA_BOOTSTRAP_SERVERS")
    send.set_defaults(fn=_cmd_send)


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


def _add_bench(sub: Subcommands) -> None:
    """`bench`: one load, or the benchmark suite's scenarios."""
    bench = sub.add_parser(
        "bench",
        help="load the worker and measure it",
        description="Without a scenario: one load of -n prompts. With scenarios (throughput, "
        "latency-sweep, duplicates, failover, slow-provider, soak): the benchmark suite, "
        "one JSON line per scenario and a summary table (docs/BENCHMARKS.md).",
    )
    bench.add_argument("scenario", nargs="*", help="suite scenarios to run, in order")
    bench.add_argument("-n", "--count", type=int, help="prompts per run (default: 20000)")
    bench.add_argument("--latency-ms", type=float, help="fake provider latency (default: 20)")
    bench.add_argument(
        "--duration", type=float, help="paced scenarios (soak: 1800): seconds of publishing"
    )
    bench.add_argument(
        "--plot", help="latency-sweep: a PNG of throughput and p99; soak: of RSS over time"
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
    bt.add_argument("--latency-ms", type=float, default=20.0)
    bt.add_argument("--timeout", type=float, default=600.0)
    bt.set_defaults(fn=_cmd_bench_telemetry)


def _add_registry(sub: Subcommands) -> None:
    """`registry`: inspect and change model registry rows."""
    reg = sub.add_parser("registry", help="inspect and change model registry rows")
    reg.add_argument("--json", action="store_true")
    reg.add_argument("--database-url", help="overrides DATABASE_URL")
    rsub = reg.add_subparsers(dest="action", required=True)
    rsub.add_parser("list")
    show = rsub.add_parser("show")
    show.add_argument("model_id")
    setp = rsub.add_parser("set")
    setp.add_argument("model_id")
    for col in (
        "provider",
        "endpoint",
        "upstream-model",
        "fallback-provider",
        "fallback-endpoint",
        "fallback-model",
        "fallback-model-id",
        "api-key-secret",
    ):
        setp.add_argument(f"--{col}")
    for col in ("max-tokens", "rpm-limit", "tpm-limit", "timeout-ms"):
        setp.add_argument(f"--{col}", type=int)
    for col in ("input-cost-per-1k", "output-cost-per-1k"):
        setp.add_argument(f"--{col}", type=float)
    fo = rsub.add_parser("failover")
    fo.add_argument("model_id")
    rs = rsub.add_parser("restore")
    rs.add_argument("model_id")
    rsub.add_parser("validate")
    reg.set_defaults(fn=_cmd_registry)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-worker", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_service_commands,
        _add_dev,
        _add_send,
        _add_fake_provider,
        _add_bench,
        _add_bench_tools,
        _add_registry,
    ):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
