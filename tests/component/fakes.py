"""In-memory stand-ins for the worker's outside systems, for the component tests.

- `FakeBroker`: topics of partitions of records, committed offsets per group (with history),
  consumer groups that rebalance eagerly (revoke everything, then assign by range) when a
  member joins or leaves, as librdkafka's `range` assignor does.
- `FakeBridge`: the seam `worker.stream.transport.Transport` over a `FakeBroker` (its records
  turned into the seam's typed records by the real bridge's `kafka_conf.to_batch`). It
  behaves like librdkafka where the worker can tell the difference:
    * consumer calls run on one consumer thread; rebalance callbacks (assign, revoke, lost)
      fire from inside `consume()` on that thread, and a revoke's commits are made there;
      an assignment waits until every member has finished its revoke, and comes in a later
      poll than the revoke (`rejoin_in_same_poll` to change that);
    * an application `pause()` is kept across revoke and re-assign (librdkafka keeps it on
      the partition: a paused partition that comes back stays paused until resumed);
    * a (re)assigned partition is read from the group's committed offset (else the start);
    * commits for partitions not assigned are dropped (as the real bridge does);
    * delivery reports of `produce_nowait` arrive later, several in one ack-handler call;
      a record over `max_message_bytes` is refused at once (MSG_SIZE_TOO_LARGE), and
      `fail_next_deliveries` makes the next reports errors.
- `FakeAdmin` / `FakeBroker.connect_admin`: the admin calls `App.start` makes.
- `FakeRegistry`: the surface of `registry.cache.RegistryCache` that the App uses, over
  the real `registry.resolve.resolve`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from llm_worker.registry.errors import RegistryUnavailable
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.config import Settings
from llm_worker.worker.stream.kafka_conf import delivery_error, to_batch
from llm_worker.worker.stream.outbox import Sent
from llm_worker.worker.stream.transport import Ack, AckHandler, Batch, DeliveryError

Key = tuple[str, int]


class FakeMessage:
    """What `Consumer.consume()` returns, with the same accessors."""

    __slots__ = ("_err", "_headers", "_key", "_offset", "_part", "_topic", "_ts", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        *,
        error: KafkaError | None = None,
    ) -> None:
        self._topic, self._part, self._offset = topic, partition, offset
        self._value, self._key, self._headers = value, key, headers
        self._ts = int(time.time() * 1000)
        self._err = error

    def error(self) -> KafkaError | None:
        return self._err

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._part

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)  # TIMESTAMP_CREATE_TIME

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def __repr__(self) -> str:
        return f"FakeMessage({self._topic}/{self._part}/{self._offset})"


class FakeBroker:
    def __init__(self, *, reports_members: bool = True) -> None:
        self.cond = threading.Condition()
        self.topics: dict[str, list[list[FakeMessage]]] = {}
        self.committed: dict[tuple[str, str, int], int] = {}
        self.commit_history: list[tuple[str, Key, int]] = []  # (group, key, offset)
        self.groups: dict[str, list[FakeBridge]] = {}
        self.reports_members = reports_members  # Tansu: none until the group commits
        self.admin_waits: list[float] = []
        self._round_robin = 0

    # -- topics --------------------------------------------------------------------------
    def create(self, topic: str, partitions: int) -> bool:
        with self.cond:
            if topic in self.topics:
                return False
            self.topics[topic] = [[] for _ in range(partitions)]
            return True

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> FakeMessage:
        with self.cond:
            parts = self.topics.setdefault(topic, [[]])  # auto-created with one partition
            if partition is None:
                if key is not None:
                    partition = zlib.crc32(key) % len(parts)
                else:
                    partition = self._round_robin % len(parts)
                    self._round_robin += 1
            log = parts[partition]
            msg = FakeMessage(topic, partition, len(log), value, key, headers)
            log.append(msg)
            self.cond.notify_all()
            return msg

    def records(self, topic: str) -> list[FakeMessage]:
        with self.cond:
            return [m for part in self.topics.get(topic, []) for m in part]

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self.cond:
            return {p: len(log) for p, log in enumerate(self.topics.get(topic, []))}

    def commits_of(self, group: str) -> dict[Key, int]:
        with self.cond:
            return {(t, p): o for (g, t, p), o in self.committed.items() if g == group}

    # -- groups --------------------------------------------------------------------------
    def join(self, bridge: FakeBridge) -> None:
        with self.cond:
            self.groups.setdefault(bridge.group, []).append(bridge)
            self._rebalance(bridge.group)

    def leave(self, bridge: FakeBridge) -> None:
        with self.cond:
            members = self.groups.get(bridge.group, [])
            if bridge in members:
                members.remove(bridge)
                self._rebalance(bridge.group)

    def _rebalance(self, group: str) -> None:
        """Eager, range: every member revokes all it has, then gets its range."""
        members = self.groups.get(group, [])
        for m in members:
            m.pending_assign.clear()  # assignments not yet delivered are void
            m.events = collections.deque(e for e in m.events if e[0] != "assign")
            going = {k for _, keys in m.events for k in keys}  # revokes already queued
            owned = sorted(m.assignment - going)
            if owned:
                m.events.append(("revoke", owned))
        topic = members[0].topic if members else ""
        count = len(self.topics.get(topic, []))
        for i, m in enumerate(members):
            share = [(topic, p) for p in range(count) if p * len(members) // count == i]
            m.events.append(("assign", share))
            m.pending_assign.update(share)
        self.cond.notify_all()

    def revokes_pending(self, group: str) -> bool:
        return any(
            m.revoking or any(e[0] in ("revoke", "lost") for e in m.events)
            for m in self.groups.get(group, [])
        )

    def members(self, group: str) -> int:
        with self.cond:
            return len(self.groups.get(group, []))

    def connect_admin(self, settings: Settings, timeout_s: float) -> FakeAdmin:
        """`App(connect_admin=broker.connect_admin)`."""
        self.admin_waits.append(timeout_s)
        return FakeAdmin(self)


class FakeAdmin:
    """The `confluent_kafka.admin.AdminClient` calls the worker makes."""

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        with self._broker.cond:
            names = list(self._broker.topics) if topic is None else [topic]
            topics = {
                n: SimpleNamespace(partitions=dict.fromkeys(range(len(self._broker.topics[n]))))
                for n in names
                if n in self._broker.topics
            }
        return SimpleNamespace(topics=topics)

    def create_topics(self, new_topics: list[Any], **_: Any) -> dict[str, Any]:
        out = {}
        for nt in new_topics:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            if self._broker.create(nt.topic, nt.num_partitions):
                fut.set_result(None)
            else:
                fut.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
            out[nt.topic] = fut
        return out

    def list_groups(self, group: str, **_: Any) -> list[Any]:
        """Classic groups, as ListGroups + DescribeGroups report them."""
        n = self._broker.members(group) if self._broker.reports_members else 0
        return [SimpleNamespace(id=group, members=[object()] * n)]

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Any]:
        """KIP-848 groups (DescribeGroups shows them without members)."""
        out = {}
        for g in groups:
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            n = self._broker.members(g) if self._broker.reports_members else 0
            fut.set_result(SimpleNamespace(members=[object()] * n))
            out[g] = fut
        return out


class FakeBridge:
    """`KafkaBridge` over a `FakeBroker` (see the module docstring for what it keeps)."""

    def __init__(
        self, settings: Settings, broker: FakeBroker, *, max_message_bytes: int = 1_000_000
    ) -> None:
        self.broker = broker
        self.group = settings.group_id
        self.topic = settings.prompts_topic
        self.max_message_bytes = max_message_bytes
        self.assignment: set[Key] = set()
        self.pending_assign: set[Key] = set()
        self.paused: set[Key] = set()
        self.events: collections.deque[tuple[str, list[Key]]] = collections.deque()
        self.revoking = 0  # revoke/lost callbacks running now
        self.positions: dict[Key, int] = {}
        self.commits: list[dict[Key, int]] = []
        self.consumes: list[tuple[float, int, int]] = []  # (monotonic, asked, returned)
        self.callbacks: list[tuple[str, list[Key]]] = []  # rebalance callbacks, in order
        self.delivery_errors: collections.deque[KafkaError] = collections.deque()
        self.buffer_full = 0  # the next this many produce_nowait calls raise BufferError
        self.ack_delay_s = 0.002
        self.rejoin_in_same_poll = False
        """librdkafka fires a revoke and the assignment after it in different polls (the rejoin
        takes round trips); True fires both in one poll, as a very fast rejoin could."""
        self._on_assign: Callable[[list[Key]], None] | None = None
        self._on_revoke: Callable[[list[Key]], dict[Key, int]] | None = None
        self._on_lost: Callable[[list[Key]], None] | None = None
        self._ack_handler: AckHandler[Sent] | None = None
        self._acks: list[Ack[Sent]] = []
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fake-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.transactional = False
        self.fatal: str | None = None
        self.epochs: dict[Key, int] = {}
        self._epoch = 0
        self._on_fatal: Callable[[str], None] | None = None

    # -- wiring ----------------------------------------------------------------------------
    def set_rebalance_hooks(
        self,
        on_assign: Callable[[list[Key]], None],
        on_revoke: Callable[[list[Key]], dict[Key, int]],
        on_lost: Callable[[list[Key]], None] | None = None,
    ) -> None:
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost

    def set_ack_handler(self, handler: AckHandler[Sent]) -> None:
        self._ack_handler = handler

    def set_fatal_hook(self, hook: Callable[[str], None]) -> None:
        self._on_fatal = hook

    def epoch(self, key: Key) -> int:
        return self.epochs.get(key, 0) if key in self.assignment else 0

    def fail_fatally(self, reason: str) -> None:
        """A fatal client error, as librdkafka's error callback reports it."""
        self.fatal = reason
        if self._on_fatal is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_fatal, reason)

    # -- test controls ---------------------------------------------------------------------
    def lose(self, keys: Iterable[Key]) -> None:
        """The group evicted this member (session or poll timeout): its partitions are lost,
        then it rejoins and gets them back, all at its next `consume`."""
        lost = sorted(keys)
        with self.broker.cond:
            self.events.append(("lost", lost))
            self.events.append(("assign", lost))
            self.pending_assign.update(lost)
            self.broker.cond.notify_all()

    def fail_next_deliveries(self, code: int, times: int = 1) -> None:
        self.delivery_errors.extend(KafkaError(code) for _ in range(times))

    def polls_between(self, start: float, end: float) -> int:
        return sum(1 for t, _, _ in self.consumes if start <= t <= end)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.broker.join(self)

    async def close(self, *, flush_timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._report()  # flush: every outstanding delivery report comes back
        await self._in_thread(self._leave)
        self._thread.shutdown(wait=False)

    def _leave(self) -> None:
        """`Consumer.close()`: the revoke callback fires for what is assigned, then leave."""
        with self.broker.cond:
            self.events.clear()
            self.pending_assign.clear()
            owned = sorted(self.assignment)
            if owned:
                self.revoking += 1
        if owned:
            self._fire("revoke", owned)
        self.broker.leave(self)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- consumer --------------------------------------------------------------------------
    async def consume(self, max_messages: int, timeout: float) -> Batch:
        msgs: list[FakeMessage] = await self._in_thread(self._consume, max_messages, timeout)
        return to_batch(msgs)  # type: ignore[arg-type]

    def _consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if not 0 <= n <= 1_000_000:  # librdkafka's bound
            raise ValueError("num_messages must be between 0 and 1000000 (1M)")
        deadline = time.monotonic() + timeout
        msgs: list[FakeMessage] = []
        try:
            while True:
                events = self._take_events()
                for kind, keys in events:
                    self._fire(kind, keys)
                if not self.rejoin_in_same_poll and any(k != "assign" for k, _ in events):
                    return msgs  # the new assignment comes in a later poll, after a rejoin
                with self.broker.cond:
                    if self.events and not self._blocked():
                        continue
                    msgs = self._fetch(n)
                    left = deadline - time.monotonic()
                    if msgs or left <= 0 or self._closed:
                        return msgs
                    self.broker.cond.wait(left)
        finally:
            self.consumes.append((time.monotonic(), n, len(msgs)))

    def _blocked(self) -> bool:
        """An assignment waits until every member has finished its revoke."""
        return (
            bool(self.events)
            and self.events[0][0] == "assign"
            and self.broker.revokes_pending(self.group)
        )

    def _take_events(self) -> list[tuple[str, list[Key]]]:
        """The rebalance events to fire now: an assignment, or the revokes (and, with
        `rejoin_in_same_poll`, the assignment after them)."""
        with self.broker.cond:
            out: list[tuple[str, list[Key]]] = []
            while self.events and not self._blocked():
                kind, keys = self.events[0]
                if kind == "assign" and out and not self.rejoin_in_same_poll:
                    break
                self.events.popleft()
                out.append((kind, keys))
                if kind == "assign":
                    self.pending_assign.difference_update(keys)
                else:
                    self.revoking += 1
            return out

    def _fire(self, kind: str, keys: list[Key]) -> None:
        self.callbacks.append((kind, keys))
        if kind == "assign":
            with self.broker.cond:
                for t, p in keys:
                    self.positions[(t, p)] = self.broker.committed.get((self.group, t, p), 0)
                    self._epoch += 1
                    self.epochs[(t, p)] = self._epoch
                self.assignment.update(keys)
                # the real bridge resumes what it is assigned (librdkafka would keep a pause
                # across the rebalance): so does this one. That the real bridge does is
                # tested in tests/unit/test_bridge_assign.py, since this fake cannot tell
                self.paused.difference_update(keys)
            if self._on_assign is not None:
                self._on_assign(keys)
            return
        try:
            if kind == "revoke" and self._on_revoke is not None:
                commits = self._on_revoke(keys)
                if commits:
                    self._commit(commits)
            elif kind == "lost" and self._on_lost is not None:
                self._on_lost(keys)
        finally:
            with self.broker.cond:
                self.assignment.difference_update(keys)
                self.revoking -= 1
                self.broker.cond.notify_all()  # an assignment may have waited for this

    def _fetch(self, n: int) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        for key in sorted(self.assignment):
            if key in self.paused:
                continue
            log = self.broker.topics.get(key[0], [])[key[1]]
            pos = self.positions.get(key, 0)
            take = log[pos : pos + n - len(out)]
            self.positions[key] = pos + len(take)
            out.extend(take)
            if len(out) >= n:
                break
        return out

    async def commit(self, offsets: Mapping[Key, tuple[int, int]]) -> dict[Key, int]:
        """Like the bridge: only offsets computed in the partition's current epoch."""
        if not offsets:
            return {}
        done: dict[Key, int] = await self._in_thread(self._commit_in_epoch, dict(offsets))
        return done

    def _commit_in_epoch(self, offsets: dict[Key, tuple[int, int]]) -> dict[Key, int]:
        # on the consumer thread, where assignments change: as the real bridge does
        return self._commit({k: o for k, (o, ep) in offsets.items() if ep and self.epoch(k) == ep})

    async def flush(self, timeout: float) -> int:
        self._report()
        return 0

    def drain(self) -> None:
        self._report()

    def _commit(self, offsets: dict[Key, int]) -> dict[Key, int]:
        mine = {k: o for k, o in offsets.items() if k in self.assignment}
        if not mine:
            return {}
        self.commits.append(mine)
        with self.broker.cond:
            for (t, p), o in mine.items():
                self.broker.committed[(self.group, t, p)] = o
                self.broker.commit_history.append((self.group, (t, p), o))
        return mine

    async def pause(self, parts: list[Key]) -> None:
        if parts:
            await self._in_thread(self.paused.update, list(parts))

    async def resume(self, parts: list[Key]) -> None:
        if parts:
            await self._in_thread(self.paused.difference_update, list(parts))

    # -- producer --------------------------------------------------------------------------
    def _check(self, value: bytes, key: bytes | None) -> DeliveryError | None:
        if len(value) + len(key or b"") > self.max_message_bytes:
            raise delivery_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        return delivery_error(self.delivery_errors.popleft()) if self.delivery_errors else None

    def produce_nowait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        token: Sent,
    ) -> None:
        if self.buffer_full:
            self.buffer_full -= 1
            raise BufferError("Local: Queue full")
        err = self._check(value, key)
        if err is None:
            self.broker.append(topic, value, key, headers)
        if not self._acks and self._loop is not None:
            self._loop.call_later(self.ack_delay_s, self._report)
        self._acks.append(Ack(token, err))

    def _report(self) -> None:
        batch, self._acks = self._acks, []
        if batch:
            assert self._ack_handler is not None
            self._ack_handler(batch)

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        err = self._check(value, key)
        await asyncio.sleep(self.ack_delay_s)
        if err is not None:
            raise err
        self.broker.append(topic, value, key, headers)


class FakeRegistry:
    """The registry cache as the App sees it: `start`, `close`, `resolve`, `rows`, `loaded`,
    `stale`. `broken[model_id] = exc` makes `resolve` raise it (a bug, on purpose)."""

    def __init__(self, rows: Iterable[ModelRow] = ()) -> None:
        self._rows = {r.model_id: r for r in rows}
        self._loaded = False
        self.stale = False
        self.broken: dict[str, Exception] = {}
        self.start_timeout: float | None = None
        self.closed = False

    def put(self, *rows: ModelRow) -> None:
        self._rows = {**self._rows, **{r.model_id: r for r in rows}}

    @property
    def rows(self) -> Mapping[str, ModelRow]:
        return dict(self._rows)

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def start(self, timeout: float | None = None) -> None:
        self.start_timeout = timeout
        self._loaded = True

    async def close(self) -> None:
        self.closed = True

    def resolve(self, model_id: str) -> list[Candidate]:
        if not self._loaded:
            raise RegistryUnavailable("model registry not loaded yet")
        if model_id in self.broken:
            raise self.broken[model_id]
        return resolve(self._rows, model_id)
