"""The retry loop (`worker.calling.caller`) against a scripted provider: which endpoint is
called and how often, what the request ends with (the answer, the last error, its attempts
and candidate), what the rate limiter is told, and what the metrics and the observer see.

The provider answers from a script per endpoint, the clock is set by hand (a call takes the
time the script says) and the waits between attempts and passes are recorded and made tiny,
so nothing here depends on how fast the machine is."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import ClientSession

import adapters
from adapters.base import ProviderRequest, ProviderResult, Target
from adapters.errors import AuthError, BadRequest, ProviderError, RateLimited, ServerError
from adapters.secrets import SecretStore
from adapters.sessions import SessionPool
from registry.models import ModelRow
from registry.resolve import Candidate, resolve
from worker.calling import caller as caller_module
from worker.calling.breaker import BreakerBoard, BreakerConfig
from worker.calling.caller import Caller, CallFailed, estimate_tokens
from worker.calling.ratelimit import RateLimiter
from worker.calling.routing import endpoint_key
from worker.ops.metrics import Metrics

REQUEST = ProviderRequest(prompt="hello there")


def answer(inp: int = 1, out: int = 1) -> ProviderResult:
    return ProviderResult(text="hi", finish_reason="stop", input_tokens=inp, output_tokens=out)


def server_error() -> ProviderError:
    return ServerError("upstream broke", provider="fake", model="u", status=503)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Provider:
    """Answers each endpoint from its script (a result, or an error to raise), in order."""

    name = "fake"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.script: dict[str, list[ProviderResult | ProviderError]] = {}
        self.took = 0.0
        self.called: list[str] = []
        self.broken: set[str] = set()  # endpoints that cannot be called at all

    def endpoint_for(self, target: Target) -> str:
        if target.endpoint in self.broken:
            raise ValueError("no such host")
        return target.endpoint

    async def complete(
        self, session: ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        self.called.append(target.endpoint)
        self.clock.now += self.took
        outcome = self.script[target.endpoint].pop(0)
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome


class Limiter(RateLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.penalized: list[tuple[str, float]] = []
        self.charged: list[dict[str, Any]] = []

    def penalize(self, endpoint: str, seconds: float) -> None:
        self.penalized.append((endpoint, seconds))

    def charge(self, *, endpoint: str, model_id: str, tenant: str | None, tokens: int) -> None:
        self.charged.append(
            {"endpoint": endpoint, "model_id": model_id, "tenant": tenant, "tokens": tokens}
        )


class Observer:
    def __init__(self) -> None:
        self.started: list[tuple[str, int, str | None]] = []
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def attempt_started(
        self,
        cand: Candidate,
        target: Target,
        request: ProviderRequest,
        attempt: int,
        retry_of: ProviderError | None,
    ) -> Any:
        self.started.append((cand.endpoint_name, attempt, retry_of.message if retry_of else None))
        return None

    def attempt_finished(
        self,
        handle: Any,
        result: ProviderResult | None = None,
        error: ProviderError | None = None,
        cancelled: bool = False,
    ) -> None:
        pass

    def event(self, name: str, cand: Candidate, **attrs: Any) -> None:
        self.events.append((name, cand.endpoint_name, attrs))


class Setup:
    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        sessions: SessionPool,
        max_attempts: int = 1,
        breaker: BreakerConfig | None = None,
    ) -> None:
        self.clock = Clock()
        self.provider = Provider(self.clock)
        monkeypatch.setitem(adapters._instances, "fake", self.provider)
        self.delays: list[tuple[int, str]] = []  # (attempt, error) of each wait in a pass
        self.pass_delays: list[tuple[int, str]] = []  # (passes, error) of each wait between

        def next_delay(exc: ProviderError, attempt: int, *, remaining: float) -> float | None:
            self.delays.append((attempt, exc.message))
            return 0.001 if remaining > 0 else None  # as the real one: no time, no retry

        self.pass_wait = 0.0  # clock time each wait between passes takes

        def pass_delay(passes: int, error: ProviderError) -> float:
            self.pass_delays.append((passes, error.message))
            self.clock.now += self.pass_wait
            return 0.001

        monkeypatch.setattr(caller_module, "next_delay", next_delay)
        monkeypatch.setattr(caller_module, "pass_delay", pass_delay)
        self.metrics = Metrics()
        self.limiter = Limiter()
        self.observer = Observer()
        self.caller = Caller(
            sessions,
            SecretStore(None, env={}),
            self.metrics,
            max_attempts=max_attempts,
            breakers=BreakerBoard(breaker or BreakerConfig(), clock=self.clock),
            limiter=self.limiter,
            clock=self.clock,
            observer=self.observer,
        )
        row = ModelRow(
            model_id="m",
            provider="fake",
            endpoint="http://p",
            upstream_model="u",
            fallback_provider="fake",
            fallback_endpoint="http://f",
            fallback_model="u",
            max_tokens=100,
        )
        self.cands = resolve({"m": row}, "m")
        self.primary, self.fallback = self.cands

    async def call(
        self, cands: list[Candidate] | None = None, deadline_s: float = 60.0, **kw: Any
    ) -> Any:
        return await self.caller.call(
            self.cands if cands is None else cands,
            REQUEST,
            deadline=self.clock.now + deadline_s,
            **kw,
        )

    def calls(self, outcome: str, endpoint: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "llm_worker_provider_calls_total",
            {"provider": "fake", "endpoint": endpoint, "outcome": outcome},
        )
        return value or 0.0


async def test_retryable_errors_use_the_attempts_then_the_fallback_answers(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=2)
    s.provider.took = 1.5
    s.provider.script = {"http://p": [server_error(), server_error()], "http://f": [answer()]}
    res = await s.call()
    assert s.provider.called == ["http://p", "http://p", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 3
    assert res.result == answer() and res.latency_ms == 1500.0
    assert s.delays == [(1, "upstream broke")]  # none after the last attempt: move on
    assert s.observer.started == [
        ("m/primary", 1, None),
        ("m/primary", 2, "upstream broke"),
        ("m/fallback", 1, "upstream broke"),
    ]
    # one wait between the attempts; no rate-limit wait (there was none to trace)
    assert s.observer.events == [("held", "m/primary", {"reason": "retry_backoff", "wait_s": 0.0})]
    assert s.caller.held == 0 and s.caller.concurrency.get("http://p").in_use == 0


async def test_a_failed_pass_is_tried_again_without_the_terminally_failed_candidate(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {
        "http://p": [AuthError("bad key", status=401)],
        "http://f": [server_error(), server_error(), answer()],
    }
    res = await s.call()
    assert s.provider.called == ["http://p", "http://f", "http://f", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 4
    assert s.pass_delays == [(1, "upstream broke"), (2, "upstream broke")]
    assert s.caller.held == 0 and s.caller.holds.total == 0


async def test_the_second_failed_pass_holds_the_request_and_says_why(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_worker.holds")
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [server_error()] * 3 + [answer()], "http://f": []}
    res = await s.call(cands=[s.primary])
    assert res.attempts == 4
    held = [m for m in caplog.messages if "holding requests" in m]
    assert held == [
        "endpoint fake:http://p#u: holding requests (retry_backoff: server_error 503)",
        "endpoint fake:http://p#u: no longer holding requests: 1 held over 0.0 s, longest 0.0 s",
    ]
    assert s.caller.holds.total == 0


async def test_every_candidate_failing_terminally_ends_at_once_with_the_last_error(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.script = {
        "http://p": [AuthError("bad key", status=401)],
        "http://f": [BadRequest("too long", status=400)],
    }
    with pytest.raises(CallFailed) as info:
        await s.call()
    assert s.provider.called == ["http://p", "http://f"]
    assert isinstance(info.value.error, BadRequest) and info.value.error.message == "too long"
    assert info.value.attempts == 2 and info.value.candidate is s.fallback
    assert s.delays == [] and s.pass_delays == []


async def test_no_candidate_is_a_bad_request(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[])
    assert type(info.value.error) is BadRequest
    assert info.value.error.message == "no candidate to call"
    assert info.value.attempts == 0 and info.value.candidate is None


async def test_a_candidate_that_cannot_be_called_is_skipped_for_good(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.broken = {"http://p"}
    s.provider.script = {"http://f": [server_error(), answer()]}
    res = await s.call()
    assert s.provider.called == ["http://f", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 2
    s.provider.broken = {"http://p", "http://f"}
    with pytest.raises(CallFailed) as info:
        await s.call()
    assert type(info.value.error) is BadRequest
    assert "the registry endpoint of m/fallback cannot be called" in info.value.error.message
    assert info.value.attempts == 0 and info.value.candidate is s.fallback


async def test_retry_after_penalizes_the_endpoint_and_extra_tokens_are_charged(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {
        "http://p": [RateLimited("slow down", status=429, retry_after=30.0)],
        "http://f": [answer(500, 700)],
    }
    res = await s.call(tenant="acme")
    assert res.candidate is s.fallback
    assert s.limiter.penalized == [(endpoint_key(s.primary), 30.0)]
    estimate = estimate_tokens(REQUEST, 100)
    assert s.limiter.charged == [
        {
            "endpoint": endpoint_key(s.fallback),
            "model_id": "m",
            "tenant": "acme",
            "tokens": 1200 - estimate,
        }
    ]
    # no penalty without Retry-After, no charge within the estimate
    s.provider.script = {
        "http://p": [RateLimited("slow down", status=429)],
        "http://f": [answer(1, estimate - 1)],
    }
    await s.call(tenant="acme")
    assert len(s.limiter.penalized) == 1 and len(s.limiter.charged) == 1


async def test_an_exact_estimate_is_not_charged(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    estimate = estimate_tokens(REQUEST, 100)
    s.provider.script = {"http://p": [answer(1, estimate - 1), answer(1, estimate)]}
    await s.call()
    assert s.limiter.charged == []
    await s.call()
    assert [c["tokens"] for c in s.limiter.charged] == [1]


async def test_an_open_breaker_is_skipped_counted_and_traced(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3, breaker=BreakerConfig(consecutive_failures=1))
    s.provider.script = {"http://p": [server_error()], "http://f": [answer(), server_error()]}
    res = await s.call()
    # the primary's breaker opened on its first failure: no second attempt there
    assert s.provider.called == ["http://p", "http://f"] and res.attempts == 2
    assert s.delays == []
    assert s.calls("circuit_open", "m/primary") == 0
    s.pass_wait = 100.0  # past the deadline: the request ends after its first pass
    with pytest.raises(CallFailed) as info:
        await s.call()
    # the open primary goes last; reached after the fallback failed, it is not called
    assert s.provider.called == ["http://p", "http://f", "http://f"]
    assert info.value.attempts == 1 and info.value.candidate is s.fallback
    assert type(info.value.error) is ServerError
    assert s.calls("circuit_open", "m/primary") == 1
    assert s.calls("circuit_open", "m/fallback") == 0
    assert ("circuit_open", "m/primary", {}) in s.observer.events


async def test_the_deadline_ends_the_attempts_with_the_providers_last_error(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.took = 3.0
    s.provider.script = {"http://p": [server_error()] * 3}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.provider.called == ["http://p", "http://p"]  # at 106 the deadline (105) is past
    err = info.value.error
    assert type(err) is ServerError and err.status == 503
    assert err.message == ("upstream broke; request deadline passed after 2 attempts and 0.0s held")
    assert info.value.attempts == 2 and info.value.candidate is s.primary


async def test_a_deadline_passed_during_a_failed_pass_ends_the_request(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.took = 6.0
    s.provider.script = {"http://p": [server_error()], "http://f": []}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.provider.called == ["http://p"] and s.pass_delays == []
    assert info.value.error.message.endswith("deadline passed after 1 attempts and 0.0s held")
    assert info.value.candidate is s.primary
