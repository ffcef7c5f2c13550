"""Hearing about registry changes: one LISTEN connection on channel `model_registry`.

    listener = ChangeListener(connect, wake, backoff, where=..., poll_s=..., query_timeout_s=...,
                              describe=...)
    task = asyncio.create_task(listener.run())

Every notification sets `wake` (the cache reloads on it). A connection that drops is replaced
with backoff, and `wake` is set on each (re)connect to catch up with changes made meanwhile; a
connection quiet for `LISTEN_CHECK_S` is checked with `SELECT 1`, so one that died silently is
replaced instead of leaving changes to the periodic poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from llm_worker.adapters.backoff import Backoff
from llm_worker.registry._db import CHANNEL, DB_ERRORS

__all__ = ["LISTEN_CHECK_S", "ChangeListener"]

log = logging.getLogger("llm_worker.registry")

LISTEN_CHECK_S = 30.0
"""A LISTEN connection with no notification for this long runs `SELECT 1`: a connection that
died silently is replaced instead of leaving changes to the periodic poll."""


class ChangeListener:
    """Holds the LISTEN connection and turns notifications into `wake.set()`."""

    def __init__(
        self,
        connect: Callable[[str], Awaitable[psycopg.AsyncConnection[Any]]],
        wake: asyncio.Event,
        backoff: Backoff,
        *,
        where: str,
        poll_s: float,
        query_timeout_s: float,
        describe: Callable[[BaseException], str],
    ) -> None:
        self._connect = connect
        self._wake = wake
        self._backoff = backoff
        self._where = where
        self._poll_s = poll_s
        self._query_timeout_s = query_timeout_s
        self._describe = describe
        self.listening = False
        self.notifications = 0

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        failures = 0
        while True:
            try:
                conn = await self._connect("listen")
            except DB_ERRORS as exc:
                failures += 1
                self._failed(failures, exc)
                await asyncio.sleep(self._backoff.delay(failures))
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self.listening = True
                if failures:
                    log.info("registry: listening for changes again")
                failures = 0
                self._wake.set()  # reload: catch up with changes made while not listening
                await self._hear(conn)
            except DB_ERRORS as exc:
                failures += 1
                self._failed(failures, exc)
                self._wake.set()  # find out at once whether PostgreSQL itself is gone
            finally:
                self.listening = False
                await conn.close()
            await asyncio.sleep(self._backoff.delay(failures))

    async def _hear(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wake the cache on each notification; a quiet connection is checked now and then:
        dead, or just quiet? Returns only by raising."""
        while True:
            got = 0
            async with contextlib.aclosing(conn.notifies(timeout=LISTEN_CHECK_S)) as notifies:
                async for _ in notifies:
                    got += 1
                    self.notifications += 1
                    self._wake.set()
            if not got:
                async with asyncio.timeout(self._query_timeout_s):
                    await conn.execute("SELECT 1")

    def _failed(self, failures: int, exc: BaseException) -> None:
        if failures == 1:
            log.warning(
                "registry: LISTEN connection to %s lost, polling every %gs until it is back: %s",
                self._where,
                self._poll_s,
                self._describe(exc),
            )
