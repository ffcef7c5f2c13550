"""The records at both ends of one message's path: the input record as consumed, and the
outcome record (a completion or a dead letter) to produce for it.

An outcome the broker refuses as too large is made smaller, never retried as it is: `shrink`
replaces it step by step, each step smaller by construction (the first keeps what it can; the
last keeps only the request id, cut to 128 characters, the reason and the source). Two steps
are enough for any limit of a few kilobytes or more.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec

from .messages import Completion, ErrorInfo, encode
from .spans import MessageTrace

__all__ = [
    "KEEP_KEY_BYTES",
    "PASSTHROUGH_HEADERS",
    "SHRINK_STEPS",
    "InputRecord",
    "Outcome",
    "passthrough_headers",
    "record_size",
    "shrink",
]

SHRINK_STEPS = 2
"""How many times an outcome refused as too large is replaced by a smaller one before its
failure is treated like any other (retried with backoff)."""

KEEP_KEY_BYTES = 1024
"""A replacement keeps the input's Kafka key (and so its partitioning) only up to this size."""

_DLQ_VALUE_LAST_STEP = 1024
_HEADER_OVERHEAD = 64  # what a record and each header cost beyond their bytes, roughly


class InputRecord(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None


PASSTHROUGH_HEADERS = ("traceparent", "tracestate")
"""The input record's headers its outcome record carries over (W3C Trace Context)."""


def passthrough_headers(rec: InputRecord) -> list[tuple[str, bytes]] | None:
    """`rec`'s headers that go on to its outcome record, in order; None when it has none."""
    if not rec.headers:
        return None
    kept = [(k, v) for k, v in rec.headers if k in PASSTHROUGH_HEADERS]
    return kept or None


class Outcome(msgspec.Struct, kw_only=True):
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    completion: Completion | None = None
    dlq_reason: str | None = None
    model_label: str = "unknown"
    """`model` for metric labels: the prompt's model only when the registry knows it, so
    random names in untrusted input cannot grow the number of series."""
    started: float = 0.0
    """Monotonic time the worker took the input record (0: unknown), for time-to-answer."""
    trace: MessageTrace | None = None
    """The message's spans while tracing is on, else None."""
    stored: bool = False
    """The prompt went to the batch lane: written to Postgres, no record to produce; its
    offset is done at once (`worker/batch`)."""
    priority: int = -1
    """Where the prompt waited for capacity (a rank of `calling.priority`: 0 high, 1 normal,
    2 low), for `llm_worker_queue_seconds`; -1: it needed no provider call."""


P = TypeVar("P")


class Stages(Protocol[P]):
    """One message's path as the consume loop drives it (`worker.pipeline.Pipeline`); `P`: the
    state of a record that waits (`Pipeline`'s `Pending`)."""

    def begin(self, rec: InputRecord) -> Outcome | P:
        """The outcome when no waiting is needed, else a state for `finish`."""
        ...

    async def finish(self, pending: P) -> Outcome: ...

    def internal_error(self, rec: InputRecord, exc: BaseException) -> Outcome: ...


def record_size(
    value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None
) -> int:
    """Bytes a record takes against a size limit: value, key and every header."""
    size = len(value or b"") + len(key or b"")
    for name, hv in headers or ():
        size += len(name) + len(hv or b"") + 8
    return size


def shrink(outcome: Outcome, step: int, limit: int) -> Outcome:
    """The smaller record of `step` (1 or 2) that replaces `outcome`, refused as too large by a
    producer whose `message.max.bytes` is `limit` (a new Outcome: the refused one is kept)."""
    if outcome.completion is not None:
        return _shrink_completion(outcome, step)
    return _shrink_dead_letter(outcome, step, limit)


def _dropped_key_note(outcome: Outcome, keep: bool) -> str:
    if keep or not outcome.key:
        return ""
    return f"; its Kafka key ({len(outcome.key)} bytes) was dropped"


def _shrink_completion(outcome: Outcome, step: int) -> Outcome:
    c = outcome.completion
    assert c is not None
    size = len(outcome.value)
    headers = outcome.headers
    keep_key = step == 1 and len(outcome.key or b"") <= KEEP_KEY_BYTES
    note = _dropped_key_note(outcome, keep_key)
    if step == 1:
        error = ErrorInfo(
            type="output_too_large",
            message=f"the completion ({size} bytes) is larger than the broker accepts{note}",
        )
        if c.error is not None:  # already an error: keep why, say what was dropped
            error = ErrorInfo(
                type=c.error.type,
                message=c.error.message[:1000] + (note or "; its metadata was dropped"),
                retryable=c.error.retryable,
            )
        replacement = Completion(
            id=c.id,
            model=c.model,
            status="error",
            provider=c.provider,
            upstream_model=c.upstream_model,
            endpoint_name=c.endpoint_name,
            attempts=c.attempts,
            error=error,
        )
        if record_size(None, None, headers) > KEEP_KEY_BYTES:
            headers = None
    else:  # small by construction: nothing of unbounded size is left
        error = ErrorInfo(
            type="output_too_large",
            message=f"the completion is larger than the broker accepts{note}",
        )
        if c.error is not None:  # the first step's account (bounded): keep it
            error = ErrorInfo(
                type=c.error.type, message=c.error.message[:1200], retryable=c.error.retryable
            )
        replacement = Completion(id=c.id[:128], model=c.model[:128], status="error", error=error)
        headers = None
    return msgspec.structs.replace(
        outcome,
        key=outcome.key if keep_key else None,
        headers=headers,
        completion=replacement,
        value=encode(replacement),
    )


def _shrink_dead_letter(outcome: Outcome, step: int, limit: int) -> Outcome:
    original, dropped = len(outcome.value), b""
    ours: list[tuple[str, bytes]] = []
    theirs: list[tuple[str, bytes]] = []
    for k, v in outcome.headers or ():
        if k == "llm_worker.truncated":  # a second step: keep what the first one saw
            original = int(v)
        elif k == "llm_worker.key_dropped":
            dropped = v
        else:
            (ours if k.startswith("llm_worker.") else theirs).append((k, v))
    keep_key = step == 1 and len(outcome.key or b"") <= KEEP_KEY_BYTES
    if step == 1 and record_size(None, None, theirs) <= limit // 4:
        headers = theirs + ours
    else:
        headers = list(ours)
    headers.append(("llm_worker.truncated", str(original).encode()))
    key = outcome.key
    if not keep_key and key:
        dropped = str(len(key)).encode()
        key = None
    if dropped:
        headers.append(("llm_worker.key_dropped", dropped))
    if step == 1:
        room = limit - record_size(None, key, headers) - _HEADER_OVERHEAD * len(headers)
        keep = max(0, min(len(outcome.value), room // 2))
    else:
        keep = min(len(outcome.value), _DLQ_VALUE_LAST_STEP)
    return msgspec.structs.replace(outcome, key=key, headers=headers, value=outcome.value[:keep])
