"""The worker's side of rebalances: hooks librdkafka calls on the consumer thread (inside
`consume`), the work they hand to the event loop, and the exactly-once rewind.

Revoked partitions finish or abandon their work within the shutdown timeout and return their
safe offsets (exactly-once: commit them with the transaction, sent with the group metadata the
hook reads on the consumer thread, before the partitions go; if that fails the transaction is
aborted and every partition rewound); lost ones are cancelled and dropped, committing nothing
(exactly-once: the open transaction is aborted and every partition rewound); assigned ones
start afresh. Cleanup touches only the assignment it settled.

A rewind seeks every assigned partition back to its committed offset on the consumer thread.
A batch `consume` returned before that seek is stale: records that the re-read delivers again.
The worker counts rewinds and drops a batch taken across one, and keeps the outbox frozen
until the seek is done, so no outcome of the old reading enters the next transaction.
"""

from __future__ import annotations

import asyncio
import logging

from .flow import FlowControl
from .offsets import OffsetTracker, PartitionOffsets
from .outbox import Outbox, Sent
from .settle import finish_or_abandon
from .transactions import SETTLE_BUDGET_S, ExactlyOnce
from .transport import Key, Transport

__all__ = ["HOOK_MARGIN_S", "Rebalancing"]

log = logging.getLogger("llm_worker")

HOOK_MARGIN_S = 5.0  # a rebalance hook waits this much beyond the shutdown timeout


class Rebalancing:
    """Mixed into `Worker`, which owns the state below."""

    _bridge: Transport[Sent]
    _tracker: OffsetTracker
    _outbox: Outbox
    _eos: ExactlyOnce | None
    _flow: FlowControl
    _loop: asyncio.AbstractEventLoop | None
    _closing: bool
    _deadline: float | None
    _shutdown_timeout: float
    _revoked_now: set[Key]
    _owned: set[Key]
    _tasks: set[asyncio.Task[None]]
    _by_part: dict[Key, set[asyncio.Task[None]]]
    _rewinds: int
    _rewinding: asyncio.Event | None
    _rebalance_calls: int
    counters: dict[str, int]
    fatal: str | None

    def stop(self, *, deadline_s: float | None = None) -> None:
        raise NotImplementedError

    def _loop_time(self) -> float:
        raise NotImplementedError

    async def commit_now(self, *, in_hook: bool = False, meta: object = None) -> dict[Key, int]:
        raise NotImplementedError

    # -- hooks called from the consumer thread ---------------------------------------------
    def on_assign(self, keys: list[Key]) -> None:
        self._rebalance_calls += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._assigned, keys)  # before the records it fetches
        else:
            self._assigned(keys)

    def on_revoke(self, keys: list[Key]) -> dict[Key, int]:
        self._rebalance_calls += 1
        loop = self._loop
        if loop is None or loop.is_closed() or self._closing:
            return {}  # shutdown has settled and committed everything already
        wait, meta = self._shutdown_timeout + HOOK_MARGIN_S, None
        if self._eos is not None:  # read here: from the loop it would wait for this hook
            wait += SETTLE_BUDGET_S
            meta = self._group_metadata()
        fut = asyncio.run_coroutine_threadsafe(self._settle(keys, meta), loop)
        try:
            return fut.result(timeout=wait)
        except TimeoutError:
            fut.cancel()  # its cleanup touches only the assignment it settled
            log.error("settling revoked partitions %s timed out; committing nothing", keys)
            if self._eos is not None:  # their outcomes may be in it, their offsets are not
                self._eos.taint("revoked partitions left before their transaction settled")
            return {}

    def _group_metadata(self) -> object:
        try:
            return self._bridge.group_metadata()
        except Exception as exc:  # the commit aborts instead: the partitions are read again
            log.error("no consumer group metadata for the transaction: %s", exc)
            return None

    def on_lost(self, keys: list[Key]) -> None:
        self._rebalance_calls += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._drop_lost(keys), loop)
            try:
                fut.result(timeout=HOOK_MARGIN_S + 30)  # exactly-once aborts: up to 30 s
            except TimeoutError:
                fut.cancel()

    def on_fatal(self, reason: str) -> None:
        """A Kafka client is unusable (called on the loop): stop at once, exit non-zero."""
        if self.fatal is None:
            self.fatal = reason
            log.critical("fatal Kafka error, stopping: %s", reason)
            self.stop(deadline_s=0.0)

    # -- rebalance work, on the loop --------------------------------------------------------
    def _assigned(self, keys: list[Key]) -> None:
        self._revoked_now.difference_update(keys)
        self._owned.update(keys)
        self._flow.forget(keys)  # the bridge resumed them: they start unpaused

    async def _settle(self, keys: list[Key], meta: object = None) -> dict[Key, int]:
        self._revoked_now.update(keys)
        settled = {k: self._tracker.get(k) for k in keys}
        deadline = self._loop_time() + self._shutdown_timeout
        if self._deadline is not None:  # revoked while shutting down: the same deadline
            deadline = min(deadline, self._deadline)
        try:
            await self._finish_or_abandon(keys, deadline)
            if self._eos is not None:  # offsets go with the transaction, before release
                done = await self.commit_now(in_hook=True, meta=meta)
                log.info("revoke: transaction committed with offsets %s", done)
                return {}
            commits = {
                k: off
                for k, (off, _epoch) in self._tracker.pending_commits(keys).items()
                if self._tracker.get(k) is settled[k]
            }
        finally:
            self._forget(keys, settled)
        return commits

    async def _drop_lost(self, keys: list[Key]) -> None:
        self._revoked_now.update(keys)
        settled = {k: self._tracker.get(k) for k in keys}
        tasks = [t for k in keys for t in self._by_part.get(k, ())]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.counters["lost"] += len(keys)
        self._forget(keys, settled)
        if self._eos is not None:  # the open transaction holds their outcomes: abort it
            await self._eos.abort()
            await self._rewind(in_hook=True)

    async def _rewind(self, *, in_hook: bool = False) -> None:
        """Exactly-once, after an abort (the outbox stays frozen): drop all work, seek every
        partition back to its commit, and take no record fetched before that seek. Inside a
        rebalance hook the consumer thread is busy: the seek runs after the hook returns."""
        self._rewinds += 1
        done = self._rewinding = self._rewinding or asyncio.Event()
        keys = sorted(self._owned | self._bridge.assignment)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._forget(keys, {k: self._tracker.get(k) for k in keys})
        self._outbox.forget()
        seek = asyncio.create_task(self._reseek(done))
        if not in_hook:
            await seek

    async def _reseek(self, done: asyncio.Event) -> None:
        assert self._eos is not None
        try:
            await self._eos.rewind()
        finally:
            if self._rewinding is done:
                self._rewinding = None
                self._owned.update(self._bridge.assignment)
                self._eos.thaw()
            done.set()

    def _forget(self, keys: list[Key], settled: dict[Key, PartitionOffsets | None]) -> None:
        self._tracker.drop(keys, only=settled)
        self._outbox.forget(keys)  # exactly-once: outcomes held back for order go too
        self._owned.difference_update(keys)
        for k in keys:
            self._by_part.pop(k, None)
        self._flow.forget(keys)

    async def _finish_or_abandon(self, keys: list[Key] | None, deadline: float) -> None:
        def tasks() -> set[asyncio.Task[None]]:
            if keys is None:
                return set(self._tasks)
            return {t for k in keys for t in self._by_part.get(k, ())}

        def unfinished() -> int:
            if keys is None:
                return self._tracker.in_flight()
            return sum(self._tracker.in_flight(*k) for k in keys)

        await finish_or_abandon(tasks, unfinished, self._outbox, deadline)
