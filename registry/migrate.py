"""Forward-only SQL migrations: `NNN_name.sql` files applied in numeric order, each once.

Each file runs in its own transaction together with its `schema_migrations` row, so a failing
file leaves no trace. A session advisory lock serialises replicas that migrate at the same
time: the second one waits, then finds nothing left to do.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg.rows import TupleRow

from llm_worker.registry._db import APP_NAME, redact_dsn, redact_error
from llm_worker.registry.errors import MigrationError, RegistryUnavailable

__all__ = ["LOCK_KEY", "Migration", "discover", "migrate", "pending"]

log = logging.getLogger("llm_worker.registry")

LOCK_KEY = 7_812_739_813_285_128_050
"""`pg_advisory_lock` key held while migrating (the bytes b"llmwmigr")."""

_FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


def discover(directory: Traversable | Path | None = None) -> list[Migration]:
    """The migrations in `directory` (default: the `migrations` package), in numeric order.

    Raises MigrationError for a `.sql` file not named `NNN_name.sql` and for a number used twice.
    """
    root: Traversable = (
        importlib.resources.files("llm_worker.migrations") if directory is None else directory
    )
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNN_name.sql", filename=entry.name
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migration number {version} is used twice: "
                f"{found[version].name!r} and {entry.name!r}",
                filename=entry.name,
            )
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[TupleRow]]:
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name=f"{APP_NAME}-migrate")
    except psycopg.Error as exc:  # ProgrammingError: libpq could not parse the DSN
        # `from None`: libpq's own text may quote the password; only the redacted one travels
        raise RegistryUnavailable(
            f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {redact_error(exc, dsn)}"
        ) from None
    with conn:
        yield conn


def _applied(conn: psycopg.Connection[TupleRow]) -> dict[int, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    return {int(v): str(n) for v, n in rows}


def pending(dsn: str, *, directory: Traversable | Path | None = None) -> list[str]:
    """File names of the migrations not yet applied to the database at `dsn`."""
    migrations = discover(directory)
    with _connect(dsn) as conn:
        applied = _applied(conn)
    return [m.name for m in migrations if m.version not in applied]


def _apply(conn: psycopg.Connection[TupleRow], migration: Migration) -> None:
    try:
        with conn.transaction():
            if migration.sql.strip():
                # No parameters: psycopg sends the text as one simple query, so a file may hold
                # many statements, dollar-quoted function bodies and literal % signs.
                conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    except psycopg.Error as exc:
        error = str(exc).strip()
        raise MigrationError(
            f"migration {migration.name} failed and was rolled back: {error}",
            filename=migration.name,
            sql_error=error,
        ) from exc


def migrate(dsn: str, *, directory: Traversable | Path | None = None) -> list[str]:
    """Apply every pending migration; return the names of the files applied ([] if none).

    Raises MigrationError (bad file names, or a file's SQL failed: that file is rolled back,
    earlier files stay applied) and RegistryUnavailable (cannot connect).
    """
    migrations = discover(directory)
    done: list[str] = []
    with _connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            applied = _applied(conn)
            for migration in migrations:
                name = applied.get(migration.version)
                if name is not None:
                    if name != migration.name:
                        log.warning(
                            "migration %d was applied as %r, the file is now %r; not re-applied",
                            migration.version,
                            name,
                            migration.name,
                        )
                    continue
                _apply(conn, migration)
                log.info("applied migration %s", migration.name)
                done.append(migration.name)
        finally:
            if not conn.broken:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
                except psycopg.Error:
                    pass  # the lock goes with the session, which closes right after
    if not done:
        log.debug("no pending migrations")
    return done
