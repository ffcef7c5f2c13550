"""The batch lane's tables (migration 007): requests written before their offsets are
committed, and the provider jobs they are grouped into.

Every function takes an open `psycopg.AsyncConnection` (autocommit; the ones that change
several rows open a transaction of their own). The lane's logic lives in `worker/batch`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from .dsn import redact_dsn
from .errors import RegistryError

__all__ = [
    "BATCH_LOCK",
    "REQUEST_STATES",
    "Group",
    "Job",
    "NewRequest",
    "StoredRequest",
    "answer_waiting",
    "cancel_job",
    "claim_group",
    "connect",
    "delete_done",
    "encode_headers",
    "get_job",
    "job_requests",
    "jobs_in",
    "list_jobs",
    "mark_done",
    "open_attempts",
    "past_deadline",
    "request_states",
    "set_answers",
    "set_attempt",
    "set_job",
    "settle_attempts",
    "stats",
    "to_deliver",
    "try_lease",
    "waiting_groups",
    "write_requests",
]

BATCH_LOCK = 0x6C6C6D62  # "llmb": the advisory lock of the replica that submits and collects
REQUEST_STATES = ("waiting", "submitted", "answered", "done")  # a request's states, in order


class NewRequest(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # topic/partition/offset of the prompt record
    group_key: str
    model_id: str
    prompt_id: str
    record: bytes
    record_key: bytes | None
    size_bytes: int
    deadline_at: datetime | None = None  # the prompt's own deadline; None: it set none
    headers: bytes | None = None  # its record's trace headers (`encode_headers`); None: none


class StoredRequest(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    source: str
    model_id: str
    prompt_id: str
    record: bytes
    record_key: bytes | None
    state: str
    completion: bytes | None = None
    deliver_topic: str | None = None
    headers: bytes | None = None

    def record_headers(self) -> list[tuple[str, bytes]] | None:
        """The headers the record delivered for this request carries."""
        return None if self.headers is None else _headers_decoder.decode(self.headers)


class Group(msgspec.Struct, frozen=True, kw_only=True):
    group_key: str
    model_id: str
    waiting: int
    bytes: int
    oldest: datetime


class Job(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    job_key: str
    group_key: str
    model_id: str
    provider: str
    endpoint: str
    upstream_model: str
    state: str
    batch_id: str | None
    provider_state: str | None
    requests: int
    succeeded: int
    errored: int
    error: str | None
    created_at: datetime
    submitted_at: datetime | None
    collected_at: datetime | None
    cancel_requested_at: datetime | None = None


Conn = psycopg.AsyncConnection[Any]

_headers_decoder = msgspec.json.Decoder(list[tuple[str, bytes]])


def encode_headers(headers: list[tuple[str, bytes]] | None) -> bytes | None:
    """Record headers as stored in `llm_batch_requests.headers` (None: none)."""
    return msgspec.json.encode(headers) if headers else None


_JOB_COLUMNS = ", ".join(Job.__struct_fields__)
_REQUEST_COLUMNS = ", ".join(StoredRequest.__struct_fields__)


async def _requests(conn: Conn, where: str, params: tuple[Any, ...]) -> list[StoredRequest]:
    """The stored requests `where` selects (a condition, then its ORDER BY / LIMIT)."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_REQUEST_COLUMNS} FROM llm_batch_requests WHERE {where}", params
    )
    return [StoredRequest(**r) for r in await cur.fetchall()]


async def connect(dsn: str, purpose: str, timeout: float = 10.0) -> Conn:
    """An autocommit connection for the lane; RegistryError (the DSN redacted) if it fails."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
            application_name=f"llm-worker-batch-{purpose}",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
    except (psycopg.Error, OSError) as exc:
        raise RegistryError(f"batch lane: cannot connect to {redact_dsn(dsn)}: {exc}") from None


async def try_lease(conn: Conn) -> bool:
    """Take the lane's advisory lock on `conn` (held while the connection lives)."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (BATCH_LOCK,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def write_requests(conn: Conn, requests: Sequence[NewRequest]) -> None:
    """Store requests in one transaction; one already stored (its record read again) stays."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO llm_batch_requests (source, group_key, model_id, prompt_id, record,"
            " record_key, size_bytes, deadline_at, headers)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (source) DO NOTHING",
            [
                (
                    r.source,
                    r.group_key,
                    r.model_id,
                    r.prompt_id,
                    r.record,
                    r.record_key,
                    r.size_bytes,
                    r.deadline_at,
                    r.headers,
                )
                for r in requests
            ],
        )


async def waiting_groups(conn: Conn) -> list[Group]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT group_key, min(model_id) AS model_id, count(*) AS waiting,"
        " sum(size_bytes)::bigint AS bytes, min(created_at) AS oldest"
        " FROM llm_batch_requests WHERE state = 'waiting' GROUP BY group_key"
    )
    return [Group(**r) for r in await cur.fetchall()]


async def claim_group(
    conn: Conn,
    group: Group,
    *,
    provider: str,
    endpoint: str,
    upstream_model: str,
    max_requests: int,
    max_bytes: int,
) -> tuple[Job, list[StoredRequest]] | None:
    """Open a job (state `submitting`, a fresh `job_key`) holding the group's oldest waiting
    requests, within the provider's limits; None if none is waiting any more."""
    async with conn.transaction():
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT id, source, model_id, prompt_id, record, record_key, state, size_bytes"
            " FROM llm_batch_requests WHERE state = 'waiting' AND group_key = %s"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
            (group.group_key, max_requests),
        )
        rows = await cur.fetchall()
        taken: list[StoredRequest] = []
        size = 0
        for r in rows:
            size += r.pop("size_bytes")
            if taken and size > max_bytes:
                break
            taken.append(StoredRequest(**r))
        if not taken:
            return None
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"INSERT INTO llm_batch_jobs (job_key, group_key, model_id, provider, endpoint,"
            f" upstream_model, requests) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {_JOB_COLUMNS}",
            (
                f"llmw-{uuid.uuid4().hex}",
                group.group_key,
                group.model_id,
                provider,
                endpoint,
                upstream_model,
                len(taken),
            ),
        )
        job_row = await cur.fetchone()
        assert job_row is not None
        job = Job(**job_row)
        await conn.execute(
            "UPDATE llm_batch_requests SET state = 'submitted', job_id = %s WHERE id = ANY(%s)",
            (job.id, [r.id for r in taken]),
        )
    return job, taken


async def past_deadline(conn: Conn, limit: int) -> list[StoredRequest]:
    """Waiting requests whose prompt's deadline has passed (they are never sent)."""
    return await _requests(
        conn, "state = 'waiting' AND deadline_at <= now() ORDER BY id LIMIT %s", (limit,)
    )


async def answer_waiting(conn: Conn, answers: Sequence[tuple[int, bytes, str]]) -> int:
    """Answer waiting requests without a job (`answered`: their records go out as a job's
    do); one claimed by a job meanwhile keeps its job. Returns how many were answered."""
    async with conn.transaction(), conn.cursor() as cur:
        answered = 0
        for rid, value, topic in answers:
            await cur.execute(
                "UPDATE llm_batch_requests SET state = 'answered', completion = %s,"
                " deliver_topic = %s WHERE id = %s AND state = 'waiting'",
                (value, topic, rid),
            )
            answered += cur.rowcount
    return answered


async def set_job(conn: Conn, job_id: int, **fields: Any) -> None:
    """Update a job's columns (`state`, `batch_id`, `provider_state`, counts, `error`, times)."""
    cols = ", ".join(f"{k} = %s" for k in fields)
    await conn.execute(
        f"UPDATE llm_batch_jobs SET {cols} WHERE id = %s", (*fields.values(), job_id)
    )


async def jobs_in(conn: Conn, states: Sequence[str]) -> list[Job]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_JOB_COLUMNS} FROM llm_batch_jobs WHERE state = ANY(%s) ORDER BY id",
        (list(states),),
    )
    return [Job(**r) for r in await cur.fetchall()]


async def job_requests(conn: Conn, job_id: int) -> list[StoredRequest]:
    return await _requests(conn, "job_id = %s ORDER BY id", (job_id,))


async def set_answers(
    conn: Conn,
    job_id: int,
    answers: Sequence[tuple[int, bytes, str]],
    job_fields: dict[str, Any],
) -> None:
    """In one transaction: each request's record to deliver (`answered`) and the job's state."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "UPDATE llm_batch_requests SET state = 'answered', completion = %s,"
            " deliver_topic = %s WHERE id = %s AND state = 'submitted'",
            [(value, topic, rid) for rid, value, topic in answers],
        )
        cols = ", ".join(f"{k} = %s" for k in job_fields)
        await cur.execute(
            f"UPDATE llm_batch_jobs SET {cols} WHERE id = %s", (*job_fields.values(), job_id)
        )


async def to_deliver(conn: Conn, limit: int) -> list[StoredRequest]:
    return await _requests(
        conn, "state = 'answered' AND attempt IS NULL ORDER BY id LIMIT %s", (limit,)
    )


async def set_attempt(conn: Conn, ids: Sequence[int], attempt: str) -> None:
    """Exactly-once mode: these requests go out in the delivery (transaction) `attempt`."""
    await conn.execute(
        "UPDATE llm_batch_requests SET attempt = %s WHERE id = ANY(%s)", (attempt, list(ids))
    )


async def open_attempts(conn: Conn) -> set[str]:
    """Deliveries begun and not known to be done: a collector died in between."""
    cur = await conn.execute(
        "SELECT DISTINCT attempt FROM llm_batch_requests"
        " WHERE state = 'answered' AND attempt IS NOT NULL"
    )
    return {str(r[0]) for r in await cur.fetchall()}


async def settle_attempts(conn: Conn, committed: set[str], aborted: set[str]) -> None:
    """Requests of `committed` deliveries are done; those of `aborted` go out again."""
    async with conn.transaction():
        if committed:
            await conn.execute(
                "UPDATE llm_batch_requests SET state = 'done', done_at = now(),"
                " record = ''::bytea WHERE state = 'answered' AND attempt = ANY(%s)",
                (list(committed),),
            )
        if aborted:
            await conn.execute(
                "UPDATE llm_batch_requests SET attempt = NULL"
                " WHERE state = 'answered' AND attempt = ANY(%s)",
                (list(aborted),),
            )


async def mark_done(conn: Conn, ids: Sequence[int]) -> None:
    await conn.execute(
        "UPDATE llm_batch_requests SET state = 'done', done_at = now(), record = ''::bytea"
        " WHERE id = ANY(%s)",
        (list(ids),),
    )


async def delete_done(conn: Conn, older_than_s: float) -> int:
    """Delete requests delivered more than `older_than_s` ago, then jobs left with none."""
    cur = await conn.execute(
        "DELETE FROM llm_batch_requests WHERE state = 'done'"
        " AND done_at < now() - make_interval(secs => %s)",
        (older_than_s,),
    )
    n = cur.rowcount
    await conn.execute(
        "DELETE FROM llm_batch_jobs j WHERE state IN ('collected', 'cancelled', 'failed')"
        " AND NOT EXISTS (SELECT 1 FROM llm_batch_requests r WHERE r.job_id = j.id)"
        " AND coalesce(j.collected_at, j.created_at) < now() - make_interval(secs => %s)",
        (older_than_s,),
    )
    return n


async def stats(conn: Conn) -> dict[str, Any]:
    """Requests waiting, the oldest one's age in seconds, jobs by state."""
    cur = await conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
        " FROM llm_batch_requests WHERE state = 'waiting'"
    )
    row = await cur.fetchone()
    waiting, oldest = (int(row[0]), float(row[1])) if row else (0, 0.0)
    cur = await conn.execute("SELECT state, count(*) FROM llm_batch_jobs GROUP BY state")
    jobs = {state: int(n) for state, n in await cur.fetchall()}
    return {"waiting": waiting, "oldest_s": oldest, "jobs": jobs}


async def list_jobs(conn: Conn, limit: int = 100) -> list[Job]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_JOB_COLUMNS} FROM llm_batch_jobs ORDER BY id DESC LIMIT %s", (limit,)
    )
    return [Job(**r) for r in await cur.fetchall()]


async def get_job(conn: Conn, ref: str) -> Job | None:
    """A job by its number, its `job_key` or the provider's batch id."""
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {_JOB_COLUMNS} FROM llm_batch_jobs WHERE id::text = %s OR job_key = %s"
        " OR batch_id = %s",
        (ref, ref, ref),
    )
    row = await cur.fetchone()
    return Job(**row) if row else None


async def request_states(conn: Conn, job_id: int) -> dict[str, int]:
    """How many of a job's requests are in each state (every state, in order; 0 if none)."""
    cur = await conn.execute(
        "SELECT state, count(*) FROM llm_batch_requests WHERE job_id = %s GROUP BY state",
        (job_id,),
    )
    found = {state: int(n) for state, n in await cur.fetchall()}
    return {state: found.get(state, 0) for state in REQUEST_STATES}


async def cancel_job(conn: Conn, job_id: int) -> bool:
    """Mark a job for cancelling (`cancel_requested_at`): the collecting replica asks the
    provider. False when the job is no longer `submitting` or `submitted` (nothing marked)."""
    cur = await conn.execute(
        "UPDATE llm_batch_jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())"
        " WHERE id = %s"
        " AND state IN ('submitting', 'submitted')",
        (job_id,),
    )
    return cur.rowcount > 0
