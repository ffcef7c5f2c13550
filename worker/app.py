"""Wires the parts together and runs them: `run_app(settings)` is `llm-worker run`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.cache import RegistryCache

from .batch.clients import BatchClients
from .batch.intake import BatchIntake
from .batch.runner import BatchRunner
from .calling.breaker import BreakerBoard, BreakerConfig
from .calling.caller import Caller, CallResult
from .calling.capacity import rate_limiter
from .calling.concurrency import ConcurrencyLimits
from .calling.priority import Lanes
from .calling.ratelimit import replica_share
from .calling.routing import Router
from .chunking.calls import StreamCalls
from .config import Settings, env_name, kafka_property_error
from .dedup import DedupWindow
from .housekeeping import Housekeeping
from .ops.attempts import AttemptObserver
from .ops.http import HealthServer
from .ops.intake import IntakeWatch
from .ops.kafkastats import KafkaStats
from .ops.looplag import LoopLag
from .ops.metrics import ComponentCollector, Metrics
from .ops.outcomes import OutcomeRecorder
from .ops.tracing import Tracing
from .pipeline import Pending, Pipeline
from .stream.admin import (
    AdminClient,
    ensure_topics,
    group_members,
    partition_count,
    require_topics,
    wait_for_broker,
)
from .stream.batch_sender import BatchSender
from .stream.consumer import Worker
from .stream.intake import Intake
from .stream.kafka import KafkaBridge
from .stream.outbox import Sent
from .stream.transport import Transport

__all__ = ["App"]

MIN_INTAKE = 256
"""The least the worker takes in flight, whatever the endpoints' limits: room for dedup
followers, window hits and outcomes waiting for their delivery reports."""


log = logging.getLogger("llm_worker")


ConnectAdmin = Callable[[Settings, float], AdminClient]
"""Reach the cluster within a time limit; returns its admin client (`wait_for_broker`)."""


class App:
    """Everything one worker process runs. Constructor does no I/O; `start()` opens resources.

    `bridge`, `registry` and `connect_admin` replace the Kafka bridge, the registry cache and
    the cluster connection (tests: `tests/component/fakes.py`); by default the real ones.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        http: bool = True,
        bridge: Transport[Sent] | None = None,
        registry: RegistryCache | None = None,
        connect_admin: ConnectAdmin = wait_for_broker,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.tracing = Tracing.from_settings(settings)
        """None when tracing is off (no OTLP endpoint): nothing on the hot path then."""
        self.registry = (
            registry
            if registry is not None
            else RegistryCache(settings.database_url, refresh_s=settings.registry_refresh_s)
        )
        self._connect_admin = connect_admin
        self.kafka_stats = KafkaStats()
        self.bridge: Transport[Sent] = (
            bridge if bridge is not None else KafkaBridge[Sent](settings, self.kafka_stats.update)
        )
        self._topic_partitions = 0
        self._group_members = 0
        self.group_poll_s = 15.0
        self._group_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._broker_ok = False
        self.caller = self._calling(settings)
        self.streams = StreamCalls(
            self.caller,
            self._publish_chunk,
            self.metrics,
            topic=settings.chunks_topic,
            linger_s=settings.stream_linger_ms / 1000,
            buffer_bytes=settings.stream_buffer_bytes,
            dedup=self.dedup,
        )
        self._batch_lane(settings)
        self.pipeline = Pipeline(
            settings,
            self.registry,
            self.caller,
            self.metrics,
            dedup=self.dedup,
            tracing=self.tracing,
            streams=self.streams,
            batch=self.batch_intake,
        )
        self.worker = self._worker(settings)
        self._ops(settings, http)
        self._wire()

    def _batch_lane(self, settings: Settings) -> None:
        """The batch lane's parts: the providers' batch clients, the intake that stores its
        prompts, the collector (with its transactional sender in exactly-once mode)."""
        self.batch_clients = BatchClients(self.secrets)
        eos = settings.processing_guarantee == "exactly_once"
        self.batch_intake = BatchIntake(settings.database_url, self.batch_clients)
        self.batch_runner = BatchRunner(
            settings,
            self.batch_clients,
            lambda model_id: self.registry.get(model_id),
            self._produce_batch,
            metrics=self.metrics,
            sender=BatchSender(settings, settings.batch_markers_topic) if eos else None,
        )
        self._batch_tasks: list[asyncio.Task[None]] = []

    async def _produce_batch(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        """A batch-lane record (a completion, or a prompt sent back online), acknowledged."""
        await self.bridge.produce(topic, value, key=key, headers=headers)

    async def _publish_chunk(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        """A chunk record, through the outbox's delivery rules (exactly-once: its transaction)."""
        await self.worker.assignment.outbox.publish(topic, value, key, headers)

    def _calling(self, settings: Settings) -> Caller:
        """The provider-calling wing: sessions, secrets, breakers, routing, limits, dedup."""
        self.sessions = SessionPool(
            limit_per_host=settings.max_in_flight,
            max_response_bytes=settings.max_response_bytes,
            http_client=settings.http_client,
        )
        self.secrets = SecretStore(settings.secrets_dir)
        self.breakers = BreakerBoard(
            BreakerConfig.from_settings(settings),
            on_change=self._circuit_changed,
            on_latency=self._latency_changed,
        )
        self.router = Router(settings.routing_objective, breakers=self.breakers)
        self.limiter = rate_limiter(settings)
        self.dedup: DedupWindow[CallResult] | None = (
            DedupWindow(
                settings.dedup_window_s, settings.dedup_max_entries, settings.dedup_max_bytes
            )
            if settings.dedup_enabled
            else None
        )
        self.loop_lag = LoopLag()
        return Caller(
            self.sessions,
            self.secrets,
            self.metrics,
            max_attempts=settings.max_attempts,
            output_retries=settings.output_retries,
            stream_idle_ms=settings.stream_idle_timeout_ms,
            router=self.router,
            breakers=self.breakers,
            limiter=self.limiter,
            loop_lag=self.loop_lag,
            wait_when_open=settings.breaker_when_all_open == "wait",
            concurrency=ConcurrencyLimits(
                cap=settings.max_in_flight, aging_s=settings.priority_aging_s
            ),
            observer=AttemptObserver(self.metrics, self.tracing),
            max_tokens_cap=settings.max_tokens_cap or None,
            capacity_wait_s=settings.capacity_wait_s,
        )

    def _worker(self, settings: Settings) -> Worker[Pending]:
        """The stream wing's consume loop over the bridge."""
        caller = self.caller
        return Worker(
            bridge=self.bridge,
            pipeline=self.pipeline,
            metrics=self.metrics,
            max_in_flight=settings.max_in_flight,
            max_in_flight_per_partition=settings.max_in_flight_per_partition,
            consume_batch=settings.consume_batch,
            commit_interval_s=settings.commit_interval_ms / 1000,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            rate_limited=lambda: caller.held,
            intake=lambda: max(MIN_INTAKE, caller.concurrency.total() * 3 // 2),
            max_in_flight_bytes=settings.max_in_flight_bytes,
            recorder=OutcomeRecorder(self.metrics, log_outcomes=settings.log_outcomes),
            ordering=settings.ordering,
            parking=self._parking(settings),
        )

    def _parking(self, settings: Settings) -> Intake | None:
        """The intake's lookahead for priority (`stream/intake.py`), None when it is 0."""
        if not settings.priority_lookahead:
            return None
        pipeline = self.pipeline
        return Intake(
            settings.priority_lookahead,
            pipeline.intake_rank,
            Lanes(settings.priority_aging_s),
            engaged=lambda: pipeline.priorities_used,
        )

    def _ops(self, settings: Settings, http: bool) -> None:
        """What watches and serves the process: intake, housekeeping, the HTTP port."""
        final_s = settings.request_deadline_s + settings.capacity_wait_s  # for /readyz
        self.intake = IntakeWatch(settings.intake_stall_s, final_s, self.worker, self._consumer_lag)
        self.housekeeping = Housekeeping(
            rows=lambda: self.registry.rows,
            resolve=self.registry.resolve,
            caller=self.caller,
            sessions=self.sessions,
            metrics=self.metrics,
            forget_outcome_children=self.worker.forget_metric_children,
        )
        self.health = (
            HealthServer(
                self.metrics.registry,
                self.ready,
                live=self.live,
                host=settings.http_host,
                port=settings.http_port,
                max_connections=settings.http_max_connections,
            )
            if http
            else None
        )

    def _wire(self) -> None:
        """Every callback from one part into another, registered here and only here."""
        bridge, worker, metrics, caller = self.bridge, self.worker, self.metrics, self.caller
        assignment = worker.assignment
        outbox = assignment.outbox
        # librdkafka's rebalances (consumer thread), fatal errors and delivery reports (loop)
        bridge.set_rebalance_hooks(self._on_assign, assignment.on_revoke, assignment.on_lost)
        bridge.set_fatal_hook(worker.on_fatal)
        bridge.set_ack_handler(outbox.on_acks)
        # gauges read at scrape time
        metrics.in_flight.set_function(lambda: worker.in_flight)
        metrics.delivery_failing.set_function(lambda: outbox.failing)
        metrics.registry.register(
            ComponentCollector(
                dedup=self.dedup.stats if self.dedup is not None else None,
                limiter=self.limiter.stats,
                breakers=lambda: dict(self.breakers.states()),
                choices=lambda: dict(self.router.choices),
                loop_lag=lambda: self.loop_lag.total,
                circuit_waiting=lambda: caller.circuit_waiting,
                consumer_lag=self._consumer_lag,
                producer_queue=lambda: self.kafka_stats.producer_queue,
                held=self._held,
                demoted=self.breakers.demotions,
                concurrency=caller.concurrency.stats,
                in_flight_limit=lambda: worker.stats()["in_flight_limit"],
            )
        )

    def _circuit_changed(self, endpoint: str, old: str, new: str, reason: str) -> None:
        self.metrics.circuit_changes.labels(endpoint, new).inc()
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(
            level,
            "circuit %s: %s -> %s (%s)",
            endpoint,
            old,
            new,
            reason,
            extra={"endpoint": endpoint, "circuit": new},
        )

    def _latency_changed(self, endpoint: str, demoted: bool, detail: str) -> None:
        if demoted:
            msg = "endpoint %s: demoted for latency, routed around while faster ones exist (%s)"
        else:
            msg = "endpoint %s: latency back to normal, no longer demoted (%s)"
        log.log(
            logging.WARNING if demoted else logging.INFO,
            msg,
            endpoint,
            detail,
            extra={"endpoint": endpoint, "demoted": demoted},
        )

    def _held(self) -> dict[str, tuple[float, float]]:
        """`llm_worker_held_requests` / `_held_seconds_total` by reason: (now, seconds)."""
        holds, lim = self.caller.holds.stats(), self.limiter.stats()
        return {
            "circuit_open": (holds.circuit_open, holds.circuit_open_s),
            "retry_backoff": (holds.retry_backoff, holds.retry_backoff_s),
            "rate_limit": (lim.waiting, lim.waited_s),
            "concurrency": (self.caller.concurrency.waiting, self.caller.concurrency.waited_s),
        }

    def _update_share(self) -> None:
        """Row and endpoint limits are cluster-wide: take this replica's share of them."""
        mine = sum(1 for t, _ in self.bridge.assignment if t == self.settings.prompts_topic)
        share = replica_share(self._group_members, self._topic_partitions, mine)
        if share is not None and share != self.limiter.share:
            self.limiter.set_share(share)
            log.info(
                "rate-limit share %.3f (%d group members, %d of %d partitions)",
                share,
                self._group_members,
                mine,
                self._topic_partitions,
            )

    def _on_assign(self, keys: list[tuple[str, int]]) -> None:
        # the consumer thread: hand the share update to the loop, where the limiter lives
        self.worker.assignment.on_assign(keys)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._group_changed.set)

    async def _watch_group(self, admin: AdminClient) -> None:
        """Keep the share current: after every rebalance and every `group_poll_s` (a replica
        that joins elsewhere rebalances this one too, but one that dies may take a while)."""
        group = self.settings.group_id
        classic = self.settings.kafka_extra.get("group.protocol", "classic") != "consumer"
        while True:
            try:
                if classic or self.kafka_stats.brokers_up != 0:  # KIP-848: see stream/admin
                    self._group_members = await asyncio.to_thread(
                        group_members, admin, group, classic
                    )
            except Exception as exc:  # the share falls back to partition ownership
                log.debug("describing consumer group %s failed: %s", group, exc)
                self._group_members = 0
            try:
                self._update_share()
            except Exception:  # never let a bad moment end the watcher
                log.exception("updating the rate-limit share failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.group_poll_s):
                    await self._group_changed.wait()
            self._group_changed.clear()
            await asyncio.sleep(1.0)  # let the rebalance finish on every member

    def _consumer_lag(self) -> dict[tuple[str, int], int]:
        assigned = self.bridge.assignment
        return {k: n for k, n in self.kafka_stats.lag.items() if k in assigned}

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Liveness (any thread): false once a Kafka client is fatally broken or the event loop
        has not run for `loop_stall_s` (restart the process)."""
        fatal = self.worker.fatal or self.bridge.fatal
        stalled = self.loop_lag.stalled_for()
        detail: dict[str, Any] = {"event_loop_stalled_s": round(stalled, 3)}
        if fatal:
            detail["fatal"] = fatal
        if stalled >= self.settings.loop_stall_s:
            detail["event_loop"] = f"stalled for {stalled:.1f} s"
        return fatal is None and stalled < self.settings.loop_stall_s, detail

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Readiness, with each check and its state (on the loop)."""
        reg = self.registry
        fatal = self.worker.fatal or self.bridge.fatal
        up = self.kafka_stats.brokers_up  # None: no statistics yet
        broker_ok = self._broker_ok and up != 0
        assigned = len(self.bridge.assignment)
        stopping = self.worker.stopping
        stats = self.worker.stats()
        failing = bool(stats["delivery_failing"])
        registry_state = "not_loaded" if not reg.loaded else "stale" if reg.stale else "loaded"
        checks: dict[str, dict[str, Any]] = {
            "broker": {
                "ok": broker_ok,
                "state": "reachable" if broker_ok else "unreachable" if up == 0 else "starting",
                "brokers_up": up,
            },
            "registry": {"ok": reg.loaded, "state": registry_state},
            "assignment": {  # waiting is fine: more replicas than partitions
                "ok": True,
                "state": "assigned" if assigned else "waiting",
                "partitions": assigned,
            },
            "shutdown": {"ok": not stopping, "state": "shutting_down" if stopping else "running"},
            "kafka_clients": {"ok": fatal is None, "state": f"fatal: {fatal}" if fatal else "ok"},
            "delivery": {  # outcomes reach the output topics (else nothing is committed)
                "ok": not failing,
                "state": "failing" if failing else "ok",
                "error": stats.get("delivery_error"),
            },
            "intake": self.intake.check(),  # records are taken while work waits
        }
        detail: dict[str, Any] = {
            "checks": checks,
            "broker": broker_ok,
            "registry_loaded": reg.loaded,
            "registry_stale": reg.stale,
            "assigned_partitions": assigned,
            "group_members": self._group_members or None,  # None: the broker does not say
            "ratelimit_share": self.limiter.share,
            "worker": stats,
        }
        self.metrics.registry_stale.set(1 if reg.stale else 0)
        self.metrics.registry_rows.set(len(reg.rows) if reg.loaded else 0)
        return all(c["ok"] for c in checks.values()), detail

    async def start(self) -> None:
        try:
            await self._start()
        except Exception as exc:  # librdkafka checks passthrough properties only now
            problem = kafka_property_error(str(exc))
            if problem is not None:
                raise problem from None
            raise

    async def _start(self) -> None:
        s = self.settings
        self.loop_lag.start()  # first: liveness watches its ticks
        if self.health is not None:
            await self.health.start()
        admin = await asyncio.to_thread(self._connect_admin, s, s.broker_wait_s)
        if s.create_topics:
            topics = [s.prompts_topic, s.completions_topic, s.dlq_topic, s.chunks_topic]
            if s.processing_guarantee == "exactly_once":
                topics.append(s.batch_markers_topic)
            created = await asyncio.to_thread(ensure_topics, admin, topics, s.topic_partitions)
            if created:
                log.info("created topics %s", created)
        else:  # a missing topic is named now, not found out by an idle consumer
            read = {env_name("prompts_topic"): s.prompts_topic}
            outputs = ("completions_topic", "dlq_topic") + (("chunks_topic",) if s.stream else ())
            if s.processing_guarantee == "exactly_once":
                outputs += ("batch_markers_topic",)
            written = {env_name(f): str(getattr(s, f)) for f in outputs}
            await asyncio.to_thread(require_topics, admin, read, written)
        self._topic_partitions = await asyncio.to_thread(partition_count, admin, s.prompts_topic)
        await self.registry.start(timeout=s.registry_wait_s)
        self._loop = asyncio.get_running_loop()
        await self.bridge.start()
        self._watcher = asyncio.create_task(self._watch_group(admin), name="group-watch")
        self._sweeper = asyncio.create_task(self.housekeeping.run(), name="housekeeping")
        self._batch_tasks = [
            asyncio.create_task(self.batch_intake.run(), name="batch-intake"),
            asyncio.create_task(self.batch_runner.run(), name="batch-runner"),
        ]
        self._broker_ok = True
        log.info(
            "worker started",
            extra={
                "group_id": s.group_id,
                "prompts_topic": s.prompts_topic,
                "completions_topic": s.completions_topic,
                "registry_rows": len(self.registry.rows),
                "http_port": self.health.port if self.health else None,
            },
        )

    async def close(self) -> None:
        self.loop_lag.stop()
        for task in (self._watcher, self._sweeper, *self._batch_tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self.bridge.close()
        await self.sessions.close()
        await self.batch_clients.close()
        await self.registry.close()
        if self.health is not None:
            await self.health.close()
        if self.tracing is not None:  # what is left goes out now, within a few seconds
            await asyncio.to_thread(self.tracing.close)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[App]:
        """Start, run the worker in a task, and on exit stop and settle it (tests, dev stack)."""
        await self.start()
        task = asyncio.create_task(self.worker.run(), name="worker")
        try:
            yield self
        finally:
            self.worker.stop()
            try:
                await task
            finally:
                await self.close()
