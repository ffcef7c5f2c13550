from __future__ import annotations

import asyncio
import importlib.resources
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from llm_worker.registry import (
    COLUMNS,
    InvalidRow,
    MigrationError,
    ModelRow,
    RegistryCache,
    RegistryUnavailable,
    UnknownModel,
    delete_row,
    get_row,
    list_rows,
    migrate,
    pending,
    set_enabled,
    update_row,
    upsert_row,
)
from llm_worker.registry.migrate import discover
from tests.integration.pg_fixtures import temporary_database

# The pg_server_dsn / pg_dsn fixtures come from tests/integration/pg_fixtures.py via conftest.py.

pytestmark = pytest.mark.integration

ALL = [
    "001_model_registry.sql",
    "002_registry_notify.sql",
    "003_routing_objective.sql",
    "004_structured_outputs.sql",
    "005_stream.sql",
    "006_priority.sql",
    "007_batch_lane.sql",
    "008_batch_deadline_headers.sql",
]


def query(dsn: str, text: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text.encode()).fetchall()


def allow_connections(server_dsn: str, dsn: str, allowed: bool) -> None:
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(name)), sql.Literal(allowed)
            )
        )


def kill_cache_backends(dsn: str, *, via: str | None = None) -> int:
    """Terminate the cache's load and LISTEN connections to `dsn`'s database, as an admin or a
    server failover would; `via` is another database to connect through."""
    with psycopg.connect(via or dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name IN "
            "('llm-worker-registry-load', 'llm-worker-registry-listen')",
            (conninfo_to_dict(dsn)["dbname"],),
        ).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not cond():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return loop.time() - start


def chat_rows() -> list[ModelRow]:
    return [
        ModelRow(
            model_id="chat",
            provider="openai",
            endpoint="https://api.openai.com/v1",
            upstream_model="gpt-4o-mini",
            fallback_model_id="chat-backup",
            api_key_secret="openai-key",
            input_cost_per_1k=0.00015,
            output_cost_per_1k=0.0006,
        ),
        ModelRow(model_id="chat-backup", provider="fake", endpoint="", upstream_model="fake-chat"),
    ]


# -- migrations ----------------------------------------------------------------------------------


def test_migrate_applies_in_order_then_is_a_noop(pg_server_dsn: str) -> None:
    with temporary_database(pg_server_dsn, migrated=False) as dsn:
        assert pending(dsn) == ALL
        assert migrate(dsn) == ALL
        assert migrate(dsn) == []
        assert pending(dsn) == []
        assert query(dsn, "SELECT version, name FROM schema_migrations ORDER BY 1") == [
            (i + 1, name) for i, name in enumerate(ALL)
        ]
        columns = query(
            dsn,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'model_registry' ORDER BY ordinal_position",
        )
        assert tuple(c for (c,) in columns) == COLUMNS


def test_concurrent_migrations_apply_once(pg_server_dsn: str) -> None:
    with temporary_database(pg_server_dsn, migrated=False) as dsn:
        barrier = threading.Barrier(2)

        def run() -> list[str]:
            barrier.wait()
            return migrate(dsn)

        with ThreadPoolExecutor(2) as pool:
            results = [f.result(timeout=60) for f in [pool.submit(run), pool.submit(run)]]
        assert sorted(results, key=len) == [[], ALL]
        assert query(dsn, "SELECT count(*) FROM schema_migrations") == [(len(ALL),)]


def copy_shipped(directory: Path) -> None:
    for entry in importlib.resources.files("llm_worker.migrations").iterdir():
        if entry.name.endswith(".sql"):
            (directory / entry.name).write_text(entry.read_text(encoding="utf-8"))


def test_broken_migration_rolls_back_and_names_the_file(pg_server_dsn: str, tmp_path: Path) -> None:
    copy_shipped(tmp_path)
    bad = tmp_path / "099_broken.sql"
    bad.write_text(
        "CREATE TABLE half_done (x int);\n"
        "INSERT INTO model_registry (model_id, provider, upstream_model) VALUES ('x', 'a', 'b');\n"
        "SELECT no_such_function();\n"
    )
    with temporary_database(pg_server_dsn, migrated=False) as dsn:
        with pytest.raises(MigrationError, match=r"099_broken\.sql") as info:
            migrate(dsn, directory=tmp_path)
        assert info.value.filename == "099_broken.sql"
        assert info.value.sql_error is not None and "no_such_function" in info.value.sql_error
        assert query(dsn, "SELECT to_regclass('half_done')") == [(None,)]
        assert query(dsn, "SELECT count(*) FROM model_registry") == [(0,)]
        assert query(dsn, "SELECT version FROM schema_migrations ORDER BY 1") == [
            (i + 1,) for i in range(len(ALL))
        ]
        assert pending(dsn, directory=tmp_path) == ["099_broken.sql"]

        bad.write_text("CREATE TABLE half_done (x int);\n")
        assert migrate(dsn, directory=tmp_path) == ["099_broken.sql"]
        assert query(dsn, "SELECT count(*) FROM half_done") == [(0,)]


def test_migration_files_are_validated(tmp_path: Path) -> None:
    (tmp_path / "9_nine.sql").write_text("SELECT 1;")
    (tmp_path / "10_ten.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.name for m in discover(tmp_path)] == ["9_nine.sql", "10_ten.sql"]
    (tmp_path / "010_also_ten.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="number 10 is used twice"):
        discover(tmp_path)
    (tmp_path / "010_also_ten.sql").unlink()
    (tmp_path / "cleanup.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"'cleanup\.sql' is not named NNN_name\.sql"):
        discover(tmp_path)


def test_unreachable_database_is_reported_without_password() -> None:
    dsn = "postgresql://llm:s3cr3t-pw@127.0.0.1:1/registry?connect_timeout=2"
    for call in (lambda: migrate(dsn), lambda: list_rows(dsn)):
        with pytest.raises(RegistryUnavailable) as info:
            call()
        assert "s3cr3t-pw" not in str(info.value) and "llm:***@127.0.0.1" in str(info.value)


# -- admin store ---------------------------------------------------------------------------------


def test_store_round_trip(pg_dsn: str) -> None:
    chat, backup = chat_rows()
    upsert_row(pg_dsn, chat)
    upsert_row(pg_dsn, backup)
    stored = get_row(pg_dsn, "chat")
    assert stored is not None and stored.updated_at is not None
    assert stored == msgspec.structs.replace(chat, updated_at=stored.updated_at)
    assert isinstance(stored.input_cost_per_1k, float) and stored.input_cost_per_1k == 0.00015
    assert [r.model_id for r in list_rows(pg_dsn)] == ["chat", "chat-backup"]

    updated = update_row(pg_dsn, "chat", provider="azure_openai", max_tokens=512, rpm_limit=60)
    assert (updated.provider, updated.max_tokens, updated.rpm_limit) == ("azure_openai", 512, 60)
    assert updated.updated_at is not None and updated.updated_at > stored.updated_at
    assert get_row(pg_dsn, "chat") == updated

    assert not set_enabled(pg_dsn, "chat", False).enabled
    upsert_row(pg_dsn, chat)  # upsert overwrites every column
    again = get_row(pg_dsn, "chat")
    assert again is not None and again.updated_at is not None
    assert again == msgspec.structs.replace(chat, updated_at=again.updated_at)
    assert again.updated_at > updated.updated_at

    with pytest.raises(ValueError, match="bogus"):
        update_row(pg_dsn, "chat", bogus=1)
    with pytest.raises(InvalidRow, match="max_tokens_positive"):
        update_row(pg_dsn, "chat", max_tokens=0)
    with pytest.raises(UnknownModel, match="'ghost'"):
        update_row(pg_dsn, "ghost", enabled=False)

    assert delete_row(pg_dsn, "chat") is True
    assert delete_row(pg_dsn, "chat") is False
    assert get_row(pg_dsn, "chat") is None


# -- cache ---------------------------------------------------------------------------------------


async def test_cache_loads_and_resolves(pg_dsn: str) -> None:
    for row in chat_rows():
        upsert_row(pg_dsn, row)
    cache = RegistryCache(pg_dsn, refresh_s=60)
    assert not cache.loaded
    with pytest.raises(RegistryUnavailable):
        cache.resolve("chat")
    await cache.start(timeout=10)
    try:
        assert cache.loaded and not cache.stale
        assert set(cache.rows) == {"chat", "chat-backup"}
        got = cache.resolve("chat")
        assert [c.endpoint_name for c in got] == ["chat/primary", "chat-backup/primary"]
        assert got[0].row.api_key_secret == "openai-key"
        with pytest.raises(UnknownModel):
            cache.resolve("nope")
        stats = cache.stats()
        assert stats["rows"] == 2 and stats["reloads"] >= 1 and stats["stale"] is False
    finally:
        await cache.close()
        await cache.close()  # idempotent


async def test_row_update_reaches_cache_via_notify(pg_dsn: str) -> None:
    for row in chat_rows():
        upsert_row(pg_dsn, row)
    async with RegistryCache(pg_dsn, refresh_s=60) as cache:
        await eventually(lambda: cache.stats()["listening"] is True)
        held = cache.resolve("chat")

        await asyncio.to_thread(update_row, pg_dsn, "chat", endpoint="https://eu.example/v1")
        took = await eventually(lambda: cache.rows["chat"].endpoint == "https://eu.example/v1")
        assert took < 2.0
        notified = cache.stats()["notifications"]
        assert isinstance(notified, int) and notified >= 1

        # failover by disabling the row: traffic goes to the fallback at once
        await asyncio.to_thread(set_enabled, pg_dsn, "chat", False)
        await eventually(lambda: not cache.rows["chat"].enabled)
        assert [c.endpoint_name for c in cache.resolve("chat")] == ["chat-backup/primary"]
        # a request that already resolved keeps its candidates
        assert held[0].endpoint == "https://api.openai.com/v1"


async def test_cache_survives_killed_connections(pg_dsn: str) -> None:
    for row in chat_rows():
        upsert_row(pg_dsn, row)
    async with RegistryCache(pg_dsn, refresh_s=60) as cache:
        await eventually(lambda: cache.stats()["listening"] is True)
        assert await asyncio.to_thread(kill_cache_backends, pg_dsn) >= 2
        assert cache.resolve("chat")[0].provider == "openai"  # still serving

        await eventually(lambda: cache.stats()["listening"] is True)
        await asyncio.to_thread(update_row, pg_dsn, "chat", provider="openai_compatible")
        await eventually(lambda: cache.rows["chat"].provider == "openai_compatible")
        assert cache.resolve("chat")[0].provider == "openai_compatible"
        assert not cache.stale


async def test_cache_goes_stale_and_recovers(
    pg_server_dsn: str, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_worker.registry")
    for row in chat_rows():
        upsert_row(pg_dsn, row)
    async with RegistryCache(pg_dsn, refresh_s=60) as cache:
        await eventually(lambda: cache.stats()["listening"] is True)
        await asyncio.to_thread(allow_connections, pg_server_dsn, pg_dsn, False)
        try:
            await asyncio.to_thread(kill_cache_backends, pg_dsn, via=pg_server_dsn)
            await eventually(lambda: cache.stale)
            await asyncio.sleep(0.5)  # several failed reconnects
            assert cache.resolve("chat")[0].endpoint_name == "chat/primary"
            with pytest.raises(RegistryUnavailable):
                await cache.reload()
        finally:
            await asyncio.to_thread(allow_connections, pg_server_dsn, pg_dsn, True)
        await asyncio.to_thread(set_enabled, pg_dsn, "chat", False)
        await eventually(lambda: not cache.rows["chat"].enabled, timeout=10)
        assert not cache.stale
        errors = cache.stats()["reload_errors"]
        assert isinstance(errors, int) and errors >= 2
    stale_logs = [r for r in caplog.records if "serving the last snapshot" in r.getMessage()]
    assert len(stale_logs) == 1  # a state change is logged once, not per retry
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_start_waits_for_postgres(pg_server_dsn: str, pg_dsn: str) -> None:
    await asyncio.to_thread(allow_connections, pg_server_dsn, pg_dsn, False)
    cache = RegistryCache(pg_dsn, refresh_s=60)
    try:
        starting = asyncio.create_task(cache.start(timeout=20))
        await asyncio.sleep(0.5)
        assert not starting.done() and not cache.loaded
        await asyncio.to_thread(allow_connections, pg_server_dsn, pg_dsn, True)
        await asyncio.wait_for(starting, 10)
        assert cache.loaded and cache.rows == {}
    finally:
        await asyncio.to_thread(allow_connections, pg_server_dsn, pg_dsn, True)
        await cache.close()


async def test_start_gives_up_after_timeout_without_leaking_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_worker.registry")
    cache = RegistryCache("postgresql://llm:s3cr3t-pw@127.0.0.1:1/registry")
    with pytest.raises(RegistryUnavailable, match=r"gave up after 0\.5 s") as info:
        await cache.start(timeout=0.5)
    await cache.close()
    assert "s3cr3t-pw" not in str(info.value) and "llm:***@127.0.0.1:1" in str(info.value)
    assert "set DATABASE_URL" in str(info.value)  # the line names what to fix
    assert "s3cr3t-pw" not in caplog.text
    assert not cache.loaded
