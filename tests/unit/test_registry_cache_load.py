"""The registry cache's loading logic over a fake connection (tests/unit/registry_fakes.py):
the first load, reloads and their log lines, a stale snapshot while PostgreSQL is gone, a dead
kept connection, a hung query, and `start()` giving up or being closed meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from llm_worker.registry import cache as registry_cache
from llm_worker.registry._db import APP_NAME, ROW_FACTORY
from llm_worker.registry.cache import RegistryCache
from llm_worker.registry.errors import FallbackTooDeep, RegistryUnavailable, UnknownModel
from llm_worker.registry.resolve import Candidate, resolve
from tests.unit.registry_fakes import DSN, LOG, WHERE, FakeDB, messages, row


async def test_connections_are_opened_with_the_documented_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def connect(*args: Any, **kwargs: Any) -> object:
        seen.append((args, kwargs))
        raise psycopg.OperationalError("nope")

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    for timeout, sent in ((None, 5), (0.2, 1), (2.6, 3)):
        cache = (
            RegistryCache(DSN) if timeout is None else RegistryCache(DSN, connect_timeout_s=timeout)
        )
        with pytest.raises(psycopg.OperationalError):
            await cache._connect("load")
        args, kwargs = seen.pop()
        assert args == (DSN,)
        assert kwargs == {
            "autocommit": True,
            "row_factory": ROW_FACTORY,
            "connect_timeout": sent,
            "application_name": f"{APP_NAME}-load",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }


async def test_first_load_serves_the_rows_and_reports_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    db = FakeDB(row("chat-small"), row("chat-big", enabled=False))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    await cache.start(timeout=5)
    await cache.start(timeout=5)  # already started: no second load
    try:
        assert cache.loaded and not cache.stale
        assert dict(cache.rows) == db.rows and cache.get("chat-small") == db.rows["chat-small"]
        assert cache.get("nope") is None
        [first] = cache.resolve("chat-small")
        assert (first.upstream_model, first.fallback) == ("up-chat-small", False)
        assert cache.resolve("chat-small") == [first]
        with pytest.raises(UnknownModel):
            cache.resolve("nope")
        stats = cache.stats()
        age = stats.pop("last_reload_age_s")
        assert isinstance(age, float) and 0 <= age < 60
        assert stats == {
            "rows": 2,
            "reloads": 1,
            "reload_errors": 0,
            "stale": False,
            "loaded": True,
            "listening": False,
            "notifications": 0,
        }
        assert messages(caplog, logging.INFO) == [f"registry: loaded 2 rows from {WHERE}"]
        assert db.loads() == 1 and [c.purpose for c in db.conns] == ["load"]
    finally:
        await cache.close()
    assert db.conns[0].closed


async def test_a_reload_swaps_the_snapshot_and_logs_what_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(row("a"), row("b"), row("c", timeout_ms=1000))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    await cache.start(timeout=5)
    caplog.set_level(logging.INFO, logger=LOG)
    try:
        before = cache.rows
        db.rows["c"] = row("c", timeout_ms=2000, endpoint="http://other:1/v1")
        db.rows["a"] = row("a", updated_at=None, rpm_limit=None)  # the same row again
        del db.rows["b"]
        db.rows["d"] = row("d")
        db.rows["e"] = row("e")
        await cache.reload()
        assert dict(cache.rows) == db.rows
        assert sorted(before) == ["a", "b", "c"]  # a snapshot held by a caller never changes
        assert messages(caplog, logging.INFO) == [
            "registry: reloaded, added=['d', 'e'] removed=['b'] changed=[c(endpoint,timeout_ms)]"
        ]
        db.rows["a"] = row("a", max_tokens=5, rpm_limit=7)
        db.rows["c"] = row("c", timeout_ms=2000, endpoint="http://other:1/v1", enabled=False)
        await cache.reload()
        assert messages(caplog, logging.INFO)[-1] == (
            "registry: reloaded, added=[] removed=[] changed=[a(max_tokens,rpm_limit), c(enabled)]"
        )
        caplog.clear()
        same = cache.rows
        resolved = cache.resolve("a")
        await cache.reload()  # nothing changed: the snapshot (and its memo) is kept, no log
        assert cache.rows is same and cache.resolve("a") == resolved
        assert messages(caplog, logging.INFO) == []
        assert cache.stats()["reloads"] == 4
    finally:
        await cache.close()


async def test_an_updated_at_change_alone_is_no_change(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import datetime as dt

    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    db = FakeDB(row("a", updated_at=t0))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    await cache.start(timeout=5)
    caplog.set_level(logging.INFO, logger=LOG)
    try:
        db.rows["a"] = row("a", updated_at=t0 + dt.timedelta(seconds=1))
        await cache.reload()
        assert cache.get("a") == db.rows["a"]
        assert messages(caplog, logging.INFO) == [
            "registry: reloaded, added=[] removed=[] changed=[]"
        ]
    finally:
        await cache.close()


async def test_a_failed_reload_keeps_the_snapshot_and_goes_stale_until_one_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(row("a"), row("b"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    await cache.start(timeout=5)
    caplog.set_level(logging.INFO, logger=LOG)
    try:
        await cache._drop_conn()  # no kept connection: the error is not retried at once
        db.connect_errors["load"] += [
            psycopg.OperationalError("server\n  closed  password=s3cr3t-pw"),
            OSError("no route"),
        ]
        with pytest.raises(RegistryUnavailable) as info:
            await cache.reload()
        assert str(info.value) == (
            f"cannot reload model registry from PostgreSQL at {WHERE}: server closed password=***"
        )
        assert info.value.retryable
        assert cache.stale and cache.loaded and sorted(cache.rows) == ["a", "b"]
        assert cache.resolve("a")[0].row == db.rows["a"]
        with pytest.raises(RegistryUnavailable, match=r": no route$"):
            await cache.reload()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [  # once per outage
            f"registry: reload from PostgreSQL at {WHERE} failed, serving the last snapshot "
            "(2 rows) and retrying: server closed password=***"
        ]
        assert not warnings[0].exc_info  # an expected outage: no traceback
        assert cache.stats()["reload_errors"] == 2 and cache.stats()["stale"] is True
        del db.rows["b"]
        await cache.reload()
        assert not cache.stale and sorted(cache.rows) == ["a"]
        assert "registry: PostgreSQL reachable again, 1 rows loaded" in messages(
            caplog, logging.INFO
        )
    finally:
        await cache.close()


async def test_a_kept_connection_that_died_is_replaced_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    await cache.start(timeout=5)
    try:
        db.rows["b"] = row("b")
        db.execute_errors["load"].append(psycopg.OperationalError("terminated"))
        await cache.reload()  # the kept connection fails: a new one reads the rows
        assert sorted(cache.rows) == ["a", "b"] and not cache.stale
        old, new = db.opened("load")
        assert old.closed and not new.closed
        # a dead connection is not reused: the next load opens a new one
        new.closed = True
        await cache.reload()
        assert len(db.opened("load")) == 3
        # both the kept and the new connection fail: reported, not retried forever
        db.execute_errors["load"].append(psycopg.OperationalError("terminated"))
        db.connect_errors["load"].append(psycopg.OperationalError("refused"))
        with pytest.raises(RegistryUnavailable, match=r": refused$"):
            await cache.reload()
        # another kind of error on the kept connection is not retried
        await cache.reload()
        db.execute_errors["load"].append(psycopg.ProgrammingError("no table"))
        with pytest.raises(RegistryUnavailable, match=r": no table$"):
            await cache.reload()
    finally:
        await cache.close()


async def test_a_hung_query_ends_at_the_query_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False, query_timeout_s=0.05))
    await cache.start(timeout=5)
    try:
        db.hang_load = True
        async with asyncio.timeout(10):
            with pytest.raises(RegistryUnavailable, match=r": TimeoutError$"):
                await cache.reload()
        assert cache.stale and db.opened("load")[0].closed
    finally:
        await cache.close()


async def test_start_retries_and_reports_the_last_real_error_not_the_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, backoff_cap_s=0.01))
    db.connect_errors["load"] += [OSError("refused one"), psycopg.OperationalError("refused two")]
    db.hang_connect = True  # the third attempt hangs until the deadline
    with pytest.raises(RegistryUnavailable) as info:
        await cache.start(timeout=1)
    assert str(info.value) == (
        f"model registry not loaded: gave up after 1 s (3 attempts) on PostgreSQL at "
        f"DATABASE_URL={WHERE} (refused two): set DATABASE_URL to a database this host can "
        "reach, or LLM_WORKER_REGISTRY_WAIT_S to wait longer"
    )
    assert isinstance(info.value.__cause__, TimeoutError)
    assert messages(caplog, logging.WARNING) == [
        f"registry: cannot reach PostgreSQL at DATABASE_URL={WHERE} (refused one); retrying "
        "for 1 s more (LLM_WORKER_REGISTRY_WAIT_S=1)"
    ]
    assert cache.stats()["reload_errors"] == 3 and not cache.loaded
    await cache.close()


async def test_start_that_only_times_out_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN))
    db.hang_connect = True
    with pytest.raises(RegistryUnavailable) as info:
        await cache.start(timeout=0.25)
    assert "gave up after 0.25 s (1 attempts)" in str(info.value)
    assert "(TimeoutError): set DATABASE_URL" in str(info.value)
    await cache.close()


async def test_start_succeeds_after_failures_and_starts_its_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, backoff_cap_s=0.01))
    db.connect_errors["load"] += [OSError("refused")] * 3
    await cache.start()  # no timeout: until it works
    try:
        assert cache.loaded and cache.stats()["reload_errors"] == 3
        assert sorted(t.get_name() for t in cache._tasks) == ["registry-listen", "registry-refresh"]
    finally:
        await cache.close()
    assert cache._tasks == [] and all(c.closed for c in db.conns)


async def test_close_during_the_first_load_starts_nothing_and_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = FakeDB(row("a"))
    cache = db.attach(monkeypatch, RegistryCache(DSN))
    gate = asyncio.Event()
    connect = db.connect

    async def slow_connect(purpose: str) -> object:
        await gate.wait()
        return await connect(purpose)

    monkeypatch.setattr(cache, "_connect", slow_connect)
    start = asyncio.create_task(cache.start(timeout=10))
    await asyncio.sleep(0.01)
    await cache.close()
    gate.set()
    async with asyncio.timeout(10):
        await start
    assert cache._tasks == [] and [c.purpose for c in db.conns] == ["load"]
    assert db.conns[0].closed and cache._conn is None


async def test_resolution_is_computed_once_per_snapshot_and_honours_max_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting(rows: Any, model_id: str, *, max_depth: int) -> list[Candidate]:
        calls.append(model_id)
        return resolve(rows, model_id, max_depth=max_depth)

    monkeypatch.setattr(registry_cache, "resolve", counting)
    db = FakeDB(row("a", fallback_model_id="b"), row("b"))
    cache = db.attach(monkeypatch, RegistryCache(DSN, listen=False))
    shallow = db.attach(monkeypatch, RegistryCache(DSN, listen=False, max_depth=0))
    await cache.start(timeout=5)
    await shallow.start(timeout=5)
    try:
        first = cache.resolve("a")
        assert [c.row.model_id for c in first] == ["a", "b"]
        first.clear()  # a caller's list is its own
        assert [c.row.model_id for c in cache.resolve("a")] == ["a", "b"]
        assert calls == ["a"]  # memoized
        db.rows["b"] = row("b", upstream_model="other")
        await cache.reload()
        assert cache.resolve("a")[1].upstream_model == "other" and calls == ["a", "a"]
        with pytest.raises(FallbackTooDeep):
            shallow.resolve("a")
    finally:
        await cache.close()
        await shallow.close()
