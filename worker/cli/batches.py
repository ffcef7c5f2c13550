"""`llm-worker batches list|show|cancel`: the batch lane's provider jobs (registry/batches.py).

`list` prints the jobs newest first under a line of what waits to be grouped into one; `show`
one job, every column, and its requests by state; `cancel` marks a job for cancelling, which
the replica collecting the lane carries out at its next poll (worker/batch/runner.py): it asks
the provider to cancel, then answers what the provider finished and sends the rest the way the
row's `batch_on_error` says. A job is named by its number, its `job_key` or the provider's
batch id. Exit codes: 0 done; 2 no such job, a job already final, or a database to fix (one
line on stderr, the DSN's passwords as `***`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg

from llm_worker.registry import batches as db
from llm_worker.registry.dsn import redact_dsn, redact_error
from llm_worker.registry.errors import RegistryError

from ..config import Settings

__all__ = ["add_batches_arguments", "run_batches_cli"]

FINAL_JOB_STATES = ("collected", "cancelled", "failed")
"""A job in one of these is over: there is nothing left to cancel."""

_TABLE_COLS = ("job", "state", "provider_state", "model_id", "provider", "batch_id")
_CONNECT_TIMEOUT_S = 10.0


class BatchesCliError(Exception):
    """What the command refuses, in one line for stderr (exit 2)."""


# -- the parser ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, not {n}")
    return n


def add_batches_arguments(parser: argparse.ArgumentParser) -> None:
    """The `batches` sub-commands and their options, on the `batches` parser."""
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str, *, json_out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        if json_out:
            p.add_argument("--json", action="store_true", help="print JSON instead")
        p.add_argument("--database-url", help="overrides DATABASE_URL")
        return p

    def ref(p: argparse.ArgumentParser) -> None:
        p.add_argument("ref", metavar="REF", help="the job's number, job_key or batch id")

    lst = action("list", "the batch jobs, newest first, under the requests still waiting")
    lst.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N jobs (default: 50)"
    )
    ref(action("show", "one batch job, every column, and its requests by state"))
    ref(
        action(
            "cancel",
            "mark a job for cancelling: the collecting replica asks the provider at its next poll",
            json_out=False,
        )
    )


# -- output ----------------------------------------------------------------------------------


def _age_s(job: db.Job, now: datetime) -> float:
    return max(0.0, (now - job.created_at).total_seconds())


def format_age(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`, `4d03h`: two units at most."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _job_doc(job: db.Job, now: datetime) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(job)
    doc["age_s"] = round(_age_s(job, now), 3)
    return doc


def _waiting_line(stats: dict[str, Any]) -> str:
    line = f"requests waiting: {stats['waiting']}"
    if stats["waiting"]:
        line += f" (the oldest for {format_age(stats['oldest_s'])})"
    jobs = ", ".join(f"{n} {state}" for state, n in sorted(stats["jobs"].items()))
    return f"{line}; jobs: {jobs or 'none'}"


def _table(jobs: list[db.Job], now: datetime) -> str:
    head = [*_TABLE_COLS, "requests (ok/errored)", "age"]
    data = [
        [
            str(j.id),
            j.state,
            j.provider_state or "-",
            j.model_id,
            j.provider,
            j.batch_id or "-",
            f"{j.requests} ({j.succeeded}/{j.errored})",
            format_age(_age_s(j, now)),
        ]
        for j in jobs
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *data, strict=True)]
    rows = [[h.upper() for h in head], *data]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# -- the actions -----------------------------------------------------------------------------


async def _list(conn: db.Conn, args: argparse.Namespace) -> int:
    stats = await db.stats(conn)
    jobs = await db.list_jobs(conn, args.limit)
    now = datetime.now(UTC)
    if args.json:
        _print_json(
            {
                "waiting": stats["waiting"],
                "oldest_waiting_s": round(stats["oldest_s"], 3),
                "jobs_by_state": stats["jobs"],
                "jobs": [_job_doc(j, now) for j in jobs],
            }
        )
        return 0
    print(_waiting_line(stats))
    print(_table(jobs, now) if jobs else "no batch jobs")
    return 0


async def _job(conn: db.Conn, ref: str) -> db.Job:
    job = await db.get_job(conn, ref)
    if job is None:
        raise BatchesCliError(
            f"no batch job {ref!r}: give its number, job_key or batch id "
            "(see `llm-worker batches list`)"
        )
    return job


async def _show(conn: db.Conn, args: argparse.Namespace) -> int:
    job = await _job(conn, args.ref)
    states = await db.request_states(conn, job.id)
    now = datetime.now(UTC)
    if args.json:
        _print_json({**_job_doc(job, now), "request_states": states})
        return 0
    for field in job.__struct_fields__:
        value = getattr(job, field)
        print(f"{field:<16} {'-' if value in (None, '') else value}")
    print(f"{'age':<16} {format_age(_age_s(job, now))}")
    print(f"{'request states':<16} {', '.join(f'{s} {n}' for s, n in states.items())}")
    return 0


async def _cancel(conn: db.Conn, args: argparse.Namespace) -> int:
    job = await _job(conn, args.ref)
    name = f"job {job.id} ({job.batch_id or job.job_key} at {job.provider})"
    if job.state not in FINAL_JOB_STATES and job.cancel_requested_at is not None:
        print(f"{name}: cancelling was already requested; nothing changed")
        return 0
    if job.state not in FINAL_JOB_STATES and await db.cancel_job(conn, job.id):
        print(
            f"{name}: marked for cancelling; the replica collecting the batch lane asks "
            f"{job.provider} to cancel it at its next poll, then answers what was finished "
            "and sends the rest the way the model's batch_on_error says"
        )
        return 0
    now = await _job(conn, str(job.id))  # it may have ended since it was read
    raise BatchesCliError(f"{name} is already {now.state}: nothing to cancel")


_ACTIONS = {"list": _list, "show": _show, "cancel": _cancel}


async def _run(dsn: str, args: argparse.Namespace) -> int:
    conn = await db.connect(dsn, "cli", timeout=_CONNECT_TIMEOUT_S)
    async with conn:
        return await _ACTIONS[args.action](conn, args)


def run_batches_cli(settings: Settings, args: argparse.Namespace) -> int:
    dsn = getattr(args, "database_url", None) or settings.database_url
    given = "--database-url" if getattr(args, "database_url", None) else "DATABASE_URL"
    try:
        return asyncio.run(_run(dsn, args))
    except BatchesCliError as exc:
        print(exc, file=sys.stderr)
    except psycopg.errors.UndefinedTable:
        print(
            f"the database at {redact_dsn(dsn)} has no batch lane tables: run "
            f"`llm-worker migrate` (or check {given})",
            file=sys.stderr,
        )
    except (RegistryError, psycopg.Error, OSError) as exc:
        why = redact_error(exc, dsn).removeprefix("batch lane: ")
        print(f"cannot read the batch jobs (check {given}): {why}", file=sys.stderr)
    return 2
