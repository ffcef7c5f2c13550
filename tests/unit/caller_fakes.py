"""Fakes for the retry loop's unit tests (`test_caller_loop.py`, `test_caller_waits.py`): a
scripted provider, a hand-set clock, a recording rate limiter and observer, and a `Setup`
that wires them into a `Caller`."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp import ClientSession

from llm_worker import adapters
from llm_worker.adapters._http import cap_tokens
from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import ProviderError, ServerError
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling import caller as caller_module
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import Caller
from llm_worker.worker.calling.concurrency import AdaptiveLimit, ConcurrencyLimits
from llm_worker.worker.calling.ratelimit import RateLimiter, RateLimitTimeout, RateRequest
from llm_worker.worker.ops.metrics import Metrics

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
        self.keys: list[str | None] = []  # the API key each call was given
        self.max_tokens: list[int | None] = []  # the max_tokens each call would send
        self.broken: set[str] = set()  # endpoints that cannot be called at all
        self.gate: asyncio.Event | None = None  # when set: calls wait for it
        self.refuses: dict[str, str] = {}  # endpoint -> why it cannot honour any request
        self.requests: list[ProviderRequest] = []  # what each call was asked

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        return self.refuses.get(target.endpoint)

    def endpoint_for(self, target: Target) -> str:
        if target.endpoint in self.broken:
            raise ValueError("no such host")
        return target.endpoint

    async def complete(
        self, session: ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        self.called.append(target.endpoint)
        self.requests.append(request)
        self.keys.append(target.api_key.reveal() if target.api_key is not None else None)
        self.max_tokens.append(cap_tokens(request.max_tokens, target.max_tokens))  # as sent
        if self.gate is not None:
            await self.gate.wait()
        self.clock.now += self.took
        outcome = self.script[target.endpoint].pop(0)
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome


class Limiter(RateLimiter):
    """Records what it is asked and told; every acquire waits `wait` (0: none)."""

    def __init__(self, clock: Clock, **limits: Any) -> None:
        super().__init__(**limits)
        self.clock = clock
        self.wait = 0.0
        self.late = 0.0  # clock time an acquire takes beyond the wait it reports (a slow loop)
        self.acquired: list[dict[str, Any]] = []
        self.deadlines: list[float | None] = []  # the deadline each acquire was given
        self.asked: list[dict[str, Any]] = []
        self.penalized: list[tuple[str, float]] = []
        self.charged: list[dict[str, Any]] = []

    def take_now(self, req: RateRequest) -> bool:
        """Room at once only when acquire would not wait (recorded as an acquire)."""
        if self.wait or self.late:
            return False
        self.deadlines.append(None)
        self.acquired.append(dataclasses.asdict(req))
        return True

    async def acquire(self, req: RateRequest, *, deadline: float | None = None) -> float:
        kw = dataclasses.asdict(req)
        self.deadlines.append(deadline)
        self.acquired.append(kw)
        start = self.clock.now
        if deadline is not None and start + self.wait > deadline:  # ends at the deadline
            self.clock.now = deadline
            raise RateLimitTimeout(
                f"model:{kw['model_id']}:tpm", start + self.wait - deadline, deadline - start
            )
        self.clock.now += self.wait + self.late  # the wait for capacity, on the clock
        return self.wait

    def has_capacity(self, req: RateRequest) -> bool:
        self.asked.append(dataclasses.asdict(req))
        return True

    def penalize(self, endpoint: str, seconds: float) -> None:
        self.penalized.append((endpoint, seconds))

    def charge(self, req: RateRequest, used: int) -> None:
        self.charged.append(  # the tokens beyond the estimate
            {
                "endpoint": req.endpoint,
                "model_id": req.model_id,
                "tenant": req.tenant,
                "tokens": used - req.tokens,
            }
        )


class RecordingLimit(AdaptiveLimit):
    """Records what each call's release tells the endpoint's adaptive limit."""

    def __init__(self, cap: int) -> None:
        super().__init__(cap=cap)
        self.released: list[tuple[bool, bool]] = []  # (ok, overloaded)
        self.latencies: list[float] = []

    def release(self, *, ok: bool, overloaded: bool = False, latency_s: float = 0.0) -> None:
        self.released.append((ok, overloaded))
        self.latencies.append(latency_s)
        super().release(ok=ok, overloaded=overloaded, latency_s=latency_s)


class RecordingLimits(ConcurrencyLimits):
    """One `RecordingLimit` for every endpoint."""

    def __init__(self, cap: int = 100) -> None:
        super().__init__(cap=cap)
        self.limit = RecordingLimit(cap)

    def get(self, key: str) -> AdaptiveLimit:
        return self.limit


class Observer:
    """Records attempts and events; a hold (`held`) for one of `ticks` reasons moves the
    clock on by that many seconds (time passing while the request waited)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ticks: dict[str, float] = {}
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
        if name == "held":
            self.clock.now += self.ticks.get(attrs["reason"], 0.0)


class Setup:
    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        sessions: SessionPool,
        max_attempts: int = 1,
        breaker: BreakerConfig | None = None,
        wait_when_open: bool = True,
        env: dict[str, str] | None = None,
        max_tokens_cap: int | None = None,
        limits: dict[str, Any] | None = None,
    ) -> None:
        self.clock = Clock()
        self.provider = Provider(self.clock)
        monkeypatch.setitem(adapters._instances, "fake", self.provider)
        self.retry_wait = 0.0  # clock time each wait between attempts takes
        self.delays: list[tuple[int, str]] = []  # (attempt, error) of each wait in a pass
        self.remaining: list[float] = []  # the time left each wait in a pass was given
        self.pass_delays: list[tuple[int, str]] = []  # (passes, error) of each wait between

        def next_delay(exc: ProviderError, attempt: int, *, remaining: float) -> float | None:
            self.delays.append((attempt, exc.message))
            self.remaining.append(remaining)
            self.clock.now += self.retry_wait
            return 0.001 if remaining > 0 else None  # as the real one: no time, no retry

        self.pass_wait = 0.0  # clock time each wait between passes takes
        self.pass_sleep = 0.001  # and how long it asks for (real seconds: the clock stands)

        def pass_delay(passes: int, error: ProviderError) -> float:
            self.pass_delays.append((passes, error.message))
            self.clock.now += self.pass_wait
            return self.pass_sleep

        monkeypatch.setattr(caller_module, "next_delay", next_delay)
        monkeypatch.setattr(caller_module, "pass_delay", pass_delay)
        self.metrics = Metrics()
        self.limiter = Limiter(self.clock, **(limits or {}))  # endpoint and tenant limits
        self.observer = Observer(self.clock)
        # the default when True: `Caller`'s own default is what the worker relies on
        defaults: dict[str, Any] = {} if wait_when_open else {"wait_when_open": False}
        self.caller = Caller(
            sessions,
            SecretStore(None, env=env or {}),
            self.metrics,
            max_attempts=max_attempts,
            breakers=BreakerBoard(breaker or BreakerConfig(), clock=self.clock),
            limiter=self.limiter,
            clock=self.clock,
            observer=self.observer,
            max_tokens_cap=max_tokens_cap,
            **defaults,
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
            rpm_limit=600,
            tpm_limit=90_000,
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
