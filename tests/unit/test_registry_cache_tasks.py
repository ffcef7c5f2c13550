"""The registry cache's background tasks over a fake connection (tests/unit/registry_fakes.py):
the periodic refresh and its retries, LISTEN/NOTIFY, a lost or silently dead LISTEN connection,
and close(). The same against a real PostgreSQL: tests/integration/test_registry_pg.py."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from llm_worker.registry import listen as registry_listen
from llm_worker.registry.cache import RegistryCache
from tests.unit.registry_fakes import DSN, LOG, WHERE, FakeDB, eventually, messages, row


async def test_without_notifications_the_table_is_polled_every_refresh_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=0.05, listen=False))
    await cache.start(timeout=5)
    try:
        db.rows["b"] = row("b")
        await eventually(lambda: "b" in cache.rows)
        await eventually(lambda: db.loads() >= 4)
        assert cache.stats()["listening"] is False and db.opened("listen") == []
    finally:
        await cache.close()
    loads = db.loads()
    await asyncio.sleep(0.2)
    assert db.loads() == loads  # close() stopped the polling


async def test_a_long_refresh_period_means_no_reload_without_a_notification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600, listen=False))
    await cache.start(timeout=5)
    try:
        await asyncio.sleep(0.3)
        assert db.loads() == 1 and cache.stats()["reloads"] == 1
    finally:
        await cache.close()


async def test_a_notification_reloads_at_once_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600))
    await cache.start(timeout=5)
    try:
        await eventually(lambda: cache.stats()["listening"] is True)
        [listen] = db.opened("listen")
        assert listen.executed == ["LISTEN model_registry"]
        await eventually(lambda: db.loads() == 2)  # caught up once LISTEN was in place
        db.rows["b"] = row("b")
        for _ in range(3):
            db.notifications.put_nowait(object())
        await eventually(lambda: "b" in cache.rows)
        await eventually(lambda: cache.stats()["notifications"] == 3)
        db.notifications.put_nowait(object())
        db.rows["c"] = row("c")
        await eventually(lambda: "c" in cache.rows)
        assert cache.stats()["notifications"] == 4
        assert not listen.closed and len(db.opened("listen")) == 1
    finally:
        await cache.close()
    assert listen.closed and cache.stats()["listening"] is False


async def test_a_failed_background_reload_is_retried_with_backoff_not_after_refresh_s(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600, backoff_cap_s=0.05))
    await cache.start(timeout=5)
    caplog.set_level(logging.INFO, logger=LOG)
    try:
        await eventually(lambda: db.loads() == 2)
        # the next reload fails on the kept connection and on a new one, twice
        db.execute_errors["load"].append(psycopg.OperationalError("gone"))
        db.connect_errors["load"] += [OSError("refused"), OSError("refused")]
        db.rows["b"] = row("b")
        db.notifications.put_nowait(object())
        await eventually(lambda: "b" in cache.rows)  # retried in ~0.1 s, not in an hour
        assert cache.stats()["reload_errors"] == 2 and not cache.stale
        assert messages(caplog, logging.WARNING) == [
            f"registry: reload from PostgreSQL at {WHERE} failed, serving the last snapshot "
            "(1 rows) and retrying: refused"
        ]
        assert "registry: PostgreSQL reachable again, 2 rows loaded" in messages(
            caplog, logging.INFO
        )
        # once it works again the period is back to refresh_s: no more reloads
        loads = db.loads()
        await asyncio.sleep(0.3)
        assert db.loads() == loads
    finally:
        await cache.close()


async def test_an_unexpected_error_in_a_background_reload_is_logged_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=0.05, listen=False))
    await cache.start(timeout=5)
    caplog.set_level(logging.INFO, logger=LOG)
    try:
        db.execute_errors["load"].append(ValueError("bad row"))
        await eventually(lambda: cache.stats()["reload_errors"] == 1)
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.getMessage().endswith("(1 rows) and retrying: bad row")
        assert warning.exc_info is not None and warning.exc_info[0] is ValueError
        db.rows["b"] = row("b")
        await eventually(lambda: "b" in cache.rows)  # the loop survived it
        assert not cache.stale
    finally:
        await cache.close()


async def test_a_lost_listen_connection_is_reported_once_and_reconnected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600, backoff_cap_s=0.05))
    db.connect_errors["listen"] += [OSError("refused\n one"), OSError("refused two")]
    await cache.start(timeout=5)
    try:
        await eventually(lambda: cache.stats()["listening"] is True)
        assert messages(caplog, logging.WARNING) == [
            f"registry: LISTEN connection to {WHERE} lost, polling every 3600s until it is "
            "back: refused one"
        ]
        assert messages(caplog, logging.INFO)[-1] == "registry: listening for changes again"
        await eventually(lambda: db.loads() == 2)
        caplog.clear()
        # the connection drops: it is closed, a reload checks PostgreSQL, then LISTEN again
        db.rows["b"] = row("b")
        db.notifications.put_nowait(psycopg.OperationalError("terminated"))
        await eventually(lambda: len(db.opened("listen")) == 2)
        await eventually(lambda: "b" in cache.rows)
        first, second = db.opened("listen")
        assert first.closed and second.executed == ["LISTEN model_registry"]
        await eventually(lambda: cache.stats()["listening"] is True)
        assert messages(caplog, logging.WARNING) == [
            f"registry: LISTEN connection to {WHERE} lost, polling every 3600s until it is "
            "back: terminated"
        ]
        assert "registry: listening for changes again" in messages(caplog, logging.INFO)
        await eventually(lambda: db.loads() >= 3)
        assert cache.stats()["notifications"] == 0
    finally:
        await cache.close()


async def test_a_listen_that_fails_is_retried_on_a_new_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600, backoff_cap_s=0.05))
    db.execute_errors["listen"].append(psycopg.OperationalError("no LISTEN"))
    await cache.start(timeout=5)
    try:
        await eventually(lambda: cache.stats()["listening"] is True)
        first, second = db.opened("listen")
        assert first.closed and not second.closed
        assert len(messages(caplog, logging.WARNING)) == 1
    finally:
        await cache.close()


async def test_a_quiet_listen_connection_is_checked_and_replaced_when_dead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_listen, "LISTEN_CHECK_S", 0.05)
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, refresh_s=3600, backoff_cap_s=0.05))
    await cache.start(timeout=5)
    try:
        await eventually(lambda: len(db.notifies_timeouts) >= 3)
        [listen] = db.opened("listen")
        assert listen.executed[0] == "LISTEN model_registry"
        assert set(listen.executed[1:]) == {"SELECT 1"} and len(listen.executed) >= 3
        assert set(db.notifies_timeouts) == {0.05}
        db.execute_errors["listen"].append(psycopg.OperationalError("dead"))
        await eventually(lambda: len(db.opened("listen")) == 2)
        assert listen.closed
    finally:
        await cache.close()


async def test_a_hung_check_query_ends_at_the_query_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_listen, "LISTEN_CHECK_S", 0.02)
    db = FakeDB(row("a"))
    cache = db.attach(
        monkeypatch,
        RegistryCache(DSN, refresh_s=3600, backoff_cap_s=0.05, query_timeout_s=0.05),
    )
    await cache.start(timeout=5)
    try:
        await eventually(lambda: cache.stats()["listening"] is True)
        [listen] = db.opened("listen")
        hang = asyncio.Event()
        real_execute = listen.execute

        async def execute(query: object) -> object:
            await hang.wait()
            return await real_execute(query)

        monkeypatch.setattr(listen, "execute", execute)
        await eventually(lambda: len(db.opened("listen")) == 2)
        assert listen.closed
    finally:
        await cache.close()
