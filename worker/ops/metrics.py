"""Prometheus metrics.

Components keep plain counters; this module owns the prometheus-client objects. Each `Worker`
gets its own `Metrics` (own `CollectorRegistry`), so several workers in one process (tests) do not
collide.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

PRIORITY_NAMES = ("high", "normal", "low")
"""The priorities by rank (`calling/priority.py`'s NAMES, which a test checks)."""

if TYPE_CHECKING:  # the components' typed stats (imported at run time they would make a cycle)
    from ..calling.concurrency import EndpointConcurrency
    from ..calling.ratelimit import LimiterStats
    from ..dedup import DedupStats

__all__ = ["ComponentCollector", "Metrics", "Tally", "observe"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def observe(histogram: Histogram, amount: float) -> None:
    """`histogram.observe(amount)` for a histogram without labels (or one label child),
    the hot path's way: its bucket found by bisection instead of a walk over every bound,
    no exemplar, no check that it has its labels. The counts are the same (a unit test
    compares them): prometheus-client puts `amount` in the first bucket whose bound is >= it."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # a prometheus-client that keeps them otherwise
        histogram.observe(amount)
        return
    if amount != amount:  # NaN: no bucket holds it (as prometheus-client does)
        histogram.observe(amount)
        return
    total.inc(amount)
    buckets[bisect_left(bounds, amount)].inc(1)


class Tally:
    """A batch's observations of one histogram (or label child), added to it at `flush`: one
    locked addition per bucket touched and one for the sum, where `observe` takes two locks
    per observation. Counts as `observe` does (a unit test compares them). Only the thread
    that adds may flush; a scrape between the two sees the observations not yet flushed as
    not yet made."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        bounds = getattr(histogram, "_upper_bounds", None)
        self._bounds: list[float] | None = bounds if hasattr(histogram, "_buckets") else None
        self._counts = [0] * len(bounds or ())
        self._sum = 0.0

    def add(self, amount: float) -> None:
        bounds = self._bounds
        if bounds is None or amount != amount:  # another client's layout; NaN: as it does
            self._histogram.observe(amount)
            return
        self._counts[bisect_left(bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        buckets = self._histogram._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._histogram._sum.inc(self._sum)
        self._sum = 0.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_* (CPU, memory, open files), python_info, python_gc_*: what the default
        # registry of prometheus-client exports, on ours
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._intake(r)
        self._calls(r)
        self._latency(r)
        self._state(r)
        self._streaming(r)

    def _intake(self, r: CollectorRegistry) -> None:
        """What came in and what went out: records, completions by status and error, dead
        letters, fallbacks, answers that failed their check, canned replies."""
        self.consumed = Counter(
            "llm_worker_messages_consumed", "Input records consumed", registry=r
        )
        self.completions = Counter(
            "llm_worker_completions",
            "Completions produced and acknowledged",
            ["model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "llm_worker_completion_errors", "Error completions by error type", ["type"], registry=r
        )
        self.dlq = Counter(
            "llm_worker_dlq_records", "Records sent to the DLQ", ["reason"], registry=r
        )
        self.fallbacks = Counter(
            "llm_worker_fallbacks", "Completions answered by a fallback", ["model"], registry=r
        )
        self.invalid_outputs = Counter(
            "llm_worker_invalid_outputs",
            "Answers that failed their output check (JSON, schema, tool arguments)",
            ["provider"],
            registry=r,
        )
        self.canned = Counter(
            "llm_worker_canned_responses",
            "Completions answered with the row's canned_response after every candidate failed",
            ["model"],
            registry=r,
        )

    def _calls(self, r: CollectorRegistry) -> None:
        """Provider calls: attempts by outcome, retries, tokens and cost, breaker changes."""
        self.provider_calls = Counter(
            "llm_worker_provider_calls",
            "Provider attempts",
            ["provider", "endpoint", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "llm_worker_retries",
            "Provider attempts made after a failed one (same or next candidate), by its error",
            ["reason"],
            registry=r,
        )
        self.tokens = Counter(
            "llm_worker_tokens",
            "Tokens of acknowledged completions that called a provider (input or output)",
            ["model", "provider", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "llm_worker_cost_usd",
            "Cost in USD of acknowledged completions, from the registry's per-1k prices",
            ["model", "provider"],
            registry=r,
        )
        self.circuit_changes = Counter(
            "llm_worker_circuit_changes",
            "Circuit breaker state changes",
            ["endpoint", "to"],
            registry=r,
        )

    def _streaming(self, r: CollectorRegistry) -> None:
        """Streamed answers: chunk records, their bytes, the time to the first chunk, followers
        that joined a stream too late to be given its chunks."""
        self.chunks = Counter(
            "llm_worker_chunks", "Chunk records produced and acknowledged", registry=r
        )
        self.chunk_bytes = Counter(
            "llm_worker_chunk_bytes", "Bytes of chunk records acknowledged", registry=r
        )
        self.first_chunk = Histogram(
            "llm_worker_stream_first_chunk_seconds",
            "Worker-added time to the first chunk: from the provider's first piece to that "
            "chunk's acknowledgement (streams led by a call)",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.late_joins = Counter(
            "llm_worker_stream_late_joins",
            "Streaming prompts that found their identical stream past LLM_WORKER_STREAM_BUFFER_"
            "BYTES: given the final completion only, no chunks",
            registry=r,
        )

    def _latency(self, r: CollectorRegistry) -> None:
        """Latencies: of a provider attempt, end to end, the worker's time to answer and its own
        overhead."""
        self.provider_latency = Histogram(
            "llm_worker_provider_latency_seconds",
            "Provider attempt latency",
            ["provider", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "llm_worker_end_to_end_seconds",
            "Kafka timestamp of the prompt to acknowledged completion",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_answer = Histogram(
            "llm_worker_time_to_answer_seconds",
            "From the worker taking the prompt to its completion acknowledged by Kafka",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "llm_worker_queue_seconds",
            "A completion's queue_ms (Kafka timestamp of the prompt to its completion), by the "
            "priority it waited with (prompts that needed a provider call)",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llm_worker_overhead_seconds",
            "Time to answer minus the provider's time, for answers from a provider call",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )

    def _state(self, r: CollectorRegistry) -> None:
        """The worker's state now: in flight, paused, commits and deliveries, the registry cache."""
        self.in_flight = Gauge("llm_worker_in_flight", "Messages in flight", registry=r)
        self.paused = Gauge("llm_worker_paused_partitions", "Partitions paused", registry=r)
        self.commits = Counter("llm_worker_offset_commits", "Offset commits", registry=r)
        self.delivery_retries = Counter(
            "llm_worker_delivery_retries", "Produce attempts retried", registry=r
        )
        self.delivery_failing = Gauge(
            "llm_worker_delivery_failing",
            "Outcomes whose delivery is failing and being retried (their offsets wait)",
            registry=r,
        )
        self.registry_rows = Gauge(
            "llm_worker_registry_rows", "Rows in the registry cache", registry=r
        )
        self.registry_stale = Gauge(
            "llm_worker_registry_stale", "1 when the registry cache could not refresh", registry=r
        )
        self.batch_waiting = Gauge(
            "llm_worker_batch_requests_waiting",
            "Batch-lane requests stored and not yet in a job (on the collecting replica)",
            registry=r,
        )
        self.batch_oldest = Gauge(
            "llm_worker_batch_oldest_waiting_seconds",
            "Age of the oldest batch-lane request not yet in a job (on the collecting replica)",
            registry=r,
        )
        self.batch_jobs = Gauge(
            "llm_worker_batch_jobs",
            "Batch jobs by state (on the collecting replica)",
            ["state"],
            registry=r,
        )
        self.batch_collecting = Gauge(
            "llm_worker_batch_collecting",
            "1 on the replica holding the batch lane's lease (it submits and collects)",
            registry=r,
        )


def forget_series(metrics: object, label: str, keep: set[str]) -> int:
    """Remove every series of `metrics`' counters, gauges and histograms whose `label` is not
    in `keep` (an endpoint or model gone from the registry); returns how many were removed."""
    removed = 0
    for metric in vars(metrics).values():
        names = getattr(metric, "_labelnames", ())
        if label not in names:
            continue
        stale: set[tuple[str, ...]] = set()
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get(label) not in keep:
                    stale.add(tuple(sample.labels[n] for n in names))
        for values in stale:
            try:
                metric.remove(*values)
                removed += 1
            except KeyError:
                pass
    return removed


class ComponentCollector:
    """Reads the components' plain counters at scrape time (no per-message metric cost)."""

    def __init__(
        self,
        *,
        dedup: Callable[[], DedupStats] | None,
        limiter: Callable[[], LimiterStats],
        breakers: Callable[[], dict[str, str]],
        choices: Callable[[], dict[str, int]],
        loop_lag: Callable[[], float] | None = None,
        circuit_waiting: Callable[[], int] | None = None,
        consumer_lag: Callable[[], dict[tuple[str, int], int]] | None = None,
        producer_queue: Callable[[], int] | None = None,
        held: Callable[[], dict[str, tuple[float, float]]] | None = None,
        demoted: Callable[[], dict[str, bool]] | None = None,
        concurrency: Callable[[], dict[str, EndpointConcurrency]] | None = None,
        in_flight_limit: Callable[[], float] | None = None,
    ) -> None:
        self._consumer_lag = consumer_lag
        self._producer_queue = producer_queue
        self._loop_lag = loop_lag
        self._circuit_waiting = circuit_waiting
        self._held = held
        self._demoted = demoted
        self._concurrency = concurrency
        self._in_flight_limit = in_flight_limit
        self._dedup = dedup
        self._limiter = limiter
        self._breakers = breakers
        self._choices = choices

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self._dedup is not None:
            yield from _dedup_metrics(self._dedup())
        yield from _limiter_metrics(self._limiter())
        yield _circuit_states(self._breakers())
        if self._circuit_waiting is not None:
            yield GaugeMetricFamily(
                "llm_worker_circuit_waiting",
                "Requests waiting for a half-open probe (as held_requests{reason=circuit_open})",
                value=self._circuit_waiting(),
            )
        if self._held is not None:
            yield from _held_metrics(self._held())
        if self._demoted is not None:
            yield _demoted_metric(self._demoted())
        if self._concurrency is not None:
            yield from _concurrency_metrics(self._concurrency())
        if self._in_flight_limit is not None:
            yield GaugeMetricFamily(
                "llm_worker_in_flight_limit",
                "How many messages the worker takes in flight now (adaptive, within the cap)",
                value=self._in_flight_limit(),
            )
        choices = CounterMetricFamily(
            "llm_worker_route_choices",
            "How often the router put an endpoint first",
            labels=["endpoint"],
        )
        for endpoint, n in self._choices().items():
            choices.add_metric([endpoint], n)
        yield choices
        yield from self._kafka_metrics()

    def _kafka_metrics(self) -> Iterator[Metric]:
        if self._loop_lag is not None:
            yield CounterMetricFamily(
                "llm_worker_event_loop_lag_seconds",
                "Time the event loop ran its timers late (stalls, overload); rate() = share",
                value=self._loop_lag(),
            )
        if self._consumer_lag is not None:
            lag = GaugeMetricFamily(
                "llm_worker_consumer_lag",
                "Records behind the end of each assigned partition (librdkafka statistics)",
                labels=["topic", "partition"],
            )
            for (topic, partition), n in sorted(self._consumer_lag().items()):
                lag.add_metric([topic, str(partition)], n)
            yield lag
        if self._producer_queue is not None:
            yield GaugeMetricFamily(
                "llm_worker_producer_queue_messages",
                "Outcome records in the producer's queue, not yet acknowledged by Kafka",
                value=self._producer_queue(),
            )


def _dedup_metrics(d: DedupStats) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "llm_worker_dedup_entries", "Answers kept in the dedup window", value=d.entries
    )
    yield GaugeMetricFamily(
        "llm_worker_dedup_bytes", "Bytes kept in the dedup window", value=d.bytes
    )
    yield GaugeMetricFamily(
        "llm_worker_dedup_inflight", "Distinct requests being called", value=d.inflight
    )
    shared = CounterMetricFamily(
        "llm_worker_dedup_shared", "Requests answered from an identical one", labels=["how"]
    )
    shared.add_metric(["window"], d.hits)
    shared.add_metric(["in_flight"], d.coalesced)
    yield shared
    yield CounterMetricFamily(
        "llm_worker_dedup_evictions",
        "Dedup entries evicted by the caps",
        value=d.evictions,
    )


def _limiter_metrics(lim: LimiterStats) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "llm_worker_ratelimit_waiting",
        "Requests waiting for rate-limit capacity",
        value=lim.waiting,
    )
    yield CounterMetricFamily(
        "llm_worker_ratelimit_wait_seconds",
        "Time spent waiting for capacity",
        value=lim.waited_s,
    )
    yield GaugeMetricFamily(
        "llm_worker_ratelimit_share", "This replica's share of row limits", value=lim.share
    )
    yield _by_priority(
        "llm_worker_ratelimit_waiting_by_priority",
        "Requests waiting for rate-limit capacity, by priority",
        lim.waiting_by,
    )


def _by_priority(name: str, doc: str, counts: tuple[int, int, int]) -> Metric:
    gauge = GaugeMetricFamily(name, doc, labels=["priority"])
    for label, n in zip(PRIORITY_NAMES, counts, strict=True):
        gauge.add_metric([label], n)
    return gauge


def _circuit_states(breakers: dict[str, str]) -> Metric:
    state = GaugeMetricFamily(
        "llm_worker_circuit_state",
        "1 for the endpoint's current breaker state",
        labels=["endpoint", "state"],
    )
    for endpoint, current in breakers.items():
        for name in ("closed", "open", "half_open"):
            state.add_metric([endpoint, name], 1.0 if current == name else 0.0)
    return state


def _held_metrics(by_reason: dict[str, tuple[float, float]]) -> Iterator[Metric]:
    # `reason`: circuit_open, retry_backoff, rate_limit (= llm_worker_ratelimit_waiting)
    held = GaugeMetricFamily(
        "llm_worker_held_requests",
        "Requests held (waiting) instead of answered with an error, by reason",
        labels=["reason"],
    )
    held_s = CounterMetricFamily(
        "llm_worker_held_seconds",
        "Seconds requests spent held, by reason (added when each wait ends)",
        labels=["reason"],
    )
    for reason, (waiting, seconds) in by_reason.items():
        held.add_metric([reason], waiting)
        held_s.add_metric([reason], seconds)
    yield held
    yield held_s


def _demoted_metric(demoted: dict[str, bool]) -> Metric:
    family = GaugeMetricFamily(
        "llm_worker_endpoint_demoted",
        "1 while the endpoint is demoted for latency (routed around, never refused)",
        labels=["endpoint"],
    )
    for endpoint, is_demoted in demoted.items():
        family.add_metric([endpoint], 1.0 if is_demoted else 0.0)
    return family


def _concurrency_metrics(stats: dict[str, EndpointConcurrency]) -> Iterator[Metric]:
    limit = GaugeMetricFamily(
        "llm_worker_concurrency_limit",
        "Calls an endpoint may have in flight now (learned: calling/concurrency.py)",
        labels=["endpoint"],
    )
    changes = CounterMetricFamily(
        "llm_worker_concurrency_changes",
        "Why an endpoint's concurrency limit moved: grow, plateau, overload",
        labels=["endpoint", "reason"],
    )
    waiting = [0, 0, 0]
    for endpoint, st in stats.items():
        limit.add_metric([endpoint], st.limit)
        changes.add_metric([endpoint, "grow"], st.grow)
        changes.add_metric([endpoint, "plateau"], st.plateau)
        changes.add_metric([endpoint, "overload"], st.overload)
        for i, n in enumerate(st.waiting_by):
            waiting[i] += n
    yield limit
    yield changes
    yield _by_priority(
        "llm_worker_concurrency_waiting_by_priority",
        "Requests waiting for an endpoint's concurrency slot, by priority",
        (waiting[0], waiting[1], waiting[2]),
    )
