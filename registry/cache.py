"""The worker's in-memory copy of `model_registry`, kept fresh by LISTEN/NOTIFY and polling.

    cache = RegistryCache(dsn, refresh_s=5.0)
    await cache.start(timeout=30)        # first load, retried with backoff until `timeout`
    candidates = cache.resolve("chat-small")
    await cache.close()

After `start()` two background tasks run: one reloads every `refresh_s` seconds, or ~50 ms after
a notification on channel `model_registry`; the other, `registry.listen.ChangeListener`, holds
a LISTEN connection and reconnects with backoff when it drops (and reloads on reconnect, to catch
what it missed). While PostgreSQL
is unreachable the last good snapshot keeps serving and `stale` is True.

A reload swaps in a new immutable snapshot, so callers keep the candidates they already hold.
Resolution is memoized per snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from types import MappingProxyType, TracebackType

import psycopg

from llm_worker.adapters.backoff import Backoff
from llm_worker.registry._db import (
    APP_NAME,
    DB_ERRORS,
    ROW_FACTORY,
    SELECT_ALL,
    redact_dsn,
    redact_error,
)
from llm_worker.registry.dsn import chainable
from llm_worker.registry.errors import RegistryUnavailable
from llm_worker.registry.listen import ChangeListener
from llm_worker.registry.models import COLUMNS, ModelRow
from llm_worker.registry.resolve import DEFAULT_MAX_DEPTH, Candidate, resolve

__all__ = ["PROGRESS_S", "RECONNECT_BASE_S", "RegistryCache"]

log = logging.getLogger("llm_worker.registry")


Stats = dict[str, int | float | bool | None]

RECONNECT_BASE_S = 0.1
"""The wait after the first failed attempt to reach PostgreSQL; it doubles with each failure up
to `backoff_cap_s`, with equal jitter (half to all of it)."""


PROGRESS_S = 5.0
"""While the first load retries, a progress line at most this often."""

_NO_RETRY = {
    "password authentication failed": "set DATABASE_URL with the right user and password",
    "no password supplied": "set DATABASE_URL with the user's password",
    "no pg_hba.conf entry": "set DATABASE_URL to a user and host the server lets in (pg_hba.conf)",
    "role ": "set DATABASE_URL with a user that exists",  # role "x" does not exist
    "database ": "set DATABASE_URL to a database that exists",  # database "x" does not exist
}
"""What libpq says when the server refuses the connection itself: trying again cannot help."""


def _no_retry_helps(exc: BaseException) -> str | None:
    """The fix for a failure no retry mends (a wrong password, a missing database, the table
    not created yet), or None for one worth retrying (the server down or starting)."""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return "the registry table does not exist: run `llm-worker migrate` first"
    if not isinstance(exc, psycopg.OperationalError):
        return None
    text = str(exc)
    for said, fix in _NO_RETRY.items():
        if said in text and (not said.endswith(" ") or "does not exist" in text):
            return fix
    return None


class _Snapshot:
    """Rows of one load plus the resolutions computed from them."""

    __slots__ = ("_memo", "max_depth", "rows")

    def __init__(self, rows: dict[str, ModelRow], max_depth: int) -> None:
        self.rows: Mapping[str, ModelRow] = MappingProxyType(rows)
        self.max_depth = max_depth
        self._memo: dict[str, tuple[Candidate, ...]] = {}

    def resolve(self, model_id: str) -> list[Candidate]:
        hit = self._memo.get(model_id)
        if hit is None:  # errors are not memoized: recomputing them is cheap and bounded
            hit = tuple(resolve(self.rows, model_id, max_depth=self.max_depth))
            self._memo[model_id] = hit
        return list(hit)


def _diff(old: Mapping[str, ModelRow], new: Mapping[str, ModelRow]) -> str:
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = []
    for key in sorted(new.keys() & old.keys()):
        fields = [
            c for c in COLUMNS if c != "updated_at" and getattr(old[key], c) != getattr(new[key], c)
        ]
        if fields:
            changed.append(f"{key}({','.join(fields)})")
    return f"added={added} removed={removed} changed=[{', '.join(changed)}]"


class RegistryCache:
    def __init__(
        self,
        dsn: str,
        *,
        refresh_s: float = 5.0,
        listen: bool = True,
        max_depth: int = DEFAULT_MAX_DEPTH,
        debounce_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        query_timeout_s: float = 10.0,
    ) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s}")
        if max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {max_depth}")
        self._dsn = dsn
        self._where = redact_dsn(dsn)
        self._refresh_s = refresh_s
        self._listen = listen
        self._max_depth = max_depth
        self._debounce_s = debounce_s
        self._backoff = Backoff(RECONNECT_BASE_S, backoff_cap_s, "equal")
        self._connect_timeout = max(1, round(connect_timeout_s))
        self._query_timeout_s = query_timeout_s
        self._snapshot = _Snapshot({}, max_depth)
        self._conn: psycopg.AsyncConnection[ModelRow] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listener = ChangeListener(
            lambda purpose: self._connect(purpose),  # looked up per call: tests replace it
            self._wake,
            self._backoff,
            where=self._where,
            poll_s=refresh_s,
            query_timeout_s=query_timeout_s,
            describe=self._describe,
        )
        self._loaded = False
        self._stale = False
        self._started = False
        self._closed = False
        self._reloads = 0
        self._reload_errors = 0
        self._last_reload: float | None = None

    # -- public surface -----------------------------------------------------------------------

    @property
    def rows(self) -> Mapping[str, ModelRow]:
        """The current snapshot (read-only; a reload replaces it, never mutates it)."""
        return self._snapshot.rows

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def stale(self) -> bool:
        """True while the latest reload failed and an older snapshot is being served."""
        return self._stale

    def get(self, model_id: str) -> ModelRow | None:
        return self._snapshot.rows.get(model_id)

    def resolve(self, model_id: str) -> list[Candidate]:
        """Candidates for `model_id`, best first; raises the `registry.errors` ResolveErrors,
        or RegistryUnavailable before the first load."""
        if not self._loaded:
            raise RegistryUnavailable(
                f"model registry not loaded yet from PostgreSQL at {self._where}"
            )
        return self._snapshot.resolve(model_id)

    def stats(self) -> Stats:
        last = self._last_reload
        return {
            "rows": len(self._snapshot.rows),
            "reloads": self._reloads,
            "reload_errors": self._reload_errors,
            "last_reload_age_s": None if last is None else time.monotonic() - last,
            "stale": self._stale,
            "loaded": self._loaded,
            "listening": self._listener.listening,
            "notifications": self._listener.notifications,
        }

    async def start(self, timeout: float | None = None) -> None:
        """Load every row, retrying with backoff; then start the refresh and LISTEN tasks.

        Raises RegistryUnavailable if nothing could be loaded within `timeout` seconds
        (None: keep trying until cancelled).
        """
        if self._closed:
            raise RuntimeError("RegistryCache is closed")
        if self._started:
            return
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        attempt = 0
        last_error: str | None = None
        said = -math.inf  # when the last progress line was logged
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._reload()
                break
            except DB_ERRORS as exc:
                if last_error is None or not isinstance(exc, TimeoutError):
                    last_error = self._describe(exc)
                attempt += 1
                self._reload_errors += 1
                if final := _no_retry_helps(exc):
                    raise RegistryUnavailable(
                        "model registry not loaded from PostgreSQL at "
                        f"DATABASE_URL={self._where} ({last_error}): {final}"
                    ) from chainable(exc)
                remaining = None if deadline is None else deadline - loop.time()
                if self._closed or (remaining is not None and remaining <= 0):
                    raise self._gave_up(timeout, attempt, last_error) from chainable(exc)
                if loop.time() - said >= PROGRESS_S:
                    said = loop.time()
                    self._still_trying(last_error, remaining, timeout)
                delay = self._backoff.delay(attempt)
                await asyncio.sleep(delay if remaining is None else min(delay, remaining))
        if self._closed:  # close() ran while we were loading
            await self._drop_conn()
            return
        self._started = True
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="registry-refresh"))
        if self._listen:
            self._tasks.append(asyncio.create_task(self._listener.run(), name="registry-listen"))

    def _still_trying(self, error: str, remaining: float | None, timeout: float | None) -> None:
        """A progress line while the first load retries: every PROGRESS_S, not silence."""
        left = (
            "until stopped"
            if remaining is None or timeout is None
            else f"for {remaining:.0f} s more (LLM_WORKER_REGISTRY_WAIT_S={timeout:g})"
        )
        log.warning(
            "registry: cannot reach PostgreSQL at DATABASE_URL=%s (%s); retrying %s",
            self._where,
            error,
            left,
        )

    def _gave_up(self, timeout: float | None, attempts: int, error: str) -> RegistryUnavailable:
        if timeout is None:
            return RegistryUnavailable(
                f"model registry not loaded: PostgreSQL at DATABASE_URL={self._where} not "
                f"usable before close() ({attempts} attempts): {error}"
            )
        return RegistryUnavailable(
            f"model registry not loaded: gave up after {timeout:g} s ({attempts} attempts) on "
            f"PostgreSQL at DATABASE_URL={self._where} ({error}): set DATABASE_URL to a "
            "database this host can reach, or LLM_WORKER_REGISTRY_WAIT_S to wait longer"
        )

    async def reload(self) -> None:
        """Reload now; raises RegistryUnavailable (and keeps the old snapshot) on failure."""
        try:
            await self._reload()
        except DB_ERRORS as exc:
            self._reload_failed(exc)
            raise RegistryUnavailable(
                f"cannot reload model registry from PostgreSQL at {self._where}: "
                f"{self._describe(exc)}"
            ) from chainable(exc)

    async def close(self) -> None:
        """Stop the background tasks and close the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await self._drop_conn()
            self._listener.listening = False

    async def __aenter__(self) -> RegistryCache:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- loading ------------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        """`exc` on one line, without any form of the DSN's passwords (libpq may quote them)."""
        return redact_error(exc, self._dsn)

    async def _connect(self, purpose: str) -> psycopg.AsyncConnection[ModelRow]:
        return await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            row_factory=ROW_FACTORY,
            connect_timeout=self._connect_timeout,
            application_name=f"{APP_NAME}-{purpose}",
            # a half-open TCP connection (a peer gone without a FIN) is noticed in ~25 s
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _fetch_once(self) -> dict[str, ModelRow]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect("load")
            async with asyncio.timeout(self._query_timeout_s):
                cur = await self._conn.execute(SELECT_ALL)
                rows = await cur.fetchall()
        except BaseException:
            await self._drop_conn()
            raise
        return {row.model_id: row for row in rows}

    async def _reload(self) -> None:
        async with self._lock:
            reused = self._conn is not None
            try:
                rows = await self._fetch_once()
            except psycopg.OperationalError as exc:
                if not reused:
                    raise
                # The kept connection may have died while idle (terminated, server restart).
                log.debug(
                    "registry: kept connection failed (%s); reconnecting", self._describe(exc)
                )
                rows = await self._fetch_once()
            self._install(rows)

    def _install(self, rows: dict[str, ModelRow]) -> None:
        self._reloads += 1
        self._last_reload = time.monotonic()
        old = self._snapshot.rows
        if self._stale:
            self._stale = False
            log.info("registry: PostgreSQL reachable again, %d rows loaded", len(rows))
        if not self._loaded:
            self._loaded = True
            self._snapshot = _Snapshot(rows, self._max_depth)
            log.info("registry: loaded %d rows from %s", len(rows), self._where)
        elif rows != old:
            self._snapshot = _Snapshot(rows, self._max_depth)
            log.info("registry: reloaded, %s", _diff(old, rows))

    def _reload_failed(self, exc: BaseException) -> None:
        self._reload_errors += 1
        if not self._stale and self._loaded:
            self._stale = True
            log.warning(
                "registry: reload from PostgreSQL at %s failed, serving the last snapshot "
                "(%d rows) and retrying: %s",
                self._where,
                len(self._snapshot.rows),
                self._describe(exc),
                exc_info=not isinstance(exc, DB_ERRORS),
            )

    # -- background tasks -----------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        failures = 0
        while True:
            delay = self._refresh_s
            if failures:
                delay = min(delay, self._backoff.delay(failures))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(self._debounce_s)  # let a burst of notifications settle
            self._wake.clear()
            try:
                await self._reload()
            except Exception as exc:
                failures += 1
                self._reload_failed(exc)
            else:
                failures = 0
