"""The Kafka bridge: the consumer and the idempotent producer behind asyncio-friendly methods.

All consumer calls run on one dedicated thread (librdkafka's consumer is driven from a single
thread, and rebalance callbacks fire inside `consume()` on it). The producer is polled on the
event loop itself, where every produce call is made: every `POLL_BUSY_S` while records await
their delivery reports, every `POLL_IDLE_S` otherwise (for librdkafka's error and statistics
callbacks). A poll with no wait costs a few microseconds and hands nothing between threads;
a polling thread cost each completion about 3 µs more in wake-ups and GIL hand-offs
(docs/BENCHMARKS.md, issue 26's eighth round).

Rebalances: on **assign** every partition is resumed first (librdkafka keeps an application's
pause across unassign/assign: a partition paused when revoked would never be read again); on
**revoke** the worker settles the partitions and their safe offsets are committed here before
release; on **lost** (eviction, fencing) the worker drops their state and nothing is committed.
Each assignment of a partition has an *epoch*; a commit carries the epochs it was computed in
and applies only to partitions still in them, so it never moves an offset backwards.

A fatal client error is reported once to `on_fatal`: the worker stops and exits non-zero.
A producer whose id the broker forgot is replaced (`kafka_producer`).

The bridge implements the seam of `transport` (plain types in and out): this module, with
`kafka_conf`, `kafka_producer` and `admin`, is all of the service that imports confluent_kafka.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from llm_worker.adapters.backoff import Backoff

from ..config import Settings
from .commits import CommitAnswer, PendingCommits
from .kafka_conf import (
    client_config,
    consume_ready,
    consumer_config,
    delivery_error,
    incremental_rebalancing,
    message_max_bytes,
    producer_config,
    settle_all,
    to_batch,
)
from .kafka_producer import ProducerSlot
from .onethread import OneThread
from .transport import (
    TXN_CALL_S,
    Ack,
    AckHandler,
    AssignHook,
    Batch,
    DeliveryError,
    FatalHook,
    GroupMetadata,
    Key,
    RevokeHook,
    TransactionError,
)

__all__ = ["DeliveryError", "KafkaBridge", "Key", "client_config"]

log = logging.getLogger("llm_worker.kafka")

T = TypeVar("T")

REBALANCE_CLOSE_TIMEOUT_S = 10.0  # how long close() lets librdkafka leave the group
COMMIT_WAIT_S = 10.0  # how long `commit` waits for the broker's answer
SERVE_AFTER_S = 0.25  # no consume call this long while a commit waits: serve its answer
SERVE_BATCH = 500
POLL_BUSY_S = 0.005
"""While produced records await their delivery reports, the loop polls the producer this often
(librdkafka's `linger.ms` is 5 ms: a report comes no sooner than that after its produce)."""
POLL_IDLE_S = 0.1
"""With nothing awaiting a report, the loop still polls this often: the error and statistics
callbacks are served inside `poll`."""


class KafkaBridge(Generic[T]):
    """Consumer + idempotent producer behind asyncio-friendly methods (`transport.Transport`);
    `T`: the delivery token `produce_nowait` carries back to the ack handler."""

    def __init__(self, settings: Settings, on_stats: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._on_stats = on_stats  # librdkafka's statistics, on the client's thread (kafka_conf)
        self._on_assign: AssignHook | None = None
        self._on_revoke: RevokeHook | None = None
        self._on_lost: AssignHook | None = None
        self._on_fatal: FatalHook | None = None
        self._consumer: Consumer | None = None
        self._incremental = False  # cooperative rebalancing (set from the consumer's config)
        self._slot: ProducerSlot | None = None
        self._cthread = OneThread("kafka-consumer")
        self._commits = PendingCommits()  # consumer thread only
        # read while a commit served its answer, for the next consume (consumer thread; only
        # at-least-once commits fill it: exactly-once commits go with the transaction)
        self._early: list[Message] = []
        self._consumes = 0  # consume calls made (on the loop)
        self._polling: asyncio.TimerHandle | None = None  # the next poll of the producer
        self._poll_busy = False  # that poll comes POLL_BUSY_S after the last (else POLL_IDLE_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reports: collections.deque[tuple[asyncio.Future[None], KafkaError | None]] = (
            collections.deque()
        )
        self._acks: collections.deque[Ack[T]] = collections.deque()
        self._ack_handler: AckHandler[T] | None = None
        self._assignment: frozenset[Key] = frozenset()
        self._epochs: dict[Key, int] = {}
        self._epoch = 0
        self.fatal: str | None = None
        """Why the clients are unusable (a fatal librdkafka error), or None."""
        self.max_message_bytes = message_max_bytes(settings)
        self.transactional = settings.processing_guarantee == "exactly_once"

    @property
    def producer(self) -> Producer:
        assert self._slot is not None, "start() first"
        return self._slot.current

    @property
    def consumer(self) -> Consumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    @property
    def assignment(self) -> frozenset[Key]:
        """The partitions assigned now (replaced, never mutated: safe to read anywhere)."""
        return self._assignment

    def epoch(self, key: Key) -> int:
        """The current assignment's epoch of `key` (0: not assigned)."""
        return self._epochs.get(key, 0) if key in self._assignment else 0

    def set_rebalance_hooks(
        self, on_assign: AssignHook, on_revoke: RevokeHook, on_lost: AssignHook | None = None
    ) -> None:
        """Called on the consumer thread, inside `consume()`: `on_revoke` returns the offsets to
        commit before the partitions are released."""
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost

    def set_fatal_hook(self, on_fatal: FatalHook) -> None:
        """Called on the event loop, once, when a client hits a fatal error."""
        self._on_fatal = on_fatal

    def set_ack_handler(self, handler: AckHandler[T]) -> None:
        """Where the delivery reports of `produce_nowait` go: called on the event loop with
        every `Ack(token, error)` of one producer poll, in one call."""
        self._ack_handler = handler

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self._settings
        consumer_conf = consumer_config(s, self._client_error, self._on_stats)
        consumer_conf["on_commit"] = self._commits.answered
        self._slot = ProducerSlot(
            producer_config(s, self._client_error, lambda _: None),  # statistics on
            replaceable=not self.transactional,
            on_stats=self._on_stats,
            wants_replacing=self._replace_producer,
        )
        self._incremental = incremental_rebalancing(consumer_conf)
        self._consumer = await self._in_consumer_thread(Consumer, consumer_conf)
        await self._in_consumer_thread(
            self._consumer.subscribe,
            [s.prompts_topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
        )
        self._poll_producer()

    async def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for every produced record's delivery report, then hand the
        reports to the ack handler; returns how many records are still undelivered."""
        if self._slot is None:
            return 0
        left: int = await asyncio.to_thread(self._slot.flush, max(timeout, 0.0))
        self.drain()
        return left

    def drain(self) -> None:
        """Hand every delivery report already received to its handler, now (on the loop)."""
        ready = [self._reports.popleft() for _ in range(len(self._reports))]
        acked = [self._acks.popleft() for _ in range(len(self._acks))]
        if ready or acked:
            self._reported(ready, acked)

    async def close(self) -> None:
        """Stop polling the producer (after a last poll and drain) and leave the group. Flush
        first (`flush`): records still queued here are not waited for."""
        if self._closed:
            return
        self._closed = True
        if self._polling is not None:
            self._polling.cancel()
            self._polling = None
        if self._slot is not None:
            self._slot.poll(0)
        self.drain()
        if self._consumer is not None:
            try:
                async with asyncio.timeout(REBALANCE_CLOSE_TIMEOUT_S):
                    await self._in_consumer_thread(self._consumer.close)
            except (KafkaException, TimeoutError) as exc:
                log.warning("consumer close: %s", exc or "timed out")
        self._cthread.close()

    def _client_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (any thread): a fatal error makes the clients unusable."""
        if err.fatal():
            self.report_fatal(err)

    def report_fatal(self, err: KafkaError) -> None:
        """A client is unusable: a fatal error from the error callback, or one that a call
        returned (a fenced transactional producer's). Reported once to `on_fatal`."""
        if self.fatal is not None:
            return
        self.fatal = f"{err.name()}: {err.str()}"
        loop, hook = self._loop, self._on_fatal
        if loop is not None and hook is not None and not loop.is_closed():
            loop.call_soon_threadsafe(hook, self.fatal)

    # -- consumer --------------------------------------------------------------------------
    async def _in_consumer_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._cthread.call(lambda: fn(*args, **kwargs))

    async def consume(self, max_messages: int, timeout: float) -> Batch:
        """Up to `max_messages` records: what is ready now, else wait up to `timeout` for the
        first ones. (librdkafka's `consume(n, timeout)` waits the whole timeout for the n-th
        record, leaving the worker idle while a partial batch sits in the local queue.)"""
        self._consumes += 1
        batch: Batch = await self._in_consumer_thread(self._consume, max_messages, timeout)
        return batch

    def _consume(self, max_messages: int, timeout: float) -> Batch:
        assert self._consumer is not None
        if self._early:  # read by `_serve`: theirs come first, in order
            msgs = self._early[:max_messages]
            del self._early[:max_messages]
            return to_batch(msgs)
        return to_batch(consume_ready(self._consumer, max_messages, timeout))

    async def commit(self, offsets: dict[Key, tuple[int, int]]) -> dict[Key, int]:
        """Commit `{key: (offset, epoch)}`; returns what was committed: only partitions still
        assigned in the epoch the offset was computed under (checked on the consumer thread,
        between rebalances), and only once the broker said so.

        The commit does not hold the consumer thread (`commits`): its answer comes inside a
        consume call. If none comes for `SERVE_AFTER_S` (the worker stopped reading: it is
        shutting down), the commit serves it itself, keeping what that reads for the next
        `consume`. Unanswered in `COMMIT_WAIT_S` (the coordinator is away): nothing is
        reported committed, and those offsets go again with the next commit."""
        if not offsets or self._consumer is None:
            return {}
        loop = asyncio.get_running_loop()
        answer: CommitAnswer = loop.create_future()
        current: dict[Key, int] = await self._in_consumer_thread(
            self._send_commit, offsets, answer, loop
        )
        if not current:
            return {}
        until = loop.time() + COMMIT_WAIT_S
        while not answer.done():
            if loop.time() >= until:
                log.warning(
                    "offset commit unanswered after %.0f s (the group coordinator is away);"
                    " its offsets go again with the next commit",
                    COMMIT_WAIT_S,
                )
                return {}
            seen = self._consumes
            await asyncio.wait({answer}, timeout=min(SERVE_AFTER_S, until - loop.time()))
            if not answer.done() and self._consumes == seen:
                await self._in_consumer_thread(self._serve)
        return current if answer.result() else {}

    def _send_commit(
        self,
        offsets: dict[Key, tuple[int, int]],
        answer: CommitAnswer | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> dict[Key, int]:
        """On the consumer thread, where assignments change: send the commit of the offsets
        still in their epoch; returns them."""
        assert self._consumer is not None
        current = {k: off for k, (off, ep) in offsets.items() if ep and self.epoch(k) == ep}
        if current:
            tps = [TopicPartition(t, p, o) for (t, p), o in current.items()]
            self._commits.sent(current, answer, loop)
            self._consumer.commit(offsets=tps, asynchronous=True)
        return current

    def _serve(self) -> None:
        """On the consumer thread: serve librdkafka's queue (commit answers, rebalances),
        keeping the records it holds for the next `consume`."""
        assert self._consumer is not None
        while self._commits:
            msgs = self._consumer.consume(SERVE_BATCH, 0)
            self._early.extend(msgs)
            if len(msgs) < SERVE_BATCH:
                return

    async def pause(self, parts: list[Key]) -> None:
        if parts and self._consumer is not None:
            tps = [TopicPartition(t, p) for t, p in parts]
            await self._in_consumer_thread(self._consumer.pause, tps)

    async def resume(self, parts: list[Key]) -> None:
        if parts and self._consumer is not None:
            tps = [TopicPartition(t, p) for t, p in parts]
            await self._in_consumer_thread(self._consumer.resume, tps)

    def _assign_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if partitions:
            # an application pause survives unassign/assign in librdkafka: clear it, so a
            # partition paused when it was revoked is read again now that it is back
            consumer.resume(partitions)
        for k in keys:
            self._epoch += 1
            self._epochs[k] = self._epoch
        self._assignment = self._assignment | frozenset(keys)
        log.info("partitions assigned: %s", keys)
        try:
            if self._on_assign is not None:
                self._on_assign(keys)
        finally:
            self._apply(consumer, partitions, assign=True)

    def _revoke_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions revoked: %s", keys)
        try:
            if self._on_revoke is not None:
                commits = self._on_revoke(keys)
                if commits:  # before the partitions go; librdkafka holds the rejoin for it
                    self._send_commit(
                        {k: (o, self.epoch(k)) for k, o in commits.items()}, None, None
                    )
        except Exception:
            log.exception("error while settling revoked partitions %s", keys)
        finally:
            self._release(keys)
            self._apply(consumer, partitions, assign=False)

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.warning("partitions lost (no commit possible): %s", keys)
        try:
            if self._on_lost is not None:
                self._on_lost(keys)
        except Exception:
            log.exception("error while dropping lost partitions %s", keys)
        finally:
            self._release(keys)
            self._apply(consumer, partitions, assign=False)

    def _apply(self, consumer: Consumer, partitions: list[TopicPartition], *, assign: bool) -> None:
        """Apply a rebalance from its callback, as librdkafka requires. Done here, by the
        protocol the config chose (`kafka_conf.incremental_rebalancing`), so that
        confluent-kafka does not do it for us: it asks librdkafka which protocol is in use,
        holding the GIL, and that question can go unanswered for ever while the consumer
        closes (librdkafka #4041; the whole process froze in a CI run)."""
        try:
            if self._incremental:
                if assign:
                    consumer.incremental_assign(partitions)
                else:
                    consumer.incremental_unassign(partitions)
            elif assign:
                consumer.assign(partitions)
            else:
                consumer.unassign()
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: the consumer is closed
            log.warning(
                "applying the %s of %s: %s",
                "assignment" if assign else "revocation",
                [(tp.topic, tp.partition) for tp in partitions],
                exc,
            )

    def _release(self, keys: list[Key]) -> None:
        self._assignment = self._assignment - frozenset(keys)
        if self._early:  # read before the partitions went: the next owner reads them
            gone = set(keys)
            self._early = [m for m in self._early if (m.topic(), m.partition()) not in gone]
        for k in keys:
            self._epochs.pop(k, None)

    # -- producer --------------------------------------------------------------------------
    def _replace_producer(self) -> None:
        """The broker forgot the producer's id (`kafka_producer`): replace it on the loop."""
        if self._loop is not None and self._slot and not (self._closed or self._loop.is_closed()):
            self._loop.call_soon_threadsafe(self._slot.replace)

    def _poll_producer(self) -> None:
        """Serve the producer's callbacks without waiting, hand the delivery reports to their
        handlers, and come back in POLL_BUSY_S while records await theirs (else POLL_IDLE_S)."""
        slot, loop = self._slot, self._loop
        assert slot is not None and loop is not None
        self._polling = None
        if self._closed or loop.is_closed():
            return
        try:
            slot.poll(0)
        finally:  # whatever a callback raised, the next poll comes
            self._poll_busy = busy = slot.awaiting() > 0
            self._polling = loop.call_later(
                POLL_BUSY_S if busy else POLL_IDLE_S, self._poll_producer
            )
        self.drain()

    def _poll_soon(self) -> None:
        """A record was produced: an idle poller comes back in POLL_BUSY_S, not POLL_IDLE_S."""
        handle, loop = self._polling, self._loop
        if handle is None or loop is None:  # closed, or produced before start
            return
        handle.cancel()
        self._poll_busy = True
        self._polling = loop.call_later(POLL_BUSY_S, self._poll_producer)

    def _reported(
        self,
        ready: list[tuple[asyncio.Future[None], KafkaError | None]],
        acked: list[Ack[T]],
    ) -> None:
        if ready:
            settle_all(ready)
        if acked:
            handler = self._ack_handler
            if handler is None:  # pragma: no cover - produce_nowait requires a handler
                log.error("%d delivery reports with no ack handler", len(acked))
                return
            handler(acked)

    def produce_nowait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        token: T,
    ) -> None:
        """Produce one record without waiting: its delivery report reaches the ack handler on
        the loop as `Ack(token, error)`, batched per poll (no future, no task: the cheap path).
        Raises BufferError when librdkafka's queue is full, DeliveryError when the record is
        refused at once (too large, say)."""
        assert self._slot is not None
        acks = self._acks

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # inside producer.poll(): on the loop, or a flush's or a transaction's thread
            acks.append(Ack(token, None if err is None else delivery_error(err)))

        try:
            self._slot.current.produce(
                topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
            )
        except KafkaException as exc:
            raise delivery_error(exc.args[0]) from exc
        if not self._poll_busy:
            self._poll_soon()

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one record and wait until the broker acknowledged it (or raise DeliveryError).
        Waits (yielding) while librdkafka's local queue is full."""
        assert self._slot is not None and self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        reports = self._reports

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            reports.append((fut, err))  # inside producer.poll() (see produce_nowait)

        delays = Backoff(0.01, 0.5).delays()
        while True:
            try:
                self._slot.current.produce(
                    topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: wait for deliveries to drain it
                await asyncio.sleep(next(delays))
            except KafkaException as exc:
                raise delivery_error(exc.args[0]) from exc
        if not self._poll_busy:
            self._poll_soon()
        await fut

    # -- exactly-once ----------------------------------------------------------------------
    async def init_transactions(self) -> None:
        await asyncio.to_thread(self.producer.init_transactions, 60.0)

    def begin_transaction(self) -> None:
        self.producer.begin_transaction()

    async def commit_transaction(self, offsets: dict[Key, int], meta: GroupMetadata | None) -> None:
        """Send `offsets` (if any) with the consumer's group metadata, and commit
        (TransactionError)."""
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        producer = self.producer
        try:
            if tps:
                await asyncio.to_thread(producer.send_offsets_to_transaction, tps, meta, TXN_CALL_S)
            await asyncio.to_thread(producer.commit_transaction, TXN_CALL_S)
        except KafkaException as exc:
            raise self._transaction_error(exc) from exc

    async def abort_transaction(self) -> None:
        try:
            await asyncio.to_thread(self.producer.abort_transaction, TXN_CALL_S)
        except KafkaException as exc:
            raise self._transaction_error(exc) from exc

    def _transaction_error(self, exc: KafkaException) -> TransactionError:
        """A fatal error returned by a transactional call (fenced: the broker bumped the epoch,
        after a transaction timeout or for a newer instance) ends the worker: librdkafka does
        not always pass it to the error callback too, and every later transaction would fail
        the same way, forever."""
        err = exc.args[0] if exc.args else None
        fatal = isinstance(err, KafkaError) and bool(err.fatal())
        if fatal:
            assert isinstance(err, KafkaError)
            self.report_fatal(err)
        return TransactionError(str(exc), fatal=fatal)

    def group_metadata(self) -> GroupMetadata:
        """The consumer's group metadata, read on the consumer thread (a rebalance hook)."""
        return self.consumer.consumer_group_metadata()

    async def read_group_metadata(self) -> GroupMetadata:
        """The same from the loop: the call runs on the consumer thread (after any hook)."""
        meta: GroupMetadata = await self._in_consumer_thread(self.group_metadata)
        return meta

    async def rewind(self) -> int:
        """Seek every assigned partition back to its committed offset (the start when none is
        committed), on the consumer thread; returns how many."""
        consumer = self.consumer

        def seek() -> int:
            tps = consumer.assignment()
            if not tps:
                return 0
            for tp in consumer.committed(tps, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                try:
                    consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
                except KafkaException as exc:  # not fetching yet: it starts at committed
                    log.debug("seek %s/%s: %s", tp.topic, tp.partition, exc)
            return len(tps)

        n: int = await self._in_consumer_thread(seek)
        return n
