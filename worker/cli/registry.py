"""`llm-worker registry ...`: list, show, add, set, remove, apply, export, failover, restore,
validate.

Every change is checked before it is written (registry/apply.py: providers, endpoints, prices,
limits, fallbacks over the would-be table) and written in one transaction; `--dry-run` prints
the diff and writes nothing. Exit codes: 0 done, 1 no such model or the database is
unreachable, 2 a value to fix (the message names the model and the column).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from llm_worker.adapters.secrets import SecretStore
from llm_worker.registry.apply import (
    COLUMN_HELP,
    EDITABLE,
    Diff,
    RegistryFileError,
    change_problems,
    dump_file,
    format_diff,
    make_row,
    parse_cli_value,
    parse_file,
    plan,
    row_value_problems,
)
from llm_worker.registry.errors import InvalidRow, UnknownModel
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import has_inline_fallback, validate
from llm_worker.registry.store import change_rows, get_row, list_rows, set_enabled

from ..config import Settings

__all__ = ["add_registry_arguments", "run_registry_cli"]

_TABLE_COLS = ("model_id", "enabled", "provider", "endpoint", "upstream_model", "fallback")
_ROW_OPTIONS = tuple(c for c in EDITABLE if c != "model_id")


# -- the parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    """--json and --database-url after the sub-command too (SUPPRESS: not given here keeps
    what was given before it)."""
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead"
    )
    p.add_argument("--database-url", default=argparse.SUPPRESS, help="overrides DATABASE_URL")


def _dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")


def _metavar(col: str) -> str:
    kind = msgspec.structs.fields(ModelRow)[ModelRow.__struct_fields__.index(col)].type
    by_type = {bool: "BOOL", int: "N", float: "USD"}
    for base, name in by_type.items():
        if kind in (base, base | None):
            return name
    return {"endpoint": "URL", "fallback_endpoint": "URL", "canned_response": "TEXT"}.get(
        col, "NAME"
    )


def _column_options(p: argparse.ArgumentParser, required: tuple[str, ...] = ()) -> None:
    for col in _ROW_OPTIONS:
        p.add_argument(
            f"--{col.replace('_', '-')}",
            dest=col,
            metavar=_metavar(col),
            required=col in required,
            help=COLUMN_HELP[col],
        )


def add_registry_arguments(reg: argparse.ArgumentParser) -> None:
    """The `registry` sub-commands and their options, on the `registry` parser."""
    reg.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reg.add_argument("--database-url", help="overrides DATABASE_URL")
    rsub = reg.add_subparsers(dest="action", required=True, metavar="ACTION")

    def sub(name: str, text: str) -> argparse.ArgumentParser:
        p = rsub.add_parser(name, help=text, description=text)
        _common(p)
        return p

    def model(p: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
        p.add_argument("model_id", metavar="MODEL_ID", help=what)
        return p

    sub("list", "list every row")
    model(sub("show", "print one row, every column"), "the row's model_id")
    add = model(sub("add", "add a model (every column can be given)"), "the new model_id")
    _column_options(add, required=("provider", "upstream_model"))
    _dry_run(add)
    setp = model(sub("set", "change columns of a row"), "the row's model_id")
    _column_options(setp)
    _dry_run(setp)
    _dry_run(model(sub("remove", "delete a row"), "the row's model_id"))
    app = sub("apply", "make the table match a registry file (YAML or JSON), in one transaction")
    app.add_argument("file", metavar="FILE", help="{models: [{model_id, provider, ...}, ...]}")
    app.add_argument("--prune", action="store_true", help="also delete rows not in FILE")
    _dry_run(app)
    exp = sub("export", "print the table as a registry file that `apply` reads back")
    exp.add_argument("--format", choices=("yaml", "json"), default="yaml", help="default: yaml")
    exp.add_argument("-o", "--output", metavar="FILE", help="write FILE instead of stdout")
    fo = model(sub("failover", "disable a row: its traffic goes to its fallbacks"), "model_id")
    fo.add_argument(
        "--force", action="store_true", help="even without a fallback (its requests then fail)"
    )
    model(sub("restore", "enable a row again"), "the row's model_id")
    sub("validate", "check every row: providers, endpoints, values, fallback chains, secrets")


# -- output ----------------------------------------------------------------------------------


def _fallback(row: ModelRow) -> str:
    parts = []
    if has_inline_fallback(row):
        parts.append(
            f"{row.fallback_provider or row.provider}:{row.fallback_model or row.upstream_model}"
        )
    if row.fallback_model_id:
        parts.append(f"-> {row.fallback_model_id}")
    return " ".join(parts) or "-"


def _table(rows: list[ModelRow]) -> str:
    data = [
        [
            r.model_id,
            "yes" if r.enabled else "NO",
            r.provider,
            r.endpoint,
            r.upstream_model,
            _fallback(r),
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(_TABLE_COLS, *data, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(_TABLE_COLS, widths, strict=True))]
    for d in data:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(d, widths, strict=True)))
    return "\n".join(lines)


def _as_json(obj: Any) -> str:
    return json.dumps(msgspec.to_builtins(obj), indent=2, default=str)


def _show(row: ModelRow, as_json: bool) -> None:
    if as_json:
        print(_as_json(row))
        return
    for f in row.__struct_fields__:
        print(f"{f:<26} {getattr(row, f)}")


def _diff_json(diff: Diff, dry_run: bool) -> str:
    doc = {
        "added": [r.model_id for r in diff.added],
        "changed": {r.model_id: cols for r, cols in diff.changed},
        "removed": list(diff.removed),
        "unchanged": diff.unchanged,
        "kept": list(diff.kept),
        "dry_run": dry_run,
    }
    return _as_json(doc)


# -- changes ---------------------------------------------------------------------------------


def _change(
    dsn: str, args: argparse.Namespace, build: Callable[[dict[str, ModelRow]], Diff]
) -> int:
    """Build the diff from the table, check it, write it: one transaction."""
    dry_run = bool(getattr(args, "dry_run", False))
    made: list[Diff] = []

    def decide(rows: dict[str, ModelRow]) -> tuple[list[ModelRow], list[str]]:
        diff = build(rows)
        problems = change_problems(rows, diff)
        if problems:
            raise RegistryFileError("\n  ".join(problems))
        made.append(diff)
        return diff.writes(), list(diff.removed)

    try:
        change_rows(dsn, decide, dry_run=dry_run)
    except UnknownModel as exc:
        print(f"{exc} (see `llm-worker registry list`)", file=sys.stderr)
        return 1
    except (RegistryFileError, InvalidRow) as exc:
        print(f"nothing changed:\n  {exc}", file=sys.stderr)
        return 2
    print(_diff_json(made[0], dry_run) if args.json else format_diff(made[0], dry_run=dry_run))
    return 0


def _given_columns(args: argparse.Namespace) -> dict[str, Any]:
    return {
        c: parse_cli_value(c, getattr(args, c))
        for c in _ROW_OPTIONS
        if getattr(args, c, None) is not None
    }


def _build_add(args: argparse.Namespace) -> Callable[[dict[str, ModelRow]], Diff]:
    model_id = args.model_id
    row = make_row({"model_id": model_id, **_given_columns(args)}, f"model {model_id!r}")

    def build(rows: dict[str, ModelRow]) -> Diff:
        if model_id in rows:
            raise RegistryFileError(
                f"model {model_id!r} is already in the registry: change it with "
                f"`llm-worker registry set {model_id} --COLUMN VALUE`"
            )
        return Diff(added=(row,), unchanged=len(rows))

    return build


def _build_set(args: argparse.Namespace) -> Callable[[dict[str, ModelRow]], Diff]:
    model_id = args.model_id
    fields = _given_columns(args)
    if not fields:
        raise RegistryFileError("nothing to set: give at least one --COLUMN VALUE (see --help)")

    def build(rows: dict[str, ModelRow]) -> Diff:
        old = rows.get(model_id)
        if old is None:
            raise UnknownModel(model_id)
        new = make_row({**{c: getattr(old, c) for c in EDITABLE}, **fields}, f"model {model_id!r}")
        return plan({model_id: old}, {model_id: new}, prune=False)

    return build


def _build_remove(args: argparse.Namespace) -> Callable[[dict[str, ModelRow]], Diff]:
    model_id = args.model_id

    def build(rows: dict[str, ModelRow]) -> Diff:
        if model_id not in rows:
            raise UnknownModel(model_id)
        return Diff(removed=(model_id,), unchanged=len(rows) - 1)

    return build


def _build_apply(args: argparse.Namespace) -> Callable[[dict[str, ModelRow]], Diff]:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    wanted = parse_file(text, str(path))
    return lambda rows: plan(rows, wanted, prune=args.prune)


_BUILDERS = {"add": _build_add, "set": _build_set, "remove": _build_remove, "apply": _build_apply}


# -- the rest --------------------------------------------------------------------------------


def _failover(dsn: str, args: argparse.Namespace) -> int:
    row = get_row(dsn, args.model_id)
    if row is None:
        raise UnknownModel(args.model_id)
    if not (has_inline_fallback(row) or row.fallback_model_id or args.force):
        print(
            f"model {args.model_id!r} has no fallback (no fallback_provider, fallback_endpoint, "
            "fallback_model or fallback_model_id): disabled, every request for it would fail "
            f"with model_disabled. Give it one first (`llm-worker registry set {args.model_id} "
            "--fallback-model-id OTHER`), or pass --force.",
            file=sys.stderr,
        )
        return 2
    _show(set_enabled(dsn, args.model_id, False), args.json)
    return 0


def _validate(dsn: str, settings: Settings, as_json: bool) -> int:
    rows = {r.model_id: r for r in list_rows(dsn)}
    found = validate(rows, SecretStore(settings.secrets_dir))
    found += [f"{m}: {p}" for m, r in rows.items() for p in row_value_problems(r)]
    problems = sorted(dict.fromkeys(found), key=lambda p: p.split(":", 1)[0])
    if as_json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    else:
        print("\n".join(problems) if problems else f"registry is valid ({len(rows)} rows)")
    return 1 if problems else 0


def _export(dsn: str, args: argparse.Namespace) -> int:
    text = dump_file(list_rows(dsn), args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _read(dsn: str, settings: Settings, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        rows = list_rows(dsn)
        print(_as_json(rows) if args.json else _table(rows))
        return 0
    if action == "validate":
        return _validate(dsn, settings, args.json)
    if action == "export":
        return _export(dsn, args)
    row = get_row(dsn, args.model_id)
    if row is None:
        print(f"no model {args.model_id!r} in the registry", file=sys.stderr)
        return 1
    _show(row, args.json)
    return 0


def run_registry_cli(settings: Settings, args: argparse.Namespace) -> int:
    dsn = args.database_url or settings.database_url
    action = args.action
    try:
        if action in _BUILDERS:
            return _change(dsn, args, _BUILDERS[action](args))
        if action == "failover":
            return _failover(dsn, args)
        if action == "restore":
            _show(set_enabled(dsn, args.model_id, True), args.json)
            return 0
    except UnknownModel as exc:
        print(f"{exc} (see `llm-worker registry list`)", file=sys.stderr)
        return 1
    except RegistryFileError as exc:
        print(f"nothing changed: {exc}", file=sys.stderr)
        return 2
    return _read(dsn, settings, args)
