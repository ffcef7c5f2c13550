"""The batch lane's collector: groups stored requests into provider jobs, submits them, polls
them, and delivers every answer. One replica at a time does it: the one holding the lane's
advisory lock in Postgres (`registry.batches.try_lease`); the others try again every poll,
so any replica takes over when the holder dies (its connection, and the lock, go with it).

Each step is written to Postgres before the next can happen, so a crash anywhere repeats at
most the step it was in:
- a job's row (state `submitting`, a fresh `job_key`) is written, with its requests, before
  anything is sent; a job found `submitting` after a restart is looked up at the provider by
  its key (`BatchClient.find`) and submitted only if the provider has none;
- a job's answers are written (requests `answered`, the records to deliver) in one
  transaction with the job's `collected`;
- a request is marked `done` only after Kafka acknowledged its record. A crash between the
  two delivers that record again: the at-least-once duplicate the README explains.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec

from llm_worker.adapters.base import ProviderRequest, Target
from llm_worker.adapters.batch import FINAL_STATES, BatchClient, BatchItem, BatchJob, BatchResult
from llm_worker.adapters.errors import BadRequest, ProviderError
from llm_worker.registry import batches as db
from llm_worker.registry.models import ModelRow

from ..config import Settings
from ..messages import Prompt, decode_prompt, provider_request
from ..ops.metrics import Metrics
from .answers import answer, expired_completion
from .clients import BatchClients

__all__ = ["AtomicSender", "BatchRunner", "OutRecord", "Produce"]

log = logging.getLogger("llm_worker.batch")

Headers = list[tuple[str, bytes]] | None
OutRecord = tuple[str, bytes, bytes | None, Headers]
"""A record the lane delivers: topic, value, key, headers (the prompt's trace headers)."""

Produce = Callable[[str, bytes, bytes | None, Headers], Awaitable[None]]
"""Produce a record and return once Kafka acknowledged it (raises if it could not)."""


class AtomicSender(Protocol):
    """Exactly-once mode's delivery (`worker.stream.batch_sender.BatchSender`)."""

    @property
    def started(self) -> bool: ...

    async def start(self) -> None: ...

    async def send(self, records: list[OutRecord], attempt: str) -> None:
        """The records and the marker of `attempt` in one transaction (raises if not)."""
        ...

    async def committed_attempts(self, attempts: set[str]) -> set[str]: ...

    async def close(self) -> None: ...


TICK_S = 1.0  # how often the lane looks for work (submissions are due, answers to deliver)
DELIVER_BATCH = 200  # records produced before their done mark: what a crash may repeat


_EXPIRE_BATCH = 1000
"""Requests past their deadline answered per transaction."""


class BatchRunner:
    def __init__(
        self,
        settings: Settings,
        clients: BatchClients,
        rows: Callable[[str], ModelRow | None],
        produce: Produce,
        *,
        metrics: Metrics | None = None,
        sender: AtomicSender | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self._s = settings
        self._clients = clients
        self._rows = rows
        self._produce = produce
        self._metrics = metrics
        self._sender = sender
        self._tick = tick_s
        self._conn: db.Conn | None = None
        self.leased = False
        self._polled: dict[int, float] = {}  # job id -> monotonic time of its last poll
        self._faulted: dict[int, float] = {}  # job id -> when to try again after a fault
        self._cleaned = 0.0
        self.stats: dict[str, Any] = {"waiting": 0, "oldest_s": 0.0, "jobs": {}}

    async def run(self) -> None:
        """Until cancelled: take the lease when free, then do the lane's work every tick."""
        try:
            while True:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database is away: next tick, on a new connection
                    log.warning(
                        "batch lane: %s", exc if isinstance(exc, ProviderError) else repr(exc)
                    )
                    await self._drop()
                await asyncio.sleep(self._tick if self.leased else self._s.batch_poll_s)
        finally:
            await self._drop()

    async def step(self) -> None:
        """One pass: lease, submit what is due, recover, poll, deliver, clean."""
        if self._conn is None or self._conn.closed:
            self.leased = False
            self._conn = await db.connect(self._s.database_url, "runner")
        conn = self._conn
        if not self.leased:
            self.leased = await db.try_lease(conn)
            if not self.leased:
                return
            log.info("batch lane: this replica submits and collects the batch jobs")
            if self._sender is not None:  # fences the last holder's deliveries, then settles them
                await self._sender.start()
                await self._settle(conn)
        self.stats = await db.stats(conn)
        self._export()
        await self._recover(conn)
        await self._expire(conn)
        await self._submit_due(conn)
        await self._poll(conn)
        await self._deliver(conn)
        if time.monotonic() - self._cleaned > 60:
            self._cleaned = time.monotonic()
            await db.delete_done(conn, self._s.batch_retention_s)

    # -- submit ---------------------------------------------------------------------------
    async def _expire(self, conn: db.Conn) -> None:
        """Requests whose prompt's deadline passed while they waited: `deadline_exceeded`,
        delivered as a job's answers are, and never sent."""
        while due := await db.past_deadline(conn, _EXPIRE_BATCH):
            answers = [
                (r.id, expired_completion(self._s, r), self._s.completions_topic) for r in due
            ]
            n = await db.answer_waiting(conn, answers)
            log.info("batch lane: %d requests past their prompt's deadline before a job", n)
            if len(due) < _EXPIRE_BATCH:
                return

    async def _submit_due(self, conn: db.Conn) -> None:
        now = datetime.now(UTC)
        for group in await db.waiting_groups(conn):
            row = self._rows(group.model_id)
            _row_id, provider, endpoint, model = group.group_key.split("|", 3)
            client = self._clients.client(provider)
            if client is None or row is None:
                continue  # the row went away or changed provider: its requests wait
            limits = client.limits
            waited = (now - group.oldest).total_seconds()
            if group.waiting < limits.max_requests and waited < self._s.batch_max_wait_s:
                continue
            claimed = await db.claim_group(
                conn,
                group,
                provider=provider,
                endpoint=endpoint,
                upstream_model=model,
                max_requests=limits.max_requests,
                max_bytes=limits.max_bytes * 9 // 10,  # room for each line's envelope
            )
            if claimed is not None:
                job, requests = claimed
                async with self._provider_fault(job, "submitting"):  # left `submitting`: recovered
                    await self._send(conn, job, requests, row)

    async def _send(
        self, conn: db.Conn, job: db.Job, requests: list[db.StoredRequest], row: ModelRow
    ) -> None:
        client = self._clients.client(job.provider)
        assert client is not None
        target = self._clients.target(
            job.provider, job.endpoint, job.upstream_model, row, secret=True
        )
        items = [
            BatchItem(custom_id=_custom_id(job, r), request=_request(self._s, r)) for r in requests
        ]
        try:
            sent = await client.submit(target, items, job.job_key)
        except BadRequest as exc:  # the provider refuses the job itself: never sent again
            await self._refused(conn, job, requests, row, exc)
            return
        await self._submitted(conn, job, sent)

    async def _refused(
        self,
        conn: db.Conn,
        job: db.Job,
        requests: list[db.StoredRequest],
        row: ModelRow,
        exc: BadRequest,
    ) -> None:
        """A job the provider refused as a whole: each request follows `batch_on_error`, as
        one the batch reported errored (online: a live call answers it)."""
        answers = []
        for r in requests:
            failed = BatchResult(custom_id=_custom_id(job, r), error=exc)
            value, topic = answer(self._s, r, failed, job, row)
            answers.append((r.id, value, topic))
        await db.set_answers(
            conn,
            job.id,
            answers,
            {"state": "failed", "error": str(exc)[:1000], "collected_at": datetime.now(UTC)},
        )
        log.warning("batch lane: job %d refused by the provider: %s", job.id, exc)

    async def _submitted(self, conn: db.Conn, job: db.Job, sent: BatchJob) -> None:
        await db.set_job(
            conn,
            job.id,
            state="submitted",
            batch_id=sent.id,
            provider_state=sent.provider_state,
            submitted_at=datetime.now(UTC),
        )
        log.info(
            "batch lane: job %d (%d requests of %s) submitted as %s",
            job.id,
            job.requests,
            job.model_id,
            sent.id,
        )

    async def _recover(self, conn: db.Conn) -> None:
        """Jobs left `submitting` by a crash: found at the provider by key, else sent again."""
        now = time.monotonic()
        for job in await db.jobs_in(conn, ["submitting"]):
            if self._faulted.get(job.id, 0.0) > now:
                continue
            row = self._rows(job.model_id)
            client = self._clients.client(job.provider)
            if row is None or client is None:
                continue
            target = self._clients.target(
                job.provider, job.endpoint, job.upstream_model, row, secret=True
            )
            async with self._provider_fault(job, "recovering"):
                since = job.created_at - timedelta(minutes=5)
                found = await client.find(target, job.job_key, since)
                if found is not None:
                    log.info(
                        "batch lane: job %d was submitted before a restart: %s", job.id, found.id
                    )
                    await self._submitted(conn, job, found)
                else:
                    await self._send(conn, job, await db.job_requests(conn, job.id), row)

    # -- poll and collect -------------------------------------------------------------------
    async def _poll(self, conn: db.Conn) -> None:
        now = time.monotonic()
        for job in await db.jobs_in(conn, ["submitted"]):
            cancel = job.cancel_requested_at is not None and job.provider_state not in _CANCELLING
            if not cancel and now - self._polled.get(job.id, 0.0) < self._s.batch_poll_s:
                continue
            self._polled[job.id] = now
            row = self._rows(job.model_id)
            client = self._clients.client(job.provider)
            if row is None or client is None or job.batch_id is None:
                continue
            target = self._clients.target(
                job.provider, job.endpoint, job.upstream_model, row, secret=True
            )
            async with self._provider_fault(job, "polling"):
                await self._collect(conn, job, client, target, row, cancel)

    async def _collect(
        self,
        conn: db.Conn,
        job: db.Job,
        client: BatchClient,
        target: Target,
        row: ModelRow,
        cancel: bool,
    ) -> None:
        """One submitted job's state at the provider; its answers stored once it ended."""
        assert job.batch_id is not None
        state = await (client.cancel if cancel else client.get)(target, job.batch_id)
        if state.state not in FINAL_STATES:
            await db.set_job(
                conn,
                job.id,
                provider_state=state.provider_state,
                succeeded=state.succeeded,
                errored=state.errored,
            )
            return
        got = await client.results(target, job.batch_id)
        by_id = {r.custom_id: r for r in got if r.custom_id}
        by_place = {r.index: r for r in got if not r.custom_id and r.index is not None}
        requests = await db.job_requests(conn, job.id)  # in the order they were submitted
        answers = []
        for place, r in enumerate(requests):
            if r.state != "submitted":
                continue
            outcome = by_id.get(_custom_id(job, r)) or by_place.get(place)
            value, topic = answer(self._s, r, outcome, job, row)
            answers.append((r.id, value, topic))
        await db.set_answers(
            conn,
            job.id,
            answers,
            {
                "state": "cancelled" if state.state == "cancelled" else "collected",
                "provider_state": state.provider_state,
                "succeeded": state.succeeded,
                "errored": state.errored,
                "collected_at": datetime.now(UTC),
            },
        )
        self._polled.pop(job.id, None)
        log.info(
            "batch lane: job %d (%s) %s: %d answers to deliver",
            job.id,
            job.batch_id,
            state.provider_state,
            len(answers),
        )

    @asynccontextmanager
    async def _provider_fault(self, job: db.Job, doing: str) -> AsyncIterator[None]:
        """A provider's error while working on one job is that job's: logged, and the job is
        taken up again after `batch_poll_s`, while the pass goes on to the other jobs (a
        provider failing for one row holds up neither the others nor the lease)."""
        try:
            yield
        except ProviderError as exc:
            self._faulted[job.id] = time.monotonic() + self._s.batch_poll_s
            log.warning(
                "batch lane: job %d (%s), %s: %s; tried again in %gs",
                job.id,
                job.model_id,
                doing,
                exc,
                self._s.batch_poll_s,
            )
        else:
            self._faulted.pop(job.id, None)

    # -- deliver ----------------------------------------------------------------------------
    async def _settle(self, conn: db.Conn) -> None:
        """Exactly-once: deliveries a collector began and did not mark done are done if their
        marker committed, else go out again."""
        assert self._sender is not None
        begun = await db.open_attempts(conn)
        if begun:
            committed = await self._sender.committed_attempts(begun)
            await db.settle_attempts(conn, committed, begun - committed)
            log.info(
                "batch lane: %d deliveries of an earlier collector committed, %d go again",
                len(committed),
                len(begun - committed),
            )

    async def _deliver_atomically(self, conn: db.Conn, sender: AtomicSender) -> None:
        """Exactly-once: each batch of records in one transaction with its marker; the
        requests are marked with the delivery before it and done after it commits."""
        while batch := await db.to_deliver(conn, DELIVER_BATCH):
            attempt = f"llmw-delivery-{uuid.uuid4().hex}"
            ids = [r.id for r in batch]
            await db.set_attempt(conn, ids, attempt)
            records = [self._out(r) for r in batch]
            try:
                await sender.send(records, attempt)
            except Exception as exc:
                await db.settle_attempts(conn, set(), {attempt})
                log.warning("batch lane: a delivery did not commit (%s); again next tick", exc)
                if not sender.started:
                    self.leased = False  # fenced: another collector took over
                    await self._drop()
                return
            await db.settle_attempts(conn, {attempt}, set())
            self._count(batch)

    async def _deliver(self, conn: db.Conn) -> None:
        """Produce the answered requests' records; mark each done once acknowledged."""
        if self._sender is not None:
            await self._deliver_atomically(conn, self._sender)
            return
        while batch := await db.to_deliver(conn, DELIVER_BATCH):
            sends = [self._produce(*self._out(r)) for r in batch]
            outcomes = await asyncio.gather(*sends, return_exceptions=True)
            delivered = [r for r, o in zip(batch, outcomes, strict=True) if o is None]
            if delivered:
                await db.mark_done(conn, [r.id for r in delivered])
                self._count(delivered)
            done = delivered
            if len(done) < len(batch):
                failed = next(o for o in outcomes if o is not None)
                log.warning(
                    "batch lane: %d records not delivered (%s); again next tick",
                    len(batch) - len(done),
                    failed,
                )
                return

    def _out(self, r: db.StoredRequest) -> OutRecord:
        """The record delivered for an answered request."""
        topic = r.deliver_topic or self._s.completions_topic
        return topic, r.completion or b"", r.record_key, r.record_headers()

    def _count(self, delivered: list[db.StoredRequest]) -> None:
        """The lane's completions in `llm_worker_completions_total` (and errors by type), as
        the online lane counts its own once acknowledged."""
        m = self._metrics
        if m is None:
            return
        for r in delivered:
            if (r.deliver_topic or self._s.completions_topic) != self._s.completions_topic:
                continue  # sent back online: that lane counts its completion
            seen = _seen.decode(r.completion or b"{}")
            m.completions.labels(r.model_id, seen.status).inc()
            if seen.error is not None:
                m.errors.labels(seen.error.type).inc()

    def _export(self) -> None:
        m = self._metrics
        if m is None:
            return
        m.batch_collecting.set(1 if self.leased else 0)
        m.batch_waiting.set(self.stats["waiting"])
        m.batch_oldest.set(self.stats["oldest_s"])
        for state in ("submitting", "submitted", "collected", "cancelled", "failed"):
            m.batch_jobs.labels(state).set(self.stats["jobs"].get(state, 0))

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.leased = False
        if self._sender is not None:
            await self._sender.close()
        if self._metrics is not None:
            self._metrics.batch_collecting.set(0)
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                pass


class _ErrorType(msgspec.Struct):
    type: str = "unknown"


class _Seen(msgspec.Struct):
    status: str = "ok"
    error: _ErrorType | None = None


_seen = msgspec.json.Decoder(_Seen)

_CANCELLING = ("cancelling", "canceling", "cancelled")  # the provider has the cancel


def _custom_id(job: db.Job, r: db.StoredRequest) -> str:
    """A request's id in its job: the job's key first, so a job the provider keeps no key
    of (Anthropic) is still recognized after a crash by its requests (`BatchClient.find`)."""
    return f"{job.job_key}-{r.id}"


def _request(settings: Settings, r: db.StoredRequest) -> ProviderRequest:
    decoded = decode_prompt(
        r.record,
        max_bytes=max(settings.max_message_bytes, len(r.record) + 1),
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    assert isinstance(decoded, Prompt), "stored batch requests were valid prompts"
    return provider_request(decoded)
