"""The records at both ends of one message's path: the input record as consumed, and the
outcome record (a completion or a dead letter) to produce for it."""

from __future__ import annotations

import msgspec

from .messages import Completion, ErrorInfo, encode

__all__ = ["InputRecord", "Outcome", "output_too_large"]


class InputRecord(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int | None = None


class Outcome(msgspec.Struct, kw_only=True):
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None
    completion: Completion | None = None
    dlq_reason: str | None = None


def output_too_large(outcome: Outcome) -> None:
    """Replace a completion the broker refused as too large by an `output_too_large` error."""
    c = outcome.completion
    assert c is not None
    replacement = Completion(
        id=c.id,
        model=c.model,
        status="error",
        metadata=None,
        provider=c.provider,
        upstream_model=c.upstream_model,
        endpoint_name=c.endpoint_name,
        attempts=c.attempts,
        error=ErrorInfo(
            type="output_too_large", message="the completion is larger than the broker accepts"
        ),
    )
    outcome.completion = replacement
    outcome.value = encode(replacement)
