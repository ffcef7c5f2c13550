"""One provider attempt (`worker.calling.attempt`): what it tells the metrics, the router's
statistics, the breaker and the latency judge, and the observer; the request's deadline
ending a call; the target it builds from a registry row.

The provider is a scripted adapter and the clock and loop lag are set by hand, so each test
says exactly how long a call took and how late the loop was."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import ClientSession

from llm_worker.adapters.base import Adapter, ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.attempt import Attempts, DeadlineInCall
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig, BreakerStats
from llm_worker.worker.calling.routing import Router, health_key
from llm_worker.worker.ops.looplag import LoopLag
from llm_worker.worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="hi")
RESULT = ProviderResult(text="hello", finish_reason="stop")
SESSION = object()  # stands for the endpoint's aiohttp session


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lag:
    """Loop lag set by hand: `late` seconds accrue between `mark()` and `since()`."""

    def __init__(self) -> None:
        self.late = 0.0

    def mark(self) -> float:
        return 7.0

    def since(self, mark: float) -> float:
        assert mark == 7.0
        return self.late


class Provider:
    """An adapter whose call takes `took` seconds on `clock` and then answers or raises."""

    name = "fake"

    def __init__(self, clock: Clock, took: float = 0.0) -> None:
        self.clock = clock
        self.took = took
        self.error: ProviderError | None = None
        self.hang = False
        self.seen: list[Target] = []
        self.given: list[tuple[object, ProviderRequest]] = []
        self.loads: list[dict[str, int]] = []
        self.attempts: Attempts | None = None
        self.gate: asyncio.Event | None = None

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        return None  # a scripted provider honours every field

    def endpoint_for(self, target: Target) -> str:
        return target.endpoint

    async def complete(
        self, session: ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        self.seen.append(target)
        self.given.append((session, request))
        if self.attempts is not None:
            self.loads.append(dict(self.attempts.calling))
        if self.gate is not None:
            await self.gate.wait()
        if self.hang:  # until the row's timeout, as the real adapters do
            await asyncio.sleep(target.timeout_ms / 1000)
            raise ProviderTimeout(f"no answer within {target.timeout_ms} ms")
        self.clock.now += self.took
        if self.error is not None:
            raise self.error
        return RESULT


class Observer:
    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def attempt_started(
        self,
        cand: Candidate,
        target: Target,
        request: ProviderRequest,
        attempt: int,
        retry_of: ProviderError | None,
    ) -> Any:
        self.log.append(("started", cand.endpoint_name, target.model, request, attempt, retry_of))
        return len(self.log)

    def attempt_finished(
        self,
        handle: Any,
        result: ProviderResult | None = None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        self.log.append(("finished", handle, result, error, cancelled))

    def event(self, name: str, cand: Candidate, **attrs: Any) -> None:
        raise AssertionError("attempts send no events")


# the latency judge needs calls at least 0.5 s slower than usual to matter; 2 s calls are
BREAKER = BreakerConfig(latency_min_increase_s=0.5, consecutive_failures=3, min_requests=1000)


class Setup:
    def __init__(
        self,
        lag: bool = True,
        secrets: dict[str, str] | None = None,
        sessions: SessionPool | None = None,
    ) -> None:
        self.clock = Clock()
        self.lag = Lag()
        self.metrics = Metrics()
        self.breakers = BreakerBoard(BREAKER, clock=self.clock)
        self.router = Router(breakers=self.breakers)
        self.observer = Observer()
        self.attempts = Attempts(
            cast(SessionPool, sessions),
            SecretStore(None, env=secrets or {}),
            self.metrics,
            self.router,
            self.breakers,
            cast(LoopLag, self.lag) if lag else None,
            self.clock,
            self.observer,
        )
        self.cand = resolve(
            {"m": ModelRow(model_id="m", provider="fake", endpoint="http://p", upstream_model="u")},
            "m",
        )[0]
        self.health = health_key(self.cand)
        self.provider = Provider(self.clock)
        self.provider.attempts = self.attempts

    def prepared(self, timeout_ms: int) -> tuple[Target, Adapter, ClientSession]:
        target = Target(
            provider="fake",
            endpoint="http://p",
            model="u",
            endpoint_name=self.cand.endpoint_name,
            timeout_ms=timeout_ms,
        )
        return target, cast(Adapter, self.provider), cast(ClientSession, SESSION)

    async def call(
        self, remaining: float = 60.0, **kw: Any
    ) -> tuple[ProviderResult, float] | ProviderError:
        return await self.attempts.call(
            self.cand, self.health, self.prepared(2000), REQUEST, remaining, **kw
        )

    def calls(self, outcome: str, endpoint: str = "m/primary") -> float:
        value = self.metrics.registry.get_sample_value(
            "llm_worker_provider_calls_total",
            {"provider": "fake", "endpoint": endpoint, "outcome": outcome},
        )
        return value or 0.0

    def latency(self, suffix: str, endpoint: str = "m/primary") -> float:
        value = self.metrics.registry.get_sample_value(
            f"llm_worker_provider_latency_seconds_{suffix}",
            {"provider": "fake", "endpoint": endpoint},
        )
        return value or 0.0

    def breaker(self) -> BreakerStats:
        return self.breakers.get(self.health).stats()


# -- a success ---------------------------------------------------------------------------------
async def test_a_success_returns_the_answer_and_its_time_and_counts_it() -> None:
    s = Setup()
    s.provider.took = 2.0
    assert await s.call() == (RESULT, 2.0)
    assert await s.call() == (RESULT, 2.0)  # the metric children looked up once are reused
    assert s.calls("ok") == 2
    assert s.latency("count") == 2 and s.latency("sum") == 4.0
    assert s.router.stats.latency(s.health) == 2.0
    assert s.router.stats.error_rate(s.health) == 0.0
    b = s.breaker()
    assert (b.requests, b.errors, b.latency.samples) == (2, 0, 2)


@pytest.mark.parametrize("remaining", [60.0, 1.0])  # after the row's timeout (2 s), before it
async def test_the_provider_gets_the_request_on_the_endpoints_session(remaining: float) -> None:
    s = Setup()
    assert await s.call(remaining) == (RESULT, 0.0)
    assert s.provider.given == [(SESSION, REQUEST)]
    assert s.provider.seen == [s.prepared(2000)[0]]


async def test_each_endpoint_counts_its_own_successes() -> None:
    s = Setup()
    row = ModelRow(
        model_id="m",
        provider="fake",
        endpoint="http://p",
        upstream_model="u",
        fallback_provider="fake",
        fallback_endpoint="http://f",
        fallback_model="u",
    )
    primary, fallback = resolve({"m": row}, "m")
    s.provider.took = 1.0
    for cand, n in ((primary, 1), (fallback, 2), (primary, 1)):
        for _ in range(n):
            await s.attempts.call(cand, health_key(cand), s.prepared(2000), REQUEST, 60.0)
    assert s.calls("ok") == 2 and s.latency("count") == 2
    assert s.calls("ok", "m/fallback") == 2 and s.latency("count", "m/fallback") == 2


async def test_routing_and_the_latency_judge_see_the_call_without_the_loops_lateness() -> None:
    """The metric shows what the request waited (2 s); routing and the breaker see the
    provider's share (2 s - 0.5 s of loop lateness)."""
    s = Setup()
    s.provider.took = 2.0
    s.lag.late = 0.5
    assert await s.call() == (RESULT, 2.0)
    assert s.latency("sum") == 2.0
    assert s.router.stats.latency(s.health) == 1.5
    assert s.breaker().latency.mean_s == 1.5


async def test_a_call_the_loop_was_late_for_more_than_all_of_counts_as_instant() -> None:
    s = Setup()
    s.provider.took = 0.25
    s.lag.late = 0.5  # a tick overdue from before: more than the call's own time
    await s.call()
    assert s.router.stats.latency(s.health) == 0.0


@pytest.mark.parametrize(
    ("took", "late", "judged"),
    [
        (2.0, 0.0, True),
        (2.0, 0.9, True),  # late for less than half the call
        (2.0, 1.0, False),  # half: saturated, says more about the worker
        (2.0, 1.5, False),
        (0.4, 0.3, True),  # short calls always count: they make the baseline
        (0.5, 0.3, False),  # as long as the least slowdown the judge acts on: can be slow
    ],
)
async def test_a_slow_call_on_a_saturated_loop_is_not_judged_on_latency(
    took: float, late: float, judged: bool
) -> None:
    s = Setup()
    s.provider.took = took
    s.lag.late = late
    await s.call()
    assert s.breaker().latency.samples == (1 if judged else 0)
    assert s.router.stats.latency(s.health) == pytest.approx(took - late)  # routing always


async def test_without_loop_lag_accounting_the_whole_time_counts() -> None:
    s = Setup(lag=False)
    s.provider.took = 2.0
    await s.call()
    assert s.router.stats.latency(s.health) == 2.0
    assert s.breaker().latency.samples == 1


async def test_calls_in_flight_are_counted_per_endpoint_while_they_run() -> None:
    s = Setup()
    s.provider.took = 1.0
    s.attempts.calling[s.health] = 2  # two more calls to this endpoint are in flight
    await s.call()
    assert s.provider.loads == [{s.health: 3}]
    assert s.attempts.calling == {s.health: 2}
    del s.attempts.calling[s.health]
    await s.call()
    assert s.provider.loads[-1] == {s.health: 1}
    assert s.attempts.calling == {}  # nothing left in flight: no entry kept


async def test_the_latency_judge_compares_calls_made_under_the_same_load() -> None:
    """The load a call started at goes to the judge: 20 calls made alone, then one made with
    40 others in flight is not comparable (slower because of us), so it is not counted."""
    s = Setup()
    s.provider.took = 0.1
    for _ in range(20):
        await s.call()
    s.attempts.calling[s.health] = 40
    await s.call()
    assert s.breaker().latency.samples == 20


# -- errors ------------------------------------------------------------------------------------
async def test_a_provider_error_is_returned_counted_and_held_against_the_endpoint() -> None:
    s = Setup()
    s.provider.took = 3.0
    s.provider.error = ServerError("boom", status=500)
    assert await s.call() is s.provider.error
    assert s.calls("server_error") == 1 and s.calls("ok") == 0
    assert s.latency("count") == 0
    assert s.router.stats.error_rate(s.health) == pytest.approx(0.2)
    assert s.router.stats.latency(s.health) is None
    assert s.breaker().errors == 1
    assert s.attempts.calling == {}


async def test_failures_in_a_row_open_the_breaker() -> None:
    s = Setup()
    s.provider.error = ServerError("boom", status=500)
    for _ in range(3):
        await s.call()
    assert s.breaker().state == "open"


async def test_a_failure_from_before_the_trip_is_no_probe_but_a_probes_failure_reopens() -> None:
    """Half-open, the breaker ignores a call that started before it opened (it says nothing
    new) and opens again when a call made since fails."""
    s = Setup()
    s.provider.error = ServerError("boom", status=500)
    gate = s.provider.gate = asyncio.Event()
    straggler = asyncio.create_task(s.call())
    while not s.provider.seen:
        await asyncio.sleep(0)
    s.provider.gate = None
    s.clock.now += 1
    for _ in range(3):
        await s.call()
    assert s.breaker().state == "open"
    s.clock.now += BREAKER.cooldown_s
    assert s.breaker().state == "half_open"
    gate.set()
    await straggler
    assert s.breaker().state == "half_open"
    assert s.breakers.allow(s.health)  # the probe
    s.clock.now += 1
    await s.call()
    assert s.breaker().state == "open"


async def test_half_open_the_deadline_ending_a_probe_reopens_but_not_a_straggler() -> None:
    s = Setup()
    gate = s.provider.gate = asyncio.Event()
    straggler = asyncio.create_task(s.call(remaining=0.2))
    while not s.provider.seen:
        await asyncio.sleep(0)
    s.provider.gate = None
    s.provider.error = ServerError("boom", status=500)
    s.clock.now += 1
    for _ in range(3):
        await s.call()
    s.clock.now += BREAKER.cooldown_s
    assert s.breaker().state == "half_open"
    with pytest.raises(DeadlineInCall):
        await straggler  # started before the trip
    gate.set()
    assert s.breaker().state == "half_open"
    assert s.breakers.allow(s.health)
    s.provider.hang = True
    with pytest.raises(DeadlineInCall):
        await s.call(remaining=0.05)
    assert s.breaker().state == "open"


@pytest.mark.parametrize("error", [RateLimited("slow down"), Overloaded("busy")])
async def test_throttling_counts_as_errors_not_as_failures_in_a_row(error: ProviderError) -> None:
    """429 and 529 say the endpoint is alive: the breaker does not open on a run of them."""
    s = Setup()
    s.provider.error = error
    for _ in range(3):
        await s.call()
    b = s.breaker()
    assert (b.state, b.errors) == ("closed", 3)
    assert s.calls(error.type) == 3


async def test_a_bad_request_says_nothing_about_the_endpoints_health() -> None:
    s = Setup()
    s.provider.error = BadRequest("prompt too long", status=400)
    for _ in range(3):
        assert await s.call() is s.provider.error
    assert s.calls("bad_request") == 3
    assert s.router.stats.error_rate(s.health) is None
    assert s.breaker().requests == 0


# -- the request's deadline ----------------------------------------------------------------------
async def test_the_deadline_ends_a_call_that_outlasts_it() -> None:
    s = Setup()
    s.provider.hang = True
    with pytest.raises(DeadlineInCall) as info:
        await s.call(remaining=0.05)
    err = info.value.error
    assert isinstance(err, ProviderTimeout)
    assert (err.provider, err.model) == ("fake", "u")
    assert str(info.value) == str(err)
    assert str(err) == "request deadline passed during an attempt [fake/u]"
    assert s.calls("timeout") == 1
    assert s.router.stats.error_rate(s.health) == pytest.approx(0.2)
    assert s.breaker().errors == 1
    assert s.attempts.calling == {}
    assert s.observer.log[-1] == ("finished", 1, None, err, False)


async def test_a_row_timeout_shorter_than_the_deadline_is_the_providers_timeout() -> None:
    """The row's timeout ends the attempt first: an ordinary retryable error, not the end of
    the request."""
    s = Setup()
    s.provider.hang = True
    out = await s.attempts.call(s.cand, s.health, s.prepared(timeout_ms=20), REQUEST, 5.0)
    assert isinstance(out, ProviderTimeout) and out.retryable
    assert str(out) == "no answer within 20 ms"
    assert s.calls("timeout") == 1


# -- the observer ------------------------------------------------------------------------------
async def test_the_observer_sees_each_attempt_start_and_end() -> None:
    s = Setup()
    first = ServerError("boom", status=500)
    s.provider.error = first
    await s.call()
    s.provider.error = None
    await s.call(attempt=2, retry_of=first)
    assert s.observer.log == [
        ("started", "m/primary", "u", REQUEST, 1, None),
        ("finished", 1, None, first, False),
        ("started", "m/primary", "u", REQUEST, 2, first),
        ("finished", 3, RESULT, None, False),
    ]


async def test_a_cancelled_attempt_ends_for_the_observer_and_leaves_no_load() -> None:
    s = Setup()
    s.provider.hang = True
    task = asyncio.create_task(s.call())
    while not s.provider.seen:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.observer.log[-1] == ("finished", 1, None, None, True)
    assert s.attempts.calling == {}
    assert s.calls("ok") == 0 and s.router.stats.error_rate(s.health) is None


# -- preparing a call: target, adapter, session ---------------------------------------------------
def _cand(**row: Any) -> Candidate:
    fields: dict[str, Any] = {
        "model_id": "m",
        "provider": "openai",
        "endpoint": "http://p/v1",
        "upstream_model": "u",
    }
    fields.update(row)
    return resolve({"m": ModelRow(**fields)}, "m")[0]


async def test_prepare_builds_the_target_from_the_row(sessions: SessionPool) -> None:
    s = Setup(secrets={"OPENAI_KEY": "sk-test"}, sessions=sessions)
    cand = _cand(api_key_secret="openai_key", timeout_ms=1234, max_tokens=99)
    target, adapter, session = s.attempts.prepare(cand)
    assert adapter.name == "openai"
    assert (target.provider, target.endpoint, target.model) == ("openai", "http://p/v1", "u")
    assert (target.endpoint_name, target.timeout_ms, target.max_tokens) == ("m/primary", 1234, 99)
    assert target.api_key is not None and target.api_key.reveal() == "sk-test"
    assert session is sessions.get("http://p/v1")


async def test_a_row_without_a_secret_calls_without_a_key(sessions: SessionPool) -> None:
    s = Setup(sessions=sessions)
    target, _, _ = s.attempts.prepare(_cand())
    assert target.api_key is None


def test_a_missing_secret_is_a_terminal_auth_error_naming_it() -> None:
    s = Setup()
    with pytest.raises(AuthError) as info:
        s.attempts.prepare(_cand(api_key_secret="openai_key"))
    assert str(info.value) == "API key secret 'openai_key' is not available [openai/u]"
    assert (info.value.provider, info.value.model) == ("openai", "u")
    assert not info.value.retryable


def test_an_unknown_provider_is_a_terminal_bad_request() -> None:
    s = Setup()
    with pytest.raises(BadRequest) as info:
        s.attempts.prepare(_cand(provider="nosuch"))
    assert str(info.value) == "unknown provider 'nosuch' in the registry [nosuch/u]"
    assert (info.value.provider, info.value.model) == ("nosuch", "u")


async def test_an_endpoint_that_cannot_be_called_is_a_terminal_bad_request(
    sessions: SessionPool,
) -> None:
    s = Setup(sessions=sessions)
    with pytest.raises(BadRequest) as info:
        s.attempts.prepare(_cand(endpoint="ftp://p"))
    assert str(info.value).startswith("the registry endpoint of m/primary cannot be called: ")
    assert (info.value.provider, info.value.model) == ("openai", "u")
