"""Batch-lane prompts written to Postgres, many per transaction.

`put` returns once the prompt's row is written: its record's outcome is then `stored`
(nothing to produce) and its offset may be committed, as the online lane's offset follows
its acknowledged completion. A failing database is retried (the offsets wait, unanswered):
a transient fault never becomes an error completion.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from llm_worker.adapters.backoff import Backoff
from llm_worker.adapters.base import ProviderRequest
from llm_worker.registry import batches as db
from llm_worker.registry.errors import RegistryError
from llm_worker.registry.resolve import Candidate

from ..messages import Prompt
from ..records import InputRecord, passthrough_headers
from .clients import BatchClients

__all__ = ["BatchIntake", "group_key", "source_of"]

log = logging.getLogger("llm_worker.batch")

MAX_ROWS = 1000  # rows per transaction


def group_key(cand: Candidate) -> str:
    """Requests that may share a job: the same row, provider, endpoint and model."""
    return "|".join((cand.row.model_id, cand.provider, cand.endpoint, cand.upstream_model))


def source_of(rec: InputRecord) -> str:
    return f"{rec.topic}/{rec.partition}/{rec.offset}"


class BatchIntake:
    def __init__(self, dsn: str, clients: BatchClients) -> None:
        self._dsn = dsn
        self._clients = clients
        self._queue: list[tuple[db.NewRequest, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._conn: db.Conn | None = None
        self.written = 0

    def refuse(self, candidate: Candidate, request: ProviderRequest) -> str | None:
        return self._clients.refuse(candidate, request)

    async def put(
        self,
        rec: InputRecord,
        prompt: Prompt,
        candidate: Candidate,
        deadline_ms: float | None = None,
    ) -> None:
        """Store the prompt; `deadline_ms` (epoch ms) is its own deadline, if it set one."""
        deadline_at = (
            None if deadline_ms is None else datetime.fromtimestamp(deadline_ms / 1000, UTC)
        )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        value = rec.value or b""  # a valid prompt has one
        self._queue.append(
            (
                db.NewRequest(
                    source=source_of(rec),
                    group_key=group_key(candidate),
                    model_id=candidate.row.model_id,
                    prompt_id=prompt.id,
                    record=value,
                    record_key=rec.key,
                    size_bytes=len(value),
                    deadline_at=deadline_at,
                    headers=db.encode_headers(passthrough_headers(rec)),
                ),
                fut,
            )
        )
        self._wake.set()
        await asyncio.shield(fut)  # a cancelled waiter leaves the write to finish

    async def run(self) -> None:
        """Write what `put` queued until cancelled."""
        backoff, failures = Backoff(0.1, 5.0), 0
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    taken, self._queue = self._queue[:MAX_ROWS], self._queue[MAX_ROWS:]
                    try:
                        if self._conn is None or self._conn.closed:
                            self._conn = await db.connect(self._dsn, "intake")
                        await db.write_requests(self._conn, [r for r, _ in taken])
                    except Exception as exc:  # the database is away: try again, losing nothing
                        self._queue[:0] = taken
                        await self._drop()
                        failures += 1
                        delay = backoff.delay(failures)
                        log.warning(
                            "batch lane: storing %d requests failed (%s); again in %.1f s",
                            len(taken),
                            exc if isinstance(exc, RegistryError) else type(exc).__name__,
                            delay,
                        )
                        await asyncio.sleep(delay)
                        continue
                    failures = 0
                    self.written += len(taken)
                    for _, fut in taken:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                pass
