"""`llm-worker registry ...`: list, show, set, failover, restore, validate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec

from llm_worker.adapters.secrets import SecretStore
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import validate
from llm_worker.registry.store import get_row, list_rows, set_enabled, update_row

from ..config import Settings

__all__ = ["run_registry_cli"]

_TABLE_COLS = ("model_id", "enabled", "provider", "endpoint", "upstream_model", "fallback")


def _fallback(row: ModelRow) -> str:
    parts = []
    if row.fallback_provider or row.fallback_endpoint or row.fallback_model:
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
        print(f"{f:<20} {getattr(row, f)}")


def run_registry_cli(settings: Settings, args: argparse.Namespace) -> int:
    dsn = args.database_url or settings.database_url
    action = args.action
    if action == "list":
        rows = list_rows(dsn)
        print(_as_json(rows) if args.json else _table(rows))
        return 0
    if action == "validate":
        problems = validate(
            {r.model_id: r for r in list_rows(dsn)}, SecretStore(settings.secrets_dir)
        )
        if args.json:
            print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
        else:
            print("\n".join(problems) if problems else "registry is valid")
        return 1 if problems else 0
    model_id = args.model_id
    if action == "show":
        row = get_row(dsn, model_id)
        if row is None:
            print(f"no model {model_id!r} in the registry", file=sys.stderr)
            return 1
        _show(row, args.json)
        return 0
    try:
        if action in ("failover", "restore"):
            row = set_enabled(dsn, model_id, action == "restore")
        else:  # set
            fields = {
                k: v
                for k, v in vars(args).items()
                if v is not None and k in ModelRow.__struct_fields__ and k != "model_id"
            }
            if not fields:
                print("nothing to set: give at least one --COLUMN VALUE", file=sys.stderr)
                return 2
            row = update_row(dsn, model_id, **fields)
    except (LookupError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    _show(row, args.json)
    return 0
