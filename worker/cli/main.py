"""`llm-worker` command line: run, migrate, send, registry; and, from a checkout, the devkit's
dev, fake-provider and bench commands (`llm_worker.devkit.cli`)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

from llm_worker.registry.dsn import dsn_secrets, redact_error

from ..config import ConfigError, Settings, load_settings, redact_dsn
from ..ops.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("llm_worker.cli")

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


_KAFKA_CLIENT = (
    "kafka_bootstrap_servers",
    "prompts_topic",
    "completions_topic",
    "dlq_topic",
    "chunks_topic",
)
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
    from llm_worker.registry.errors import RegistryUnavailable

    from ..ops.http import PortUnavailable
    from ..process import exit_leaving_stuck_threads, run_app, run_async
    from ..stream.admin import KafkaUnavailable

    s = _settings(args)
    configure_logging(s.log_level, s.log_format, secrets=_secrets(s))
    try:
        return exit_leaving_stuck_threads(run_async(run_app(s)))
    except (KafkaUnavailable, RegistryUnavailable, PortUnavailable) as exc:
        log.error("cannot start: %s", exc)  # one line naming the setting; no traceback
        return 2


def _cmd_migrate(args: argparse.Namespace) -> int:
    from llm_worker.registry.errors import MigrationError
    from llm_worker.registry.migrate import migrate

    s = _settings(args, ("database_url",))
    try:
        applied = migrate(s.database_url)
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        why = redact_error(exc, s.database_url)
        given = "--database-url" if args.database_url else "DATABASE_URL"
        where = redact_dsn(s.database_url)
        shown = why if where in why else f"{where}: {why}"
        print(f"cannot migrate (check {given}): {shown}", file=sys.stderr)
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
                if args.stream:
                    obj.setdefault("stream", True)
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
    if args.stream:
        p["stream"] = True
    return [p]


class _SendOutput:
    """What `send` prints: each completion (a JSON line on stdout), streamed chunks (one
    prompt: its text on stderr as it comes; several: JSON lines), progress on a terminal."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.quiet, self.stream, self.total = args.quiet, args.stream, total
        self.show_progress = total > 1 and sys.stderr.isatty()
        self.sent = self.got = 0

    def progress(self) -> None:
        if self.show_progress:
            print(
                f"\rsent {self.sent}/{self.total}  completions {self.got}/{self.total}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def on_sent(self, n: int) -> None:
        self.sent = n
        self.progress()

    def on_completion(self, comp: dict[str, Any]) -> None:
        self.got += 1
        if not self.quiet:
            if self.stream and self.total == 1:
                print(file=sys.stderr)  # ends the streamed text's line
            print(json.dumps(comp, ensure_ascii=False), flush=True)
        self.progress()

    def on_chunk(self, chunk: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.total == 1:
            print(chunk.get("delta", ""), end="", file=sys.stderr, flush=True)
        else:
            print(json.dumps(chunk, ensure_ascii=False), flush=True)


def _cmd_send(args: argparse.Namespace) -> int:
    from .client import CompletionWaiter, publish

    s = _settings(args, _KAFKA_CLIENT)
    prompts = _load_prompts(args)
    total = len(prompts)
    out = _SendOutput(args, total)
    with CompletionWaiter(s, chunks=args.stream) as waiter:
        publish(s, prompts, on_progress=out.on_sent)
        got = waiter.wait(
            [p["id"] for p in prompts],
            timeout=args.timeout,
            on_completion=out.on_completion,
            on_chunk=out.on_chunk,
        )
    if out.show_progress:
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
    if errors and args.fail_on_error:
        return 1
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from llm_worker.registry.errors import RegistryUnavailable

    from .registry import run_registry_cli

    try:
        return run_registry_cli(_settings(args, ("database_url", "secrets_dir")), args)
    except RegistryUnavailable as exc:  # its text is redacted: no password, no traceback
        print(f"registry unavailable: {exc}", file=sys.stderr)
        return 1


def _cmd_batches(args: argparse.Namespace) -> int:
    from .batches import run_batches_cli

    return run_batches_cli(_settings(args, ("database_url",)), args)


_RUN_SETTINGS = {
    "kafka_bootstrap_servers": "the Kafka brokers, host:port,...",
    "database_url": "the model registry's PostgreSQL (password shown as ***)",
    "group_id": "the consumer group",
    "prompts_topic": "the topic read",
    "completions_topic": "the topic written",
    "secrets_dir": "API keys, one file each (or variables named by the registry)",
    "http_port": "/metrics, /healthz, /readyz",
    "log_format": "json or text",
}
"""The settings `run --help` shows, what a first deployment sets, each in a few words."""


def _run_description() -> str:
    from ..settings import SETTINGS

    by_name = {d.name: d for d in SETTINGS}
    rows = []
    for name, what in _RUN_SETTINGS.items():
        d = by_name[name]
        rows.append(f"  {d.env:<29} {what} (default: {d.shown(d.default)})")
    return "\n".join(
        [
            "Run the worker until SIGTERM/SIGINT. It takes no options: every setting is an "
            "environment",
            "variable (LLM_WORKER_<NAME>, and KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL), or a "
            "KEY=VALUE line",
            "of the file LLM_WORKER_CONFIG_FILE names. All of them, with defaults and bounds: "
            "docs/configuration.md.",
            "The ones a first deployment sets:",
            "",
            *rows,
            "",
            "An unknown LLM_WORKER_* variable (a typo) stops it, naming the closest setting.",
            "Exit status: 0 stopped; 2 a bad setting or cannot start (one line naming the "
            "variable to",
            "change); 3 a fatal Kafka error; 4 a shutdown that overran (docs/delivery.md, "
            "Exit codes).",
        ]
    )


def _add_service_commands(sub: Subcommands) -> None:
    """`run` and `migrate`: what a deployment runs; both read the environment."""
    run = sub.add_parser(
        "run",
        help="run the worker (settings from the environment: run --help)",
        description=_run_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(fn=_cmd_run)

    mig = sub.add_parser("migrate", help="apply pending database migrations")
    mig.add_argument("--database-url", help="overrides DATABASE_URL")
    mig.set_defaults(fn=_cmd_migrate)


def _add_send(sub: Subcommands) -> None:
    """`send`: publish prompts and wait for their completions."""
    send = sub.add_parser(
        "send",
        help="publish prompts and print their completions",
        description="Publish prompts to the prompts topic and print each completion as a JSON "
        "line (stdout) and a summary (stderr). Exit status: 0 when every prompt got a completion "
        "(error completions included, unless --fail-on-error), 1 on a timeout.",
    )
    send.add_argument("text", nargs="?", help="the prompt text (or --file)")
    send.add_argument(
        "--model", default="chat-small", help="model_id from the registry (default: chat-small)"
    )
    send.add_argument("--id", help="the prompt's id (default: a random one)")
    send.add_argument("--max-tokens", type=int, help="max_tokens for the prompt")
    send.add_argument("--file", help="a JSONL file of prompt objects, one a line (instead of TEXT)")
    send.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the completions (default: 60); exit 1 when some are missing",
    )
    send.add_argument(
        "--stream",
        action="store_true",
        help="ask for streamed answers and show the chunks as they come (one prompt: its text "
        "on stderr; several: each chunk as a JSON line)",
    )
    send.add_argument("--quiet", action="store_true", help="print only the summary")
    send.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 when any completion is an error (default: exit 0 once all are answered)",
    )
    send.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (overrides KAFKA_BOOTSTRAP_SERVERS)"
    )
    send.set_defaults(fn=_cmd_send)


def _add_registry(sub: Subcommands) -> None:
    """`registry`: inspect and change model registry rows (worker/cli/registry.py)."""
    from .registry import add_registry_arguments

    reg = sub.add_parser(
        "registry",
        help="inspect and change model registry rows, from options or a file",
        description="Inspect and change the model registry: no SQL needed. Exit 1: no such "
        "model or no database; exit 2: a value to fix (nothing is changed).",
    )
    add_registry_arguments(reg)
    reg.set_defaults(fn=_cmd_registry)


def _add_batches(sub: Subcommands) -> None:
    """`batches`: the batch lane's provider jobs (worker/cli/batches.py)."""
    from .batches import add_batches_arguments

    bat = sub.add_parser(
        "batches",
        help="list, show and cancel the batch lane's provider jobs",
        description="The batch lane's provider jobs: list, show, cancel. Exit 2: no such job, "
        "a job already over, or a database to fix.",
    )
    add_batches_arguments(bat)
    bat.set_defaults(fn=_cmd_batches)


TOOL_COMMANDS = (
    "dev",
    "fake-provider",
    "bench",
    "bench-failover",
    "bench-adapters",
    "bench-telemetry",
)
"""The commands of `llm_worker.devkit`: a checkout of the repository has them, the wheel not."""


def _add_tools(sub: Subcommands) -> None:
    """The devkit's commands when it is here (a checkout), else each says where it lives. The
    service never imports the devkit; the command line looks it up by name (tests/unit/
    test_layout.py)."""
    try:
        devkit = importlib.import_module("llm_worker.devkit.cli")
    except ModuleNotFoundError as exc:
        if exc.name not in ("llm_worker.devkit", "llm_worker.devkit.cli"):
            raise
        for name in TOOL_COMMANDS:
            tool = sub.add_parser(name, help="(a checkout's tool)", add_help=False)
            tool.set_defaults(fn=_no_devkit)  # its arguments are not known here: main()
        return
    devkit.add_commands(sub)


def _no_devkit(args: argparse.Namespace) -> int:
    print(
        f"`llm-worker {args.command}` is a tool of a checkout of the repository, not of this "
        "install: the llm-worker package holds the service alone (run, migrate, send, registry)."
        " Clone the repository and run `make demo` or `.venv/bin/llm-worker "
        f"{args.command}` there (docs/development.md).",
        file=sys.stderr,
    )
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-worker", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_service_commands, _add_send, _add_registry, _add_batches, _add_tools):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.fn is not _no_devkit:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
