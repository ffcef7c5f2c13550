"""PostgreSQL for integration tests.

`pg_server_dsn` (session): `DATABASE_URL` from the environment if set, else an embedded
PostgreSQL 16 started with pgserver in a temp directory. `pg_dsn` (function): a fresh database
`t_<uuid8>` on that server with every migration applied, dropped afterwards.
`temporary_database()` does the same as a context manager, optionally without migrating.
`own_postgres` (function): a PostgreSQL server of the test's own, migrated, that the test may
stop and start (`halt()` / `resume()`) for an outage.

With `CI` set, a missing `pgserver` fails the session instead of skipping its tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from llm_worker.devkit.devstack import LocalPostgres
from llm_worker.registry.migrate import migrate

__all__ = [
    "database_dsn",
    "need_pgserver",
    "own_postgres",
    "pg_dsn",
    "pg_server_dsn",
    "temporary_database",
]


def need_pgserver() -> None:
    """Skip without the `pgserver` package, except in CI (`CI` set), where it must be there."""
    try:
        import pgserver  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pgserver is not installed, and CI must run every integration test")
        pytest.skip("pgserver is not installed")


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    need_pgserver()
    import pgserver

    # Not under pytest's basetemp: a pytest run that starts meanwhile (another checkout, a
    # unit-test run) prunes old basetemps and would delete the live data directory.
    pgdata = tempfile.mkdtemp(prefix="llm-worker-pgdata-")
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)


def database_dsn(server_dsn: str, dbname: str) -> str:
    """`server_dsn` pointed at database `dbname` (URL form kept when given a URL)."""
    if server_dsn.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{dbname}"))
    return make_conninfo(server_dsn, dbname=dbname)


@contextmanager
def temporary_database(server_dsn: str, *, migrated: bool = True) -> Iterator[str]:
    """Create database `t_<uuid8>`, yield its DSN, drop it (even with open connections)."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = database_dsn(server_dsn, name)
        if migrated:
            migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    with temporary_database(pg_server_dsn) as dsn:
        yield dsn


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    need_pgserver()
    pg = LocalPostgres().start()
    try:
        migrate(pg.dsn)
        yield pg
    finally:
        pg.stop()
