"""Synchronous admin access to `model_registry` (the CLI, the dev stack, tests).

Each call opens one short connection and commits before returning; the NOTIFY trigger then
tells every running worker to reload. The worker itself reads through `RegistryCache`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from llm_worker.registry._db import (
    APP_NAME,
    COLUMN_LIST,
    ROW_FACTORY,
    SELECT_ALL,
    SELECT_ONE,
    TABLE,
    redact_dsn,
    redact_error,
)
from llm_worker.registry.errors import InvalidRow, RegistryUnavailable, UnknownModel
from llm_worker.registry.models import COLUMNS, ModelRow, row_problems

__all__ = [
    "change_rows",
    "delete_row",
    "get_row",
    "list_rows",
    "set_enabled",
    "update_row",
    "upsert_row",
]

WRITABLE: tuple[str, ...] = tuple(c for c in COLUMNS if c != "updated_at")
"""Columns an admin may set; `updated_at` is maintained by a trigger."""


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[ModelRow]]:
    try:
        conn = psycopg.connect(dsn, row_factory=ROW_FACTORY, application_name=f"{APP_NAME}-admin")
    except psycopg.Error as exc:  # ProgrammingError: libpq could not parse the DSN
        # `from None`: libpq's own text may quote the password; only the redacted one travels
        raise RegistryUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {redact_error(exc, dsn)}"
        ) from None
    with conn:  # commits on success, rolls back on error, then closes
        try:
            yield conn
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            raise InvalidRow(f"model_registry rejected the change: {exc}") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise RegistryUnavailable(
                f"{exc} (run `llm-worker migrate` against {redact_dsn(dsn)})"
            ) from exc


def list_rows(dsn: str) -> list[ModelRow]:
    """Every row, ordered by model_id."""
    with _connect(dsn) as conn:
        return conn.execute(SELECT_ALL).fetchall()


def get_row(dsn: str, model_id: str) -> ModelRow | None:
    with _connect(dsn) as conn:
        return conn.execute(SELECT_ONE, (model_id,)).fetchone()


_UPSERT = sql.SQL(
    "INSERT INTO {table} ({cols}) VALUES ({values}) ON CONFLICT (model_id) DO UPDATE SET {updates}"
).format(
    table=sql.Identifier(TABLE),
    cols=sql.SQL(", ").join(sql.Identifier(c) for c in WRITABLE),
    values=sql.SQL(", ").join(sql.Placeholder(c) for c in WRITABLE),
    updates=sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in WRITABLE if c != "model_id"
    ),
)
_DELETE = sql.SQL("DELETE FROM {} WHERE model_id = %s").format(sql.Identifier(TABLE))


def _values(row: ModelRow) -> dict[str, Any]:
    values = {c: getattr(row, c) for c in WRITABLE}
    problems = row_problems(values)
    if problems:
        raise InvalidRow(f"{row.model_id}: " + "; ".join(problems))
    return values


def upsert_row(dsn: str, row: ModelRow) -> None:
    """Insert `row`, or overwrite every column of the existing row with the same model_id.

    `row.updated_at` is ignored: the database sets it.
    """
    values = _values(row)
    with _connect(dsn) as conn:
        conn.execute(_UPSERT, values)


def change_rows(
    dsn: str,
    decide: Callable[[dict[str, ModelRow]], tuple[list[ModelRow], list[str]]],
    *,
    dry_run: bool = False,
) -> None:
    """Read the table, let `decide(rows)` say which rows to write (whole rows, inserted or
    overwritten) and which model_ids to delete, and do it, all in ONE transaction that holds
    the table against other admin writes (the worker's reads go on). An exception from
    `decide` rolls everything back; `dry_run` reads and decides but writes nothing. The
    workers see the whole change at once: the NOTIFYs of its rows are sent at commit.
    """
    with _connect(dsn) as conn:
        conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(TABLE))
        )
        rows = {r.model_id: r for r in conn.execute(SELECT_ALL).fetchall()}
        writes, deletes = decide(rows)
        if dry_run:
            return
        for row in writes:
            conn.execute(_UPSERT, _values(row))
        for model_id in deletes:
            conn.execute(_DELETE, (model_id,))


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(f for f in fields if f not in COLUMNS)
    if unknown:
        raise InvalidRow(
            f"unknown model_registry column(s): {', '.join(unknown)} (known: {', '.join(WRITABLE)})"
        )
    if "updated_at" in fields:
        raise InvalidRow("updated_at cannot be set: the database maintains it")
    problems = row_problems(fields)
    if problems:
        raise InvalidRow("; ".join(problems))


def update_row(dsn: str, model_id: str, **fields: Any) -> ModelRow:
    """Set the given columns of one row and return the row as stored.

    Raises InvalidRow (a ValueError) naming an unknown column or a rejected value, and
    UnknownModel if no row has `model_id`.
    """
    _check_fields(fields)
    if not fields:
        found = get_row(dsn, model_id)
        if found is None:
            raise UnknownModel(model_id)
        return found
    query = sql.SQL("UPDATE {table} SET {sets} WHERE model_id = {key} RETURNING {cols}").format(
        table=sql.Identifier(TABLE),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(name))
            for name in fields
        ),
        key=sql.Placeholder("__model_id"),
        cols=COLUMN_LIST,
    )
    with _connect(dsn) as conn:
        updated = conn.execute(query, {**fields, "__model_id": model_id}).fetchone()
    if updated is None:
        raise UnknownModel(model_id)
    return updated


def set_enabled(dsn: str, model_id: str, enabled: bool) -> ModelRow:
    """Enable or disable a row; a disabled row sends its traffic to its fallbacks."""
    return update_row(dsn, model_id, enabled=enabled)


def delete_row(dsn: str, model_id: str) -> bool:
    """Delete one row; False if there was none."""
    with _connect(dsn) as conn:
        return conn.execute(_DELETE, (model_id,)).rowcount > 0


def to_dict(row: ModelRow) -> dict[str, Any]:
    """A row as a JSON-friendly dict (for the CLI)."""
    out: dict[str, Any] = msgspec.to_builtins(row)
    return out
