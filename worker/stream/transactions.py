"""Exactly-once mode (`LLM_WORKER_PROCESSING_GUARANTEE=exactly_once`): outcomes and input
offsets are committed together, in Kafka transactions.

The producer is transactional (`transactional.id`: `LLM_WORKER_TRANSACTIONAL_ID`, else
`<group>-<host>-<slot>`, the same after a restart on the same host, so a restarted replica fences
its own zombie: `kafka_conf.transactional_id`) and
fencing across replicas follows KIP-447: offsets are sent with the consumer's group metadata,
and the broker refuses them from a member of an older generation. That metadata is read on the
consumer's thread (confluent-kafka's consumer calls wait while a rebalance callback runs on it):
by the revoke hook itself, or before a periodic commit, which skips its turn when a rebalance
came in between.

A transaction may hold an outcome only if its input offset is committed by the same
transaction, so outcomes enter it in offset order per partition: `OrderedOutbox` keeps the
answers that finish early until every earlier offset of their partition has been answered.
Every `commit_interval_ms` (and on revoke and at shutdown) the worker stops releasing outcomes,
waits until every released one is acknowledged, sends the safe offsets and commits; then it
opens the next transaction. A revoke returns only once the transaction is settled (committed
with the revoked partitions' offsets, or aborted): their outcomes never outlive their
ownership. Any failure inside a transaction (a delivery error, an abortable commit error, lost
partitions) aborts it and *rewinds*: in-flight work is dropped and every partition is read
again from its committed offset. A fatal error (fenced) stops the worker.

Dedup followers and window hits are outcomes like any other: they live in the same
transactions. Chunk records of streamed answers (`publish`) enter whichever transaction is
open (none while a commit is being made): an earlier one than their completion's, or the same.
A transaction holding chunks commits at the interval even when no offset is ready, so a
`read_committed` reader sees a stream while it lasts, not all at once with its completion.
A chunk whose delivery fails taints the transaction like an outcome. After an abort the prompt
is answered again, so a `read_committed` reader may see a second chunk sequence for one id,
but only one completion. The provider call itself is not transactional: after a crash or an
abort it is made again, and a `read_committed` consumer of `llm_completions` still sees each id
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..ops.metrics import Metrics
from ..records import InputRecord, Outcome
from .offsets import OffsetTracker, PartitionOffsets
from .outbox import InOrderOutbox, Sent
from .transport import (
    TXN_CALL_S,
    Ack,
    DeliveryError,
    GroupMetadata,
    Key,
    TransactionError,
    Transport,
)

__all__ = ["ExactlyOnce", "OrderedOutbox", "TransactionAborted"]

log = logging.getLogger("llm_worker.transactions")

COMMIT_WAIT_S = 30.0
"""How long a commit waits for the released outcomes' acknowledgements before it aborts."""
SETTLE_BUDGET_S = COMMIT_WAIT_S + 3 * TXN_CALL_S
"""The longest a commit can take, aborting included: how long a revoke waits for it."""


class TransactionAborted(RuntimeError):
    """The open transaction was aborted: the worker must rewind to the committed offsets."""


class OrderedOutbox(InOrderOutbox):
    """An outbox that releases outcomes into the transaction in offset order per partition,
    and not at all while a commit is being made."""

    def __init__(self, bridge: Transport[Sent], metrics: Metrics, **kw: Any) -> None:
        super().__init__(bridge, metrics, **kw)  # `Outbox`'s keywords
        self._open = asyncio.Event()
        self._open.set()
        self.tainted: str | None = None
        """Why the open transaction cannot be committed (a delivery failed), or None."""
        self.chunks_in_txn = 0
        """Chunk records sent into the open transaction (it commits even with no offset)."""

    @property
    def frozen(self) -> bool:
        """Nothing enters the transaction now (a commit is being made, or a rewind)."""
        return not self._open.is_set()

    @frozen.setter
    def frozen(self, value: bool) -> None:
        if value:
            self._open.clear()
        else:
            self._open.set()

    async def publish(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        """A chunk record, into the open transaction (waiting while none is open). A failed
        delivery taints the transaction: it is aborted and the prompt answered again."""
        while not self._open.is_set():
            await self._open.wait()
        self.publishing += 1
        self.chunks_in_txn += 1
        try:
            await self._bridge.produce(topic, value, key=key, headers=headers)
        except DeliveryError as exc:
            if not exc.purged:
                self.tainted = self.tainted or f"a chunk's delivery failed: {exc}"
        finally:
            self.publishing -= 1

    def send(self, rec: InputRecord, outcome: Outcome, offsets: PartitionOffsets) -> None:
        self.hold(rec, outcome, offsets)
        if not self.frozen:
            self.release((rec.topic, rec.partition))

    def release_all(self) -> None:
        self.frozen = False
        for key in self.holding():
            self.release(key)

    def on_acks(self, acks: list[Ack[Sent]]) -> None:
        failed = [ack.error for ack in acks if ack.error is not None]
        if failed:  # inside a transaction a failed record taints it: abort, do not retry
            real = [e for e in failed if not e.purged]
            if real:  # a record purged by an abort belongs to the aborted transaction
                self.tainted = self.tainted or f"a delivery failed: {real[0]}"
            self.unacked -= len(failed)
            acks = [ack for ack in acks if ack.error is None]
        super().on_acks(acks)


class ExactlyOnce:
    """The transaction cycle around an `OrderedOutbox`."""

    def __init__(self, bridge: Transport[Sent], outbox: OrderedOutbox) -> None:
        self._bridge = bridge
        self._outbox = outbox
        self._lock = asyncio.Lock()
        self.counters: dict[str, int] = {"transactions": 0, "aborts": 0}

    async def start(self) -> None:
        await self._bridge.init_transactions()
        self._begin()

    def _begin(self) -> None:
        self._bridge.begin_transaction()
        self._outbox.chunks_in_txn = 0

    async def commit(
        self,
        tracker: OffsetTracker,
        meta: GroupMetadata | None,
        *,
        valid: Callable[[], bool] = lambda: True,
    ) -> dict[Key, int]:
        """Commit the open transaction with the safe offsets, sent with `meta` (the consumer's
        group metadata); raise TransactionAborted after aborting it when it cannot be committed.
        Nothing happens when `valid()` says `meta` is out of date by the time it is our turn."""
        async with self._lock:
            if not valid():
                return {}
            outbox, bridge = self._outbox, self._bridge
            outbox.frozen = True
            aborted = False
            try:
                await self._settle_released()
                if outbox.tainted:
                    raise TransactionAborted(outbox.tainted)
                pending = tracker.pending_commits()
                current = {k: o for k, (o, ep) in pending.items() if bridge.epoch(k) == ep}
                if not current and not outbox.chunks_in_txn:
                    return {}
                if current and meta is None:
                    raise TransactionAborted("the consumer's group metadata is unknown")
                try:  # chunks alone commit too: a stream is read while it lasts
                    await bridge.commit_transaction(current, meta)
                except TransactionError as exc:  # a fatal one was reported by the bridge
                    raise TransactionAborted(f"commit failed: {exc}") from exc
                self._begin()
                self.counters["transactions"] += 1
                return current
            except TransactionAborted:
                aborted = True
                await self._abort()
                raise
            finally:
                if not aborted:  # after an abort it stays frozen until the rewind is done
                    outbox.release_all()

    @property
    def doomed(self) -> bool:
        """The open transaction will be aborted, not committed."""
        return self._outbox.tainted is not None

    def taint(self, reason: str) -> None:
        """The open transaction must not be committed: the next commit aborts it."""
        self._outbox.tainted = self._outbox.tainted or reason

    def thaw(self) -> None:
        """Let outcomes into the transaction again (after a rewind)."""
        self._outbox.release_all()

    async def abort(self) -> None:
        async with self._lock:
            await self._abort()

    async def _abort(self) -> None:
        self.counters["aborts"] += 1
        self._outbox.frozen = True  # nothing enters the next transaction before the rewind
        self._outbox.tainted = None
        try:
            await self._bridge.abort_transaction()
        except TransactionError as exc:  # fatal (fenced): the worker must stop (reported)
            log.error("aborting the transaction failed: %s", exc)
            return
        self._begin()

    async def _settle_released(self) -> None:
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMIT_WAIT_S
        await self._bridge.flush(COMMIT_WAIT_S)
        while outbox.unacked or outbox.redelivering or outbox.publishing:
            left = deadline - loop.time()
            if left <= 0:
                raise TransactionAborted("released outcomes were not acknowledged in time")
            outbox.acked.clear()
            try:
                async with asyncio.timeout(min(left, 0.5)):
                    await outbox.acked.wait()
            except TimeoutError:
                pass

    async def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (the start when none
        is committed), on the consumer thread."""
        n = await self._bridge.rewind()
        log.warning("rewound %d partitions to their committed offsets", n)
