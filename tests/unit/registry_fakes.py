"""A fake PostgreSQL for the registry cache's own logic (load, reload, stale, refresh, LISTEN).

`FakeDB.attach(cache)` replaces the cache's `_connect` with connections to an in-memory table;
a test changes `rows`, queues errors for the next connects or statements, sends notifications,
or makes the load query hang. What psycopg itself does is covered against a real PostgreSQL by
tests/integration/test_registry_pg.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llm_worker.registry._db import SELECT_ALL
from llm_worker.registry.cache import RegistryCache
from llm_worker.registry.models import ModelRow

WHERE = "postgresql://llm:***@db:5432/registry"
DSN = "postgresql://llm:s3cr3t-pw@db:5432/registry"


LOG = "llm_worker.registry"


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """What the registry logged at `level`."""
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == LOG]


def row(model_id: str, **fields: Any) -> ModelRow:
    values: dict[str, Any] = {
        "provider": "openai",
        "endpoint": "http://vllm:8000/v1",
        "upstream_model": f"up-{model_id}",
    }
    values.update(fields)
    return ModelRow(model_id=model_id, **values)


class FakeCursor:
    def __init__(self, rows: list[ModelRow]) -> None:
        self._rows = rows

    async def fetchall(self) -> list[ModelRow]:
        return self._rows


class FakeConn:
    def __init__(self, db: FakeDB, purpose: str) -> None:
        self.db = db
        self.purpose = purpose
        self.closed = False
        self.executed: list[object] = []

    async def execute(self, query: object) -> FakeCursor:
        self.executed.append(query)
        errors = self.db.execute_errors[self.purpose]
        if errors:
            raise errors.pop(0)
        if query is SELECT_ALL:
            if self.db.hang_load:
                await asyncio.Event().wait()
            return FakeCursor([self.db.rows[k] for k in sorted(self.db.rows)])
        return FakeCursor([])

    async def close(self) -> None:
        self.closed = True

    async def notifies(self, *, timeout: float | None = None) -> AsyncIterator[object]:
        """Notifications until `timeout` seconds pass (psycopg's meaning: the whole call)."""
        self.db.notifies_timeouts.append(timeout)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return
            try:
                async with asyncio.timeout(left):
                    item = await self.db.notifications.get()
            except TimeoutError:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class FakeDB:
    def __init__(self, *rows: ModelRow) -> None:
        self.rows = {r.model_id: r for r in rows}
        self.conns: list[FakeConn] = []
        self.connect_errors: dict[str, list[BaseException]] = {"load": [], "listen": []}
        self.execute_errors: dict[str, list[BaseException]] = {"load": [], "listen": []}
        self.notifications: asyncio.Queue[object] = asyncio.Queue()
        self.notifies_timeouts: list[float | None] = []
        self.hang_load = False
        self.hang_connect = False

    def attach(self, monkeypatch: pytest.MonkeyPatch, cache: RegistryCache) -> RegistryCache:
        monkeypatch.setattr(cache, "_connect", self.connect)
        return cache

    async def connect(self, purpose: str) -> FakeConn:
        errors = self.connect_errors[purpose]
        if errors:
            raise errors.pop(0)
        if self.hang_connect and purpose == "load":
            await asyncio.Event().wait()
        conn = FakeConn(self, purpose)
        self.conns.append(conn)
        return conn

    def opened(self, purpose: str) -> list[FakeConn]:
        return [c for c in self.conns if c.purpose == purpose]

    def loads(self) -> int:
        """How many times the table was read."""
        return sum(c.executed.count(SELECT_ALL) for c in self.opened("load"))


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)
