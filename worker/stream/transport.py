"""The seam between the worker and Kafka, in plain types: what the consume loop, the outbox and
the transaction cycle call, and what comes back. `kafka.KafkaBridge` is the one implementation
over librdkafka (with `kafka_conf`, `kafka_producer` and `admin`, the only modules of the
service that import `confluent_kafka`); tests put in-memory ones in its place.

- `consume` yields `Batch`es of typed `InputRecord`s (librdkafka's error events are logged and
  counted by the bridge, never handed on);
- `produce_nowait` takes a delivery token of the caller's type `T` and hands it back, with a
  `DeliveryError` or None, to the ack handler (`Ack`), a poll's worth in one call;
- rebalances reach the worker through three hooks, called on the consumer's thread;
- exactly-once: the producer's transaction calls, and the group metadata they are sent with
  (opaque here), raise `TransactionError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..records import InputRecord

__all__ = [
    "TXN_CALL_S",
    "Ack",
    "AckHandler",
    "AssignHook",
    "Batch",
    "DeliveryError",
    "FatalHook",
    "GroupMetadata",
    "Key",
    "RevokeHook",
    "TransactionError",
    "Transport",
]

Key = tuple[str, int]
"""A partition: (topic, partition)."""

T = TypeVar("T")

AssignHook = Callable[[list[Key]], None]
RevokeHook = Callable[[list[Key]], dict[Key, int]]
"""Returns the offsets to commit before the revoked partitions are released."""
FatalHook = Callable[[str], None]

TXN_CALL_S = 30.0
"""How long one transactional call (send offsets, commit, abort) may take."""

GroupMetadata = object
"""The consumer's group metadata, sent with a transaction's offsets (opaque to the worker)."""


class DeliveryError(RuntimeError):
    """A produced record was not delivered (or refused at once)."""

    def __init__(
        self,
        reason: str,
        *,
        code: int = 0,
        retriable: bool = False,
        too_large: bool = False,
        purged: bool = False,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.retriable = retriable
        self.too_large = too_large
        """The broker refuses the record as too large: it never goes again as it is."""
        self.purged = purged
        """Purged from the producer's queue (by an abort or a replacement), not refused."""


class TransactionError(RuntimeError):
    """A transactional call failed. `fatal`: the producer is fenced (already reported to the
    fatal hook); otherwise the transaction can be aborted and begun again."""

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.fatal = fatal


@dataclass(slots=True)
class Batch:
    """What one `consume` returned."""

    records: list[InputRecord] = field(default_factory=list)
    errors: int = 0
    """Error events polled with them (logged by the bridge, not records)."""

    @property
    def polled(self) -> int:
        return len(self.records) + self.errors


class Ack(Generic[T]):
    """One delivery report: the token given to `produce_nowait`, and why it failed (or None)."""

    __slots__ = ("error", "token")

    def __init__(self, token: T, error: DeliveryError | None) -> None:
        self.token = token
        self.error = error


AckHandler = Callable[[list[Ack[T]]], None]


class Transport(Protocol[T]):
    """What the worker needs of Kafka. `T`: the delivery token `produce_nowait` carries."""

    max_message_bytes: int
    transactional: bool
    fatal: str | None

    @property
    def assignment(self) -> frozenset[Key]:
        """The partitions assigned now (replaced, never mutated)."""
        ...

    def epoch(self, key: Key) -> int:
        """The current assignment's epoch of `key` (0: not assigned)."""
        ...

    # wiring
    def set_rebalance_hooks(
        self, on_assign: AssignHook, on_revoke: RevokeHook, on_lost: AssignHook | None = None
    ) -> None: ...

    def set_fatal_hook(self, on_fatal: FatalHook) -> None: ...

    def set_ack_handler(self, handler: AckHandler[T]) -> None: ...

    # lifecycle
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # consumer
    async def consume(self, max_messages: int, timeout: float) -> Batch: ...

    async def commit(self, offsets: dict[Key, tuple[int, int]]) -> dict[Key, int]: ...

    async def pause(self, parts: list[Key]) -> None: ...

    async def resume(self, parts: list[Key]) -> None: ...

    # producer
    def produce_nowait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        token: T,
    ) -> None: ...

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None: ...

    async def flush(self, timeout: float) -> int: ...

    # exactly-once
    async def init_transactions(self) -> None: ...

    def begin_transaction(self) -> None: ...

    async def commit_transaction(
        self, offsets: dict[Key, int], meta: GroupMetadata | None
    ) -> None: ...

    async def abort_transaction(self) -> None: ...

    def group_metadata(self) -> GroupMetadata:
        """On the consumer's thread (a rebalance hook)."""
        ...

    async def read_group_metadata(self) -> GroupMetadata:
        """From the loop: read on the consumer's thread."""
        ...

    async def rewind(self) -> int:
        """Seek every assigned partition back to its committed offset; how many."""
        ...
