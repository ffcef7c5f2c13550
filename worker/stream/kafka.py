"""The only module that touches librdkafka handles.

All consumer calls run on one dedicated thread (librdkafka's consumer is driven from a single
thread, and rebalance callbacks fire inside `consume()` on it). The producer is polled by its own
thread; delivery reports come back to the event loop as resolved futures.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ..config import Settings

__all__ = [
    "DeliveryError",
    "KafkaBridge",
    "KafkaError",
    "Message",
    "TopicPartition",
    "client_config",
]

log = logging.getLogger("llm_worker.kafka")
rdlog = logging.getLogger("llm_worker.librdkafka")

RevokeHook = Callable[[list[tuple[str, int]]], dict[tuple[str, int], int]]
AssignHook = Callable[[list[tuple[str, int]]], None]
# (token given to `produce_nowait`, delivery error or None), one poll's worth at a time
AckHandler = Callable[[list[tuple[Any, KafkaError | None]]], None]


class DeliveryError(RuntimeError):
    def __init__(self, err: KafkaError) -> None:
        super().__init__(f"delivery failed: {err.str()} ({err.name()})")
        self.code = err.code()
        self.retriable = bool(err.retriable()) or self.code in (
            KafkaError._MSG_TIMED_OUT,
            KafkaError._TRANSPORT,
            KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError.REQUEST_TIMED_OUT,
        )
        self.too_large = self.code == KafkaError.MSG_SIZE_TOO_LARGE


def _error_cb(err: KafkaError) -> None:
    if err.fatal():
        log.error("kafka fatal error: %s", err.str())
    else:
        log.warning("kafka error: %s", err.str())


_CONSUMER_ONLY = (
    "group.",
    "session.",
    "heartbeat.",
    "max.poll.",
    "partition.assignment",
    "auto.offset",
    "enable.auto",
    "fetch.",
    "isolation.level",
    "queued.",
)
_PRODUCER_ONLY = (
    "linger.",
    "acks",
    "enable.idempotence",
    "compression.",
    "batch.",
    "queue.buffering",
    "message.timeout",
    "transactional.",
    "delivery.timeout",
)


def client_config(settings: Settings, role: str = "admin") -> dict[str, Any]:
    """Base librdkafka config for a client; passthrough properties of the other role dropped."""
    drop: tuple[str, ...] = ()
    if role == "producer":
        drop = _CONSUMER_ONLY
    elif role == "consumer":
        drop = _PRODUCER_ONLY
    elif role == "admin":
        drop = _CONSUMER_ONLY + _PRODUCER_ONLY
    conf = {k: v for k, v in settings.kafka_common().items() if not k.startswith(drop)}
    conf["error_cb"] = _error_cb
    conf["logger"] = rdlog
    return conf


class KafkaBridge:
    """Consumer + idempotent producer behind asyncio-friendly methods."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_assign: AssignHook | None = None,
        on_revoke: RevokeHook | None = None,
    ) -> None:
        self._settings = settings
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._cthread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="kafka-consumer"
        )
        self._pthread: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reports: collections.deque[tuple[asyncio.Future[None], KafkaError | None]] = (
            collections.deque()
        )
        self._acks: collections.deque[tuple[Any, KafkaError | None]] = collections.deque()
        self._ack_handler: AckHandler | None = None
        self.assignment: set[tuple[str, int]] = set()

    def set_rebalance_hooks(self, on_assign: AssignHook, on_revoke: RevokeHook) -> None:
        self._on_assign = on_assign
        self._on_revoke = on_revoke

    def set_ack_handler(self, handler: AckHandler) -> None:
        """Where the delivery reports of `produce_nowait` go: called on the event loop with
        every `(token, error)` of one producer poll, in one call."""
        self._ack_handler = handler

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self._settings
        consumer_conf: dict[str, Any] = {
            "group.id": s.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            "enable.partition.eof": False,
            # Answer fetches quickly: Tansu holds every fetch for the full wait even when data
            # is there; on Apache Kafka a resumed partition waits for the fetch in flight.
            # Either way 500 ms (the default) halved throughput (docs/BENCHMARKS.md).
            "fetch.wait.max.ms": 25,
        }
        consumer_conf.update(client_config(s, "consumer"))
        if consumer_conf.get("group.protocol") == "consumer":
            # KIP-848: the broker assigns (`group.remote.assignor`); librdkafka refuses a
            # client-side strategy with this protocol.
            consumer_conf.pop("partition.assignment.strategy", None)
        producer_conf: dict[str, Any] = {"enable.idempotence": True, "linger.ms": 5}
        producer_conf.update(client_config(s, "producer"))
        self._producer = Producer(producer_conf)
        self._consumer = await self._in_consumer_thread(Consumer, consumer_conf)
        await self._in_consumer_thread(
            self._consumer.subscribe,
            [s.prompts_topic],
            on_assign=self._assign_cb,
            on_revoke=self._revoke_cb,
            on_lost=self._lost_cb,
        )
        self._pthread = threading.Thread(
            target=self._poll_producer, name="kafka-producer", daemon=True
        )
        self._pthread.start()

    async def close(self, *, flush_timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, flush_timeout)
        self._stop_polling.set()
        if self._pthread is not None:
            await asyncio.to_thread(self._pthread.join, 5.0)
        if self._consumer is not None:
            try:
                await self._in_consumer_thread(self._consumer.close)
            except KafkaException as exc:
                log.warning("consumer close: %s", exc)
        self._cthread.shutdown(wait=False)

    # -- consumer --------------------------------------------------------------------------
    async def _in_consumer_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cthread, lambda: fn(*args, **kwargs))

    async def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` records: what is ready now, else wait up to `timeout` for the
        first ones. (librdkafka's `consume(n, timeout)` waits the whole timeout for the n-th
        record, leaving the worker idle while a partial batch sits in the local queue.)"""
        assert self._consumer is not None
        msgs: list[Message] = await self._in_consumer_thread(
            _consume_ready, self._consumer, max_messages, timeout
        )
        return msgs

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets or self._consumer is None:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await self._in_consumer_thread(self._commit_sync, tps)

    def _commit_sync(self, tps: list[TopicPartition]) -> None:
        """Commit on the consumer thread; partitions we no longer own are left to their owner."""
        assert self._consumer is not None
        tps = [tp for tp in tps if (tp.topic, tp.partition) in self.assignment]
        if not tps:
            return
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if err is not None and err.code() == KafkaError._NO_OFFSET:
                return
            raise

    async def pause(self, parts: list[tuple[str, int]]) -> None:
        if parts and self._consumer is not None:
            tps = [TopicPartition(t, p) for t, p in parts]
            await self._in_consumer_thread(self._consumer.pause, tps)

    async def resume(self, parts: list[tuple[str, int]]) -> None:
        if parts and self._consumer is not None:
            tps = [TopicPartition(t, p) for t, p in parts]
            await self._in_consumer_thread(self._consumer.resume, tps)

    def _assign_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.assignment.update(keys)
        log.info("partitions assigned: %s", keys)
        if self._on_assign is not None:
            self._on_assign(keys)

    def _revoke_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.info("partitions revoked: %s", keys)
        try:
            if self._on_revoke is not None:
                commits = self._on_revoke(keys)
                if commits:
                    self._commit_sync([TopicPartition(t, p, o) for (t, p), o in commits.items()])
                    log.info("committed on revoke: %s", commits)
        except Exception:
            log.exception("error while settling revoked partitions %s", keys)
        finally:
            self.assignment.difference_update(keys)

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        log.warning("partitions lost (no commit possible): %s", keys)
        self.assignment.difference_update(keys)

    # -- producer --------------------------------------------------------------------------
    def _poll_producer(self) -> None:
        """Serve delivery reports; hand each poll's batch to the loop in one wake-up."""
        producer, loop = self._producer, self._loop
        assert producer is not None and loop is not None
        batch, acks = self._reports, self._acks
        while not self._stop_polling.is_set():
            producer.poll(0.05)
            if batch or acks:
                # deques: flush() on another thread may append meanwhile
                ready = [batch.popleft() for _ in range(len(batch))]
                acked = [acks.popleft() for _ in range(len(acks))]
                loop.call_soon_threadsafe(self._reported, ready, acked)

    def _reported(
        self,
        ready: list[tuple[asyncio.Future[None], KafkaError | None]],
        acked: list[tuple[Any, KafkaError | None]],
    ) -> None:
        if ready:
            _settle_all(ready)
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
        token: Any,
    ) -> None:
        """Produce one record without waiting for it: its delivery report reaches the ack
        handler (`set_ack_handler`) on the event loop as `(token, error)`, batched with the
        other reports of the same poll. No future, no task: the cheap path for every outcome.

        Raises BufferError when librdkafka's local queue is full (nothing was produced) and
        DeliveryError when the record is refused at once.
        """
        assert self._producer is not None
        acks = self._acks

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            acks.append((token, err))  # runs on the polling thread, inside producer.poll()

        try:
            self._producer.produce(
                topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
            )
        except KafkaException as exc:
            raise DeliveryError(exc.args[0]) from exc

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one record and wait until the broker acknowledged it (or raise DeliveryError)."""
        assert self._producer is not None and self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        reports = self._reports

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            reports.append((fut, err))  # runs on the polling thread, inside producer.poll()

        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
                )
                break
            except BufferError:
                await asyncio.sleep(0.01)  # local queue full: wait for deliveries to drain it
            except KafkaException as exc:
                raise DeliveryError(exc.args[0]) from exc
        await fut


def _consume_ready(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    msgs = consumer.consume(max_messages, 0)
    if msgs or max_messages <= 0:
        return msgs
    msgs = consumer.consume(1, timeout)  # returns as soon as one record is there
    if msgs and max_messages > 1:
        msgs += consumer.consume(max_messages - 1, 0)
    return msgs


def _settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in reports:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(DeliveryError(err))
