"""The one retry loop: try each candidate (primary, then fallbacks), and hold what fails.

Per request: the router orders the candidates by the row's (or the global) objective (an
endpoint demoted for latency goes behind faster ones, `latency.py`); an endpoint whose circuit
breaker is open is skipped; before every attempt the rate limiter waits until the endpoint, the
model and the tenant all have capacity (waiting, never dropping); each candidate gets up to
`max_attempts` tries on retryable errors, with backoff and jitter, honouring `Retry-After`.
Adapters never retry on their own.

The fault policy, for a stream, where a late answer beats an error: **only a terminal error
or the request's deadline makes an error.** A pass over the candidates that ends in retryable
failures (`rate_limited`, `overloaded`, `server_error`, `timeout`, `connection_error`) holds
the request (`holds.py`) and tries again after a wait that grows per pass (see
`pass_delay`), woken early when a breaker closes; once errors have opened the breakers, the
half-open probes decide when it goes. When every candidate's breaker is open the request waits
for the first half-open probe (`wait_when_open`, the default); in `fail` mode it waits at most
one cooldown, then ends with `circuit_open`. A candidate that failed terminally (400, 401, a
missing secret) is not tried again by that request, and when every candidate has, the request
ends at once. At the deadline the request ends with its last error, saying so. Waits for
capacity (rate limits, concurrency slots) move the deadline on, up to a final deadline, and a
request no rate limit could ever take fails at once (`capacity.py`).

A prompt's own deadline (`prompt_deadline`: its `deadline`, `ttl_ms` or the worker's default
TTL, on this clock) caps both: the request's deadline and its final deadline are never later,
so retries, backoff sleeps, holds, rate-limit waits, concurrency-slot waits and a call in
progress all end at it. A request that the prompt's deadline ended (not the worker's own
`request_deadline_s`, nor the capacity wait) fails with `deadline_exceeded` (`DeadlineExceeded`,
not retryable), the last provider error in its message; one whose prompt deadline had passed
before it began fails so at once, with no call.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from llm_worker.adapters.base import ProviderRequest, ProviderResult, StreamDelta
from llm_worker.adapters.errors import BadRequest, InvalidOutput, ProviderError, RateLimited
from llm_worker.adapters.retry import next_delay
from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.resolve import Candidate

from ..ops.looplag import LoopLag
from ..ops.metrics import Metrics
from .attempt import LAG_UNTRUSTED_SHARE, Attempts, DeadlineInCall, Prepared
from .breaker import BreakerBoard
from .capacity import (
    CAPACITY_WAIT_S,
    NoCapacity,
    capped,
    fitting,
    rate_request,
    rate_room,
    slot,
    tokens_for,
)
from .concurrency import AdaptiveLimit, ConcurrencyLimits
from .holds import PASS_BACKOFF_BASE_S, PASS_BACKOFF_CAP_S, Episode, Holds, pass_delay
from .observer import CallObserver
from .output import check_output
from .priority import NORMAL
from .ratelimit import RateLimiter, RateRequest
from .results import (
    CallFailed,
    CallResult,
    CircuitOpen,
    estimate_tokens,
    expired,
    past_prompt_deadline,
)
from .routing import Router, endpoint_key, health_key

__all__ = [
    "CAPACITY_WAIT_S",
    "LAG_UNTRUSTED_SHARE",
    "PASS_BACKOFF_BASE_S",
    "PASS_BACKOFF_CAP_S",
    "CallFailed",
    "CallObserver",
    "CallResult",
    "Caller",
    "CircuitOpen",
    "PassEnd",
    "StreamTap",
    "estimate_tokens",
    "pass_delay",
]


_MIN_NAP_S = 0.005  # never spin: a wait that is due now still yields for this long


class StreamTap(Protocol):
    """Where a streamed call's pieces go (`Caller.call(tap=...)`). Once `started` (a piece was
    passed on), a failure ends the request: no retry and no fallback, since a reader has seen
    part of this answer."""

    @property
    def started(self) -> bool: ...

    def on_delta(self, delta: StreamDelta) -> None: ...


def _prompt_bound(st: _Call, bound: float) -> bool:
    """Whether `bound` (the deadline a request reached) is its prompt's own deadline."""
    return st.prompt_deadline is not None and bound >= st.prompt_deadline


class PassEnd(enum.Enum):
    """Why a pass over the candidates ended without an answer."""

    RETRY = "retry"  # a call failed retryably
    CIRCUIT_OPEN = "circuit_open"  # no call was possible: every live candidate's breaker is open
    TERMINAL = "terminal"  # every candidate failed terminally


class _Failures:
    """What failed during one pass, by kind: the last retryable error, the first open circuit,
    the last terminal error."""

    __slots__ = ("circuit", "retry", "terminal")

    def __init__(self) -> None:
        self.retry: ProviderError | None = None
        self.circuit: ProviderError | None = None
        self.terminal: ProviderError | None = None

    def open(self, cand: Candidate) -> None:
        if self.circuit is None:
            self.circuit = CircuitOpen.of(cand)

    def last(self, before: ProviderError | None) -> ProviderError | None:
        """The error to report for the pass (`before`: that of the pass before, if none)."""
        return self.retry or self.circuit or self.terminal or before

    def end(self) -> PassEnd:
        if self.retry is not None:
            return PassEnd.RETRY
        if self.circuit is not None:
            return PassEnd.CIRCUIT_OPEN
        return PassEnd.TERMINAL


class _Call:
    """One request's way through the retry loop."""

    __slots__ = (
        "attempts",
        "dead",
        "deadline",
        "episode",
        "final",
        "held_s",
        "joined_at",
        "last",
        "last_call_error",
        "last_cand",
        "open_since",
        "passes",
        "priority",
        "prompt_deadline",
        "request",
        "tap",
        "tenant",
    )

    def __init__(
        self,
        request: ProviderRequest,
        tenant: str | None,
        deadline: float,
        final: float,
        tap: StreamTap | None = None,
        prompt_deadline: float | None = None,
        priority: int = NORMAL,
    ) -> None:
        self.request = request
        self.tap = tap
        self.prompt_deadline = prompt_deadline  # the prompt's own: `deadline_exceeded` past it
        self.tenant = tenant
        self.priority = priority  # where it waits for capacity (`priority.py`)
        self.deadline = deadline  # moved on by capacity waits, up to `final`
        self.final = final  # no wait runs past this
        self.attempts = 0
        self.passes = 0  # passes over the candidates that failed retryably
        self.last: ProviderError | None = None  # why the last pass failed
        self.last_call_error: ProviderError | None = None  # the last error a provider gave
        self.last_cand: Candidate | None = None
        self.dead: set[str] = set()  # health keys that failed terminally
        self.open_since: float | None = None  # fail mode: every candidate open since
        self.held_s = 0.0
        self.episode: Episode | None = None
        self.joined_at = 0.0


class Caller:
    def __init__(
        self,
        sessions: SessionPool,
        secrets: SecretStore,
        metrics: Metrics,
        *,
        max_attempts: int,
        router: Router | None = None,
        breakers: BreakerBoard | None = None,
        limiter: RateLimiter | None = None,
        loop_lag: LoopLag | None = None,
        wait_when_open: bool = True,
        concurrency: ConcurrencyLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
        max_tokens_cap: int | None = None,
        capacity_wait_s: float = CAPACITY_WAIT_S,
        output_retries: int = 1,
        stream_idle_ms: int = 30_000,
    ) -> None:
        self.observer = observer
        self.output_retries = output_retries
        """More answers asked for when one fails its output check (`calling.output`)."""
        self.max_tokens_cap = max_tokens_cap  # the most max_tokens any request asks; None: none
        self.capacity_wait_s = capacity_wait_s
        self._metrics = metrics
        self.concurrency = concurrency or ConcurrencyLimits(cap=1_000_000)
        self._max_attempts = max_attempts
        self.breakers = breakers if breakers is not None else BreakerBoard()
        self.router = router if router is not None else Router(breakers=self.breakers)
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.wait_when_open = wait_when_open
        """When every candidate's breaker is open: wait up to the deadline for the first
        half-open probe (True), or at most one cooldown and then fail with `circuit_open`."""
        self.holds = Holds(clock=clock)
        self._changed: asyncio.Event | None = None
        self._closes = 0  # breakers closed so far: wakes requests in backoff
        self.breakers.subscribe(self._on_circuit_change)
        self._clock = clock
        self._attempts = Attempts(
            sessions, secrets, metrics, self.router, self.breakers, loop_lag, clock, observer
        )
        self._attempts.stream_idle_ms = stream_idle_ms

    @property
    def held(self) -> int:
        """Requests held (waiting) right now: for a breaker, a retry backoff or rate-limit
        capacity. The consume loop pauses partitions when the worker is full of them."""
        return self.holds.total + self.limiter.waiting + self.concurrency.waiting

    def forget_metric_children(self) -> None:
        self._attempts.forget_children()

    @property
    def circuit_waiting(self) -> int:
        """Requests waiting for a breaker's half-open probe right now."""
        return self.holds.waiting["circuit_open"]

    # -- the loop over passes --------------------------------------------------------------
    async def call(
        self,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        *,
        deadline: float,
        tenant: str | None = None,
        tap: StreamTap | None = None,
        prompt_deadline: float | None = None,
        priority: int = NORMAL,
    ) -> CallResult:
        """The checked answer, or `CallFailed`. `tap`: stream it, each piece to the tap as it
        arrives; once a piece went out, nothing is tried again (not even for the output check).
        `prompt_deadline`: the prompt's own deadline (clock time), which caps `deadline` and
        every wait; past it, the request fails with `deadline_exceeded`. `priority` (a rank of
        `priority.py`): where it waits for capacity, higher goes first."""
        if prompt_deadline is not None:
            if self._clock() >= prompt_deadline:
                raise CallFailed(past_prompt_deadline(None, 0, 0.0), 0, None)
            deadline = min(deadline, prompt_deadline)
        request = capped(request, self.max_tokens_cap)
        attempts = 0
        for tries_left in range(self.output_retries, -1, -1):
            result = await self._answer(
                candidates, request, deadline, tenant, tap, prompt_deadline, priority
            )
            attempts += result.attempts
            value, problem = check_output(request, result.result)
            if problem is None:
                if value is None and attempts == result.attempts:  # the common case: as it is
                    return result
                return msgspec.structs.replace(result, attempts=attempts, json=value)
            self._metrics.invalid_outputs.labels(result.candidate.provider).inc()
            if tries_left == 0 or self._clock() >= deadline or (tap is not None and tap.started):
                cand = result.candidate
                error = InvalidOutput(
                    f"{problem} (after {self.output_retries + 1 - tries_left} answers)",
                    raw=result.result.text,
                    provider=cand.provider,
                    model=cand.upstream_model,
                )
                raise CallFailed(error, attempts, cand)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _answer(
        self,
        candidates: Sequence[Candidate],
        request: ProviderRequest,
        deadline: float,
        tenant: str | None,
        tap: StreamTap | None = None,
        prompt_deadline: float | None = None,
        priority: int = NORMAL,
    ) -> CallResult:
        """Passes over the candidates until one answers; `CallFailed` when none will."""
        final = deadline + self.capacity_wait_s
        if prompt_deadline is not None:
            final = min(final, prompt_deadline)
        st = _Call(request, tenant, deadline, final, tap, prompt_deadline, priority)
        try:
            while True:
                verdict = await self._pass(candidates, st)
                if isinstance(verdict, CallResult):
                    return verdict
                await self._between_passes(candidates, st, verdict)
        finally:
            if st.episode is not None:
                self.holds.leave(st.episode, st.joined_at)

    async def _between_passes(
        self, candidates: Sequence[Candidate], st: _Call, end: PassEnd
    ) -> None:
        """Hold the request after a failed pass; raises `CallFailed` when it ends instead: the
        pass failed terminally, the deadline passed, or (fail mode) the breakers stayed open."""
        last = st.last
        if last is None:
            raise CallFailed(BadRequest("no candidate to call"), st.attempts, None)
        if end is PassEnd.TERMINAL:
            raise CallFailed(last, st.attempts, st.last_cand)
        now = self._clock()
        if now >= st.deadline:
            raise CallFailed(self._expired(st), st.attempts, st.last_cand)
        if end is PassEnd.CIRCUIT_OPEN:
            await self._hold_for_circuit(candidates, st, self._open_until(st, now, last))
        else:
            st.passes += 1
            await self._hold_for_retry(st, now + pass_delay(st.passes, last))
        if self._clock() >= st.deadline:
            raise CallFailed(self._expired(st), st.attempts, st.last_cand)

    def _open_until(self, st: _Call, now: float, last: ProviderError) -> float:
        """How long a request whose candidates' breakers are all open waits for a half-open
        probe: up to its deadline, or in fail mode at most one cooldown since they all were
        open (then it ends with `last`)."""
        if self.wait_when_open:
            return st.deadline
        if st.open_since is None:
            st.open_since = now
        until = min(st.deadline, st.open_since + self.breakers.config.cooldown_s)
        if now >= until:
            raise CallFailed(last, st.attempts, st.last_cand)
        return until

    def _expired(self, st: _Call) -> ProviderError:
        """The error of a request that reached its deadline: `deadline_exceeded` when that is
        the prompt's own."""
        if _prompt_bound(st, st.deadline):
            return past_prompt_deadline(st.last_call_error or st.last, st.attempts, st.held_s)
        return expired(st.last_call_error, st.last, st.attempts, st.held_s)

    # -- holding ---------------------------------------------------------------------------
    def _join(self, st: _Call, endpoint: str, reason: str, why: str) -> None:
        if st.episode is None:
            st.episode = self.holds.join(endpoint, reason, why)
            st.joined_at = self._clock()

    async def _hold_for_circuit(
        self, candidates: Sequence[Candidate], st: _Call, until: float
    ) -> None:
        """Wait until a candidate's breaker may let a request through, a breaker changes
        state, or `until`."""
        b = self.breakers
        keys = [k for k in map(health_key, candidates) if k not in st.dead]
        soonest, key = min((b.retry_at(k), k) for k in keys)
        self._join(st, key, "circuit_open", f"circuit open: {b.get(key).detail}")
        start = self._clock()
        with self.holds.wait("circuit_open"):
            await self._sleep(max(min(soonest, until), start + _MIN_NAP_S), any_change=True)
        self._held(st, "circuit_open", start, next(c for c in candidates if health_key(c) == key))

    async def _hold_for_retry(self, st: _Call, until: float) -> None:
        """Wait before the next pass, until `until`, the deadline, or a breaker closes."""
        last, cand = st.last, st.last_cand
        if st.passes >= 2 and last is not None and cand is not None:  # no log for a blip
            why = last.type if last.status is None else f"{last.type} {last.status}"
            self._join(st, health_key(cand), "retry_backoff", why)
        start = self._clock()
        with self.holds.wait("retry_backoff"):
            await self._sleep(min(until, st.deadline), any_change=False)
        self._held(st, "retry_backoff", start, cand)

    def _held(self, st: _Call, reason: str, start: float, cand: Candidate | None) -> None:
        """A hold ended: its time counts, and the message's trace shows it."""
        waited = self._clock() - start
        st.held_s += waited
        if self.observer is not None and cand is not None:
            self.observer.event("held", cand, reason=reason, wait_s=round(waited, 6))

    async def _sleep(self, until: float, *, any_change: bool) -> None:
        """Sleep until `until` (clock time) or a breaker changes state (`any_change`) or
        closes (otherwise)."""
        closes = self._closes
        while True:
            left = until - self._clock()
            if left <= 0:
                return
            changed = self._changed
            if changed is None:
                changed = self._changed = asyncio.Event()
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                return
            if any_change or self._closes != closes:
                return

    def _on_circuit_change(self, name: str, old: str, new: str, reason: str) -> None:
        if new == "closed":
            self._closes += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()  # wake every waiter; each looks at the breakers again

    # -- one pass over the candidates ------------------------------------------------------
    def _limited(self, request: ProviderRequest, tenant: str | None) -> Callable[[Candidate], bool]:
        """`limited(c)`: c's rate limits have no room for this request right now."""

        def limited(c: Candidate) -> bool:
            tokens = tokens_for(request, c, self.max_tokens_cap)
            return not self.limiter.has_capacity(rate_request(c, tenant, tokens))

        return limited

    def _queued(self, c: Candidate) -> float:
        """Calls ahead of a new one at c, in rounds of its concurrency limit (0: a slot is
        free): the `latency` objective adds that wait to the endpoint's latency."""
        lim = self.concurrency.by_endpoint.get(health_key(c))
        if lim is None or (lim.in_use < lim.slots and not lim.waiting):
            return 0.0
        return (lim.waiting + 1) / lim.slots

    async def _pass(self, candidates: Sequence[Candidate], st: _Call) -> CallResult | PassEnd:
        """One pass over the live candidates, in the router's order: a result, or why the pass
        failed (`st.last` is then the error to report)."""
        live = [c for c in candidates if health_key(c) not in st.dead] if st.dead else candidates
        objective = live[0].row.routing_objective if live else None
        limited = self._limited(st.request, st.tenant) if len(live) > 1 else None
        failed = _Failures()
        for cand in self.router.order(live, objective, limited, self._queued):
            health = health_key(cand)
            if not self.breakers.allow(health):
                failed.open(cand)
                self._metrics.provider_calls.labels(
                    cand.provider, cand.endpoint_name, "circuit_open"
                ).inc()
                if self.observer is not None:
                    self.observer.event("circuit_open", cand)
                continue
            st.last_cand = cand
            try:  # a candidate that cannot be called, or whose limits the request can't fit
                prepared = self._attempts.prepare(cand, st.request)
                ask = fitting(
                    self.limiter, cand, st.request, st.tenant, self.max_tokens_cap, st.priority
                )
            except ProviderError as exc:
                failed.terminal = st.last_call_error = exc
                st.dead.add(health)
                continue
            result = await self._tries(cand, health, prepared, ask, st, failed)
            if result is not None:
                return result
        st.last = failed.last(st.last)
        return failed.end()

    async def _tries(
        self,
        cand: Candidate,
        health: str,
        prepared: Prepared,
        ask: RateRequest,
        st: _Call,
        failed: _Failures,
    ) -> CallResult | None:
        """Up to `max_attempts` calls at `cand`: its result, or None (`failed` says why)."""
        for attempt in range(1, self._max_attempts + 1):
            slots = await self._capacity(cand, health, ask, st, failed)
            if slots is None:  # its breaker opened while the request queued for a slot
                failed.open(cand)
                return None
            remaining = st.deadline - self._clock()
            outcome = await self._attempt(cand, health, prepared, slots, remaining, attempt, st)
            if not isinstance(outcome, ProviderError):
                return self._answered(cand, outcome, ask, st)
            if st.tap is not None and st.tap.started:  # a reader saw part of it: it ends here
                raise CallFailed(outcome, st.attempts, cand)
            if not await self._after_error(cand, health, outcome, attempt, st, failed):
                return None
        return None

    async def _capacity(
        self, cand: Candidate, health: str, ask: RateRequest, st: _Call, failed: _Failures
    ) -> AdaptiveLimit | None:
        """Wait for room in `cand`'s rate limits, then for a concurrency slot; both move the
        deadline on, up to the final one. The slot taken, or None (none taken) when `cand`'s
        breaker opened meanwhile."""
        # room now, the common case, is taken without a coroutine
        rated = self.limiter.take_now(ask)
        if rated and st.deadline > self._clock():
            slots = self.concurrency.get(health)
            if slots.try_acquire():
                return slots
        try:
            if not rated:
                waited = await rate_room(self.limiter, ask, st.final)
                st.deadline = min(st.deadline + waited, st.final)
                if self.observer is not None and waited > 0:
                    self.observer.event("ratelimit_wait", cand, wait_s=waited)
            if st.deadline <= self._clock():
                st.last = failed.last(st.last)
                raise CallFailed(self._expired(st), st.attempts, st.last_cand)
            slots = self.concurrency.get(health)
            waited = await slot(slots, cand, st.final, self._clock, st.priority)
        except NoCapacity as ended:
            if _prompt_bound(st, st.final):  # the prompt's deadline ended the wait
                why = st.last_call_error or ended.error(
                    ended.why, provider=cand.provider, model=cand.upstream_model
                )
                err = past_prompt_deadline(why, st.attempts, st.held_s)
                raise CallFailed(err, st.attempts, cand) from None
            raise ended.failed(cand, st.attempts, st.held_s) from None
        st.deadline = min(st.deadline + waited, st.final)  # held, not failed
        if waited and self.breakers.is_open(health):
            slots.release(ok=False)
            return None
        return slots

    async def _attempt(
        self,
        cand: Candidate,
        health: str,
        prepared: Prepared,
        slots: AdaptiveLimit,
        remaining: float,
        attempt: int,
        st: _Call,
    ) -> tuple[ProviderResult, float] | ProviderError:
        """One call holding `slots`, released as the call ended. Raises `CallFailed` when the
        deadline ended the call."""
        retry_of = st.last_call_error if st.attempts else None
        st.attempts += 1
        try:
            outcome = await self._attempts.call(
                cand,
                health,
                prepared,
                st.request,
                remaining,
                attempt,
                retry_of,
                st.tap.on_delta if st.tap is not None else None,
            )
        except DeadlineInCall as ended:  # what the provider said before, if anything
            slots.release(ok=False, overloaded=True)
            if _prompt_bound(st, st.deadline):
                last = st.last_call_error or ended.error
                err: ProviderError = past_prompt_deadline(last, st.attempts, st.held_s)
            else:
                err = self._expired(st) if st.last_call_error else ended.error
            raise CallFailed(err, st.attempts, cand) from None
        except BaseException:
            slots.release(ok=False)
            raise
        if isinstance(outcome, ProviderError):
            slots.release(ok=False, overloaded=outcome.retryable)
        else:
            slots.release(ok=True, latency_s=outcome[1])
        return outcome

    def _answered(
        self, cand: Candidate, outcome: tuple[ProviderResult, float], ask: RateRequest, st: _Call
    ) -> CallResult:
        """The result; tokens used beyond those `ask` reserved are charged to the limits."""
        result, elapsed = outcome
        used = result.input_tokens + result.output_tokens
        if used > ask.tokens:
            self.limiter.charge(ask, used)
        return CallResult(
            result=result, candidate=cand, attempts=st.attempts, latency_ms=elapsed * 1000
        )

    async def _after_error(
        self,
        cand: Candidate,
        health: str,
        err: ProviderError,
        attempt: int,
        st: _Call,
        failed: _Failures,
    ) -> bool:
        """A call at `cand` failed with `err`: True after the backoff when `cand` gets another
        attempt, False when the pass moves on."""
        st.last_call_error = err
        if isinstance(err, RateLimited) and err.retry_after:
            self.limiter.penalize(endpoint_key(cand), err.retry_after)
        if not err.retryable:
            failed.terminal = err
            st.dead.add(health)
            return False
        failed.retry = err
        if attempt == self._max_attempts or not self.breakers.allow(health):
            return False  # used up, or this endpoint just tripped its breaker: move on
        delay = next_delay(err, attempt, remaining=st.deadline - self._clock())
        if delay is None:
            return False
        start = self._clock()
        with self.holds.wait("retry_backoff"):
            await asyncio.sleep(delay)
        self._held(st, "retry_backoff", start, cand)
        return True
