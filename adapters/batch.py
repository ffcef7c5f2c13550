"""The providers' batch APIs, provider-neutral: requests grouped into one job, answered within
hours at about half the price (the worker's batch lane).

A `BatchClient` speaks one provider's batch wire format (`adapters.batch_openai`,
`adapters.batch_anthropic`, `adapters.batch_gemini`). It builds each request's body with the
provider's online adapter (the same body a live call would send) and reads each result with
that adapter's parser, so a batch answer is the same `ProviderResult` a live call gives. The
worker keeps the state (which requests are in which job, what was answered) in Postgres; a
client holds none.

Idempotency across a crash: a job carries the worker's `job_key` where the provider keeps
it (OpenAI: the batch's `metadata`; Gemini: its `display_name`), and `find` looks for a job
submitted under that key, so a worker that died between submitting and recording the job's
id does not submit it twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

import msgspec

from .base import ProviderRequest, ProviderResult, Target
from .errors import ProviderError

__all__ = [
    "BatchClient",
    "BatchItem",
    "BatchJob",
    "BatchLimits",
    "BatchResult",
    "JobState",
]

JobState = Literal[
    "submitted", "in_progress", "ended", "failed", "expired", "cancelling", "cancelled"
]
"""A job's state, provider-neutral. `ended`: its results can be read (OpenAI `completed`,
Anthropic `ended`); `failed` (OpenAI validation failed), `expired` (the window passed; OpenAI
still gives the results of the requests that finished), `cancelled` (also with partial
results) are final too."""

FINAL_STATES: frozenset[str] = frozenset({"ended", "failed", "expired", "cancelled"})


class BatchLimits(msgspec.Struct, frozen=True):
    """What one job may hold: requests and bytes of the submitted file or body."""

    max_requests: int
    max_bytes: int


class BatchItem(msgspec.Struct, frozen=True, kw_only=True):
    """One request of a job. `custom_id` matches its result (results come in any order)."""

    custom_id: str
    request: ProviderRequest


class BatchJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the provider reports it."""

    id: str  # the provider's batch id (batch_..., msgbatch_...)
    state: JobState
    provider_state: str  # the provider's own word for it (validating, in_progress, ...)
    requests: int = 0  # total requests the provider counted
    succeeded: int = 0
    errored: int = 0  # failed + expired + cancelled requests
    created_at: datetime | None = None
    job_key: str | None = None  # the worker's key, where the provider keeps it


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """One request's outcome: `result` when it succeeded, else `error` (the provider's
    per-request error, as the class a live call would have raised) and `expired` when the
    window passed or the job was cancelled before it ran."""

    custom_id: str  # "" when the provider returned the result without it (see `index`)
    result: ProviderResult | None = None
    error: ProviderError | None = None
    expired: bool = False
    index: int | None = None
    """Its request's position in the job as submitted, for a provider that returns results
    in that order and may leave their id out (Gemini's inline responses)."""


class BatchClient(Protocol):
    """One provider's batch API. Every method raises `adapters.errors.ProviderError`
    subclasses for a failed HTTP call (the secret scrubbed), nothing else."""

    provider: str
    limits: BatchLimits

    def encode_line(self, target: Target, item: BatchItem) -> bytes:
        """The bytes `item` adds to a job (its JSONL line or its entry in the request body):
        what the job's size limit counts."""
        ...

    async def submit(self, target: Target, items: list[BatchItem], job_key: str) -> BatchJob:
        """Create a job of `items` (uploading its file first where the provider wants one)."""
        ...

    async def find(self, target: Target, job_key: str, since: datetime) -> BatchJob | None:
        """The job submitted under `job_key` at or after `since`, if the provider has one."""
        ...

    async def get(self, target: Target, batch_id: str) -> BatchJob:
        """The job's state and counts now."""
        ...

    async def results(self, target: Target, batch_id: str) -> list[BatchResult]:
        """Every request's outcome of a job in a final state (partial for expired/cancelled
        jobs: the requests with no result come back `expired`)."""
        ...

    async def cancel(self, target: Target, batch_id: str) -> BatchJob:
        """Ask the provider to cancel the job (it moves to cancelling, then cancelled)."""
        ...

    async def close(self) -> None:
        """Close the client's HTTP session."""
        ...
