"""One consumer's assignment and the steps that change it: the partitions it owns, the tasks
working for each, their offsets, the outcomes on their way out (`Outbox`; exactly-once, the
transaction around them), what is being revoked, and the exactly-once rewind.

Rebalance hooks come from librdkafka on the consumer thread (inside `consume`) and hand their
work to the event loop. Revoked partitions finish or abandon their work within the shutdown
timeout and return their safe offsets (exactly-once: commit them with the transaction, sent
with the group metadata the hook reads on the consumer thread, before the partitions go; if
that fails the transaction is aborted and every partition rewound); lost ones are cancelled and
dropped, committing nothing (exactly-once: the open transaction is aborted and every partition
rewound); assigned ones start afresh. Cleanup touches only the assignment it settled.

A rewind seeks every assigned partition back to its committed offset on the consumer thread.
A batch `consume` returned before that seek is stale: records that the re-read delivers again.
The consume loop compares `rewinds` before and after a `consume` and drops a batch taken
across one; the outbox stays frozen until the seek is done, so no outcome of the old reading
enters the next transaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..ops.metrics import Metrics
from ..ops.outcomes import OutcomeRecorder
from ..settings import Ordering
from .flow import FlowControl
from .intake import Intake
from .offsets import OffsetTracker, PartitionOffsets
from .ordering import KeyLanes
from .outbox import InOrderOutbox, Outbox, Sent, Work
from .settle import finish_or_abandon
from .transactions import SETTLE_BUDGET_S, ExactlyOnce, OrderedOutbox, TransactionAborted
from .transport import GroupMetadata, Key, Transport

__all__ = ["HOOK_MARGIN_S", "Assignment", "Lifecycle"]

log = logging.getLogger("llm_worker")

HOOK_MARGIN_S = 5.0  # a rebalance hook waits this much beyond the shutdown timeout


@dataclass(slots=True)
class Lifecycle:
    """The worker's loop and shutdown state, which its assignment's steps go by."""

    timeout_s: float
    """How long in-flight work may take to finish when partitions go or the worker stops."""
    loop: asyncio.AbstractEventLoop | None = None
    deadline: float | None = None
    """Loop time by which a stopping worker's work ends (None: not stopping)."""
    closing: bool = False
    """`run()` has settled and committed everything: a later revoke has nothing to do."""

    def time(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()


class Assignment:
    """Owns one consumer's assignment and its sequence of steps (assign, settle a revoke, drop
    lost partitions, rewind, commit)."""

    def __init__(
        self,
        *,
        bridge: Transport[Sent],
        metrics: Metrics,
        flow: FlowControl,
        life: Lifecycle,
        on_task_done: Callable[[], None],
        recorder: OutcomeRecorder | None = None,
        ordering: Ordering = "none",
        intake: Intake | None = None,
    ) -> None:
        self._bridge = bridge
        self._metrics = metrics
        self._flow = flow
        self._life = life
        self._on_task_done = on_task_done
        self.tracker = OffsetTracker()
        self.owned: set[Key] = set()
        """Partitions this worker has taken records from, or been assigned, and not released."""
        self.revoking: set[Key] = set()
        """Partitions being revoked or lost: their records are no longer taken."""
        self.tasks: set[asyncio.Task[None]] = set()
        self._by_part: dict[Key, set[asyncio.Task[None]]] = {}
        kind: type[Outbox] = Outbox
        if bridge.transactional:
            kind = OrderedOutbox
        elif ordering == "partition":
            kind = InOrderOutbox
        self.outbox = kind(
            bridge, metrics, spawn=self.spawn, on_acked=on_task_done, recorder=recorder
        )
        self.intake = intake
        """Records parked at the intake while the worker is full (None: no lookahead)."""
        self.lanes = KeyLanes() if ordering == "key" else None
        """Key ordering: each key's records one at a time (None: not ordered by key)."""
        if self.lanes is not None:
            self.outbox.on_delivered = self.lanes.delivered
        self.eos = (
            ExactlyOnce(bridge, self.outbox) if isinstance(self.outbox, OrderedOutbox) else None
        )
        self.rewinds = 0
        """Exactly-once: rewinds begun; a batch taken before one is stale."""
        self.rewinding: asyncio.Event | None = None
        """Set when the rewind's seek is done (None: no rewind under way)."""
        self._rebalance_calls = 0  # hooks begun (exactly-once: is the group metadata fresh)
        self.counters: dict[str, int] = {"commits": 0, "lost": 0}

    # -- tasks -----------------------------------------------------------------------------
    def spawn(self, key: Key, coro: Work) -> None:
        """Run one message's work for partition `key` in a task of its own."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        self._by_part.setdefault(key, set()).add(task)
        task.add_done_callback(functools.partial(self._task_done, key=key))

    def _task_done(self, task: asyncio.Task[None], key: Key) -> None:
        self.tasks.discard(task)
        self._on_task_done()
        tasks = self._by_part.get(key)
        if tasks is not None:
            tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("message task failed", exc_info=task.exception())

    def partition_tasks(self) -> dict[Key, int]:
        """How many tasks work for each partition."""
        return {k: len(v) for k, v in self._by_part.items()}

    # -- hooks called from the consumer thread ---------------------------------------------
    def on_assign(self, keys: list[Key]) -> None:
        self._rebalance_calls += 1
        loop = self._life.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._assigned, keys)  # before the records it fetches
        else:
            self._assigned(keys)

    def on_revoke(self, keys: list[Key]) -> dict[Key, int]:
        self._rebalance_calls += 1
        loop = self._life.loop
        if loop is None or loop.is_closed() or self._life.closing:
            return {}  # shutdown has settled and committed everything already
        wait, meta = self._life.timeout_s + HOOK_MARGIN_S, None
        if self.eos is not None:  # read here: from the loop it would wait for this hook
            wait += SETTLE_BUDGET_S
            meta = self._group_metadata()
        fut = asyncio.run_coroutine_threadsafe(self.settle(keys, meta), loop)
        try:
            return fut.result(timeout=wait)
        except TimeoutError:
            fut.cancel()  # its cleanup touches only the assignment it settled
            log.error("settling revoked partitions %s timed out; committing nothing", keys)
            if self.eos is not None:  # their outcomes may be in it, their offsets are not
                self.eos.taint("revoked partitions left before their transaction settled")
            return {}

    def _group_metadata(self) -> GroupMetadata | None:
        try:
            return self._bridge.group_metadata()
        except Exception as exc:  # the commit aborts instead: the partitions are read again
            log.error("no consumer group metadata for the transaction: %s", exc)
            return None

    def on_lost(self, keys: list[Key]) -> None:
        self._rebalance_calls += 1
        loop = self._life.loop
        if loop is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self.drop_lost(keys), loop)
            try:
                fut.result(timeout=HOOK_MARGIN_S + 30)  # exactly-once aborts: up to 30 s
            except TimeoutError:
                fut.cancel()

    # -- the steps, on the loop ------------------------------------------------------------
    def _assigned(self, keys: list[Key]) -> None:
        self.revoking.difference_update(keys)
        self.owned.update(keys)
        self._flow.forget(keys)  # the bridge resumed them: they start unpaused

    async def settle(self, keys: list[Key], meta: GroupMetadata | None = None) -> dict[Key, int]:
        """Revoked: finish or abandon their work, and return their safe offsets (exactly-once:
        commit them with the transaction, and return nothing)."""
        self.revoking.update(keys)
        settled = {k: self.tracker.get(k) for k in keys}
        self.drop_parked(keys)  # never started: the next owner reads them
        deadline = self._life.time() + self._life.timeout_s
        if self._life.deadline is not None:  # revoked while shutting down: the same deadline
            deadline = min(deadline, self._life.deadline)
        try:
            await self.finish_or_abandon(keys, deadline)
            if self.eos is not None:  # offsets go with the transaction, before release
                done = await self.commit(in_hook=True, meta=meta)
                log.info("revoke: transaction committed with offsets %s", done)
                return {}
            commits = {
                k: off
                for k, (off, _epoch) in self.tracker.pending_commits(keys).items()
                if self.tracker.get(k) is settled[k]
            }
        finally:
            self.forget(keys, settled)
        return commits

    async def drop_lost(self, keys: list[Key]) -> None:
        self.revoking.update(keys)
        settled = {k: self.tracker.get(k) for k in keys}
        tasks = [t for k in keys for t in self._by_part.get(k, ())]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.counters["lost"] += len(keys)
        self.forget(keys, settled)
        if self.eos is not None:  # the open transaction holds their outcomes: abort it
            await self.eos.abort()
            await self.rewind(in_hook=True)

    async def rewind(self, *, in_hook: bool = False) -> None:
        """Exactly-once, after an abort (the outbox stays frozen): drop all work, seek every
        partition back to its commit, and take no record fetched before that seek. Inside a
        rebalance hook the consumer thread is busy: the seek runs after the hook returns."""
        self.rewinds += 1
        done = self.rewinding = self.rewinding or asyncio.Event()
        keys = sorted(self.owned | self._bridge.assignment)
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.forget(keys, {k: self.tracker.get(k) for k in keys})
        self.outbox.forget()
        seek = asyncio.create_task(self._reseek(done))
        if not in_hook:
            await seek

    async def _reseek(self, done: asyncio.Event) -> None:
        assert self.eos is not None
        try:
            await self.eos.rewind()
        finally:
            if self.rewinding is done:
                self.rewinding = None
                self.owned.update(self._bridge.assignment)
                self.eos.thaw()
            done.set()

    def drop_parked(self, keys: list[Key] | None) -> None:
        """The records of `keys` (None: all) parked at the intake go unanswered (read again)."""
        if self.intake is not None:
            self.intake.drop(keys)

    def forget(self, keys: list[Key], settled: dict[Key, PartitionOffsets | None]) -> None:
        """Partitions released: their state goes, if it is still that of the assignment
        settled (`settled`), never a newer one's offsets."""
        self.drop_parked(keys)
        self.tracker.drop(keys, only=settled)
        self.outbox.forget(keys)  # outcomes held back for order go too
        if self.lanes is not None:
            self.lanes.forget(keys)
        self.owned.difference_update(keys)
        for k in keys:
            self._by_part.pop(k, None)
        self._flow.forget(keys)

    async def finish_or_abandon(self, keys: list[Key] | None, deadline: float) -> None:
        """Wait for the work of `keys` (None: all) until `deadline`, then cancel the rest."""

        def tasks() -> set[asyncio.Task[None]]:
            if keys is None:
                return set(self.tasks)
            return {t for k in keys for t in self._by_part.get(k, ())}

        def unfinished() -> int:
            if keys is None:
                return self.tracker.in_flight()
            return sum(self.tracker.in_flight(*k) for k in keys)

        await finish_or_abandon(tasks, unfinished, self.outbox, deadline)

    # -- commits ---------------------------------------------------------------------------
    async def commit(
        self, *, in_hook: bool = False, meta: GroupMetadata | None = None
    ) -> dict[Key, int]:
        """Commit the safe offsets, in the assignment they were computed in (exactly-once:
        commit the transaction, or abort it and rewind; a hook passes the group metadata it
        read, else it is read on the consumer thread and used only if no rebalance came since)."""
        if self.eos is not None:
            if self.rewinding is not None:
                return {}  # nothing is tracked until the rewind's seek is done
            seen = self._rebalance_calls
            if not in_hook and not self.eos.doomed:
                meta = await self._bridge.read_group_metadata()
            try:
                done = await self.eos.commit(
                    self.tracker, meta, valid=lambda: in_hook or seen == self._rebalance_calls
                )
            except TransactionAborted as exc:
                log.warning("transaction aborted (%s); rewinding", exc)
                await self.rewind(in_hook=in_hook)
                return {}
        else:
            pending = self.tracker.pending_commits()
            if not pending:
                return {}
            done = await self._bridge.commit(pending)
        self.tracker.mark_committed(done)
        if done:
            self.counters["commits"] += 1
            self._metrics.commits.inc()
        return done
