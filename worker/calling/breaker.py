"""Circuit breakers, one per endpoint: closed → open → half_open → closed. Errors only.

A closed breaker opens when the error rate over the rolling window (`window_s`) reaches
`error_threshold` with at least `min_requests` results, or at `consecutive_failures` failures
in a row: an endpoint that dies after minutes of good answers has a window full of successes,
and at hundreds of calls a second the rate would take most of the window to reach the
threshold, while every request queued for it takes its error first. An open breaker refuses
calls: the caller holds the request (or, in `fail` mode, fails it with `circuit_open` after a
cooldown).

After `cooldown_s` an open breaker turns half_open and lets `probes` requests through
(`allow()` hands out the slots). All probes succeeding closes it with a fresh window; any
failure opens it again. Probe slots that never report back are handed out again after
another `cooldown_s`.

Latency never opens a breaker: each breaker carries a `LatencyJudge` (`latency.py`) that
*demotes* a slow endpoint, which only changes the router's preference. `BreakerConfig` holds
the settings of both.

Record only outcomes that say something about the endpoint's health: a provider's 5xx,
timeout or connection error is a failure, a 400 for a bad prompt is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .health_config import BreakerConfig
from .latency import LatencyJudge, LatencyStats, OnDemote
from .window import SlicedWindow

__all__ = [
    "BreakerBoard",
    "BreakerConfig",
    "BreakerStats",
    "CircuitBreaker",
    "OnChange",
    "OnDemote",
    "State",
]

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
OnChange = Callable[[str, State, State, str], None]
"""`(endpoint_name, old_state, new_state, reason)`; reason is one of `error_rate`,
`consecutive_failures`, `cooldown`,
`probes_succeeded`, `probe_failed`, `reset`. `CircuitBreaker.detail` says more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStats:
    """An endpoint's breaker: its state, the window's requests, errors and error rate, how
    often it opened, and its latency judgement."""

    state: State
    requests: int
    errors: int
    error_rate: float
    opened: int
    latency: LatencyStats


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
        on_latency: OnDemote | None = None,
    ) -> None:
        self.name = name
        self.config = c = config or BreakerConfig()
        self._clock = clock
        self.on_change = on_change
        self.latency = LatencyJudge(name, c, clock=clock, on_change=on_latency)
        """The endpoint's latency judge: demotes, never opens."""
        self._state: State = "closed"
        self.detail = ""
        """Why the last transition happened, for logs."""
        self._opened_at = 0.0
        self._probes_left = 0
        self._probe_ok = 0
        self._probe_issued_at = 0.0
        self.opened = 0  # times it opened
        self._failing = 0  # failures in a row while closed
        self._win = SlicedWindow(c.window_s, c.slices, 2)  # columns: results, errors

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.config.cooldown_s:
            self._half_open()
        return self._state

    def allow(self) -> bool:
        """May a request go to this endpoint now? In half_open this takes a probe slot."""
        st = self._state
        if st == "closed":
            return True
        now = self._clock()
        if st == "open":
            if now - self._opened_at < self.config.cooldown_s:
                return False
            self._half_open()
        if self._probes_left <= 0:
            if now - self._probe_issued_at < self.config.cooldown_s:
                return False
            self._probes_left = self.config.probes - self._probe_ok  # lost probes: again
        self._probes_left -= 1
        self._probe_issued_at = now
        return True

    def retry_at(self) -> float:
        """The clock time from which `allow()` may say yes again (now, if it would now)."""
        st = self.state  # an open breaker past its cooldown turns half_open here
        now = self._clock()
        if st == "open":
            return self._opened_at + self.config.cooldown_s
        if st == "half_open" and self._probes_left <= 0:
            return self._probe_issued_at + self.config.cooldown_s
        return now

    def record(
        self,
        success: bool,
        latency_s: float,
        *,
        judge_latency: bool = True,
        load: int | None = None,
        throttled: bool = False,
    ) -> None:
        """The outcome of one request that `allow()` let through.

        A success's latency goes to the latency judge (`judge_latency=False`: the caller's
        event loop was late for much of the call, so it says more about the caller; `load`:
        the caller's calls in flight to this endpoint when it started). Only the outcome
        counts here. `throttled`: a failure that says "slow down" (429, 529): it counts for
        the error rate, not for the failures in a row (the endpoint is alive; adaptive
        concurrency and `Retry-After` answer it)."""
        if success:
            self.latency.record(latency_s, load=load, judge=judge_latency)
        st = self._state
        if st == "closed":
            self._record_closed(success, throttled)
        elif st == "half_open":
            if self._clock() - latency_s < self._opened_at:
                return  # started before the trip, not a probe: it says nothing new
            if not success:
                self._open("probe_failed", f"a probe failed after {latency_s:.3f}s")
                return
            self._probe_ok += 1
            if self._probe_ok >= self.config.probes:
                self._win.clear()
                self._transition("closed", "probes_succeeded", f"{self._probe_ok} probes ok")
        # open: a straggler from before; it says nothing new

    def reset(self) -> None:
        """Close by hand (operator action) with a fresh window."""
        self._win.clear()
        if self._state != "closed":
            self._transition("closed", "reset", "reset by hand")

    def stats(self) -> BreakerStats:
        self._win.advance(self._clock())
        total, errors = self._win.totals
        return BreakerStats(
            state=self.state,
            requests=int(total),
            errors=int(errors),
            error_rate=errors / total if total else 0.0,
            opened=self.opened,
            latency=self.latency.stats(),
        )

    def _record_closed(self, success: bool, throttled: bool = False) -> None:
        c = self.config
        self._win.add(self._clock(), (1.0, 0.0 if success else 1.0))
        if success:
            self._failing = 0
            return
        if not throttled:
            self._failing += 1
        total, errors = self._win.totals
        if total >= c.min_requests and errors >= c.error_threshold * total:
            self._open(
                "error_rate",
                f"{int(errors)}/{int(total)} failed ({errors / total:.0%}) in {c.window_s:g}s",
            )
        elif c.consecutive_failures and self._failing >= c.consecutive_failures:
            self._open("consecutive_failures", f"{self._failing} failures in a row")

    # -- transitions -----------------------------------------------------------------------
    def _open(self, reason: str, detail: str) -> None:
        self._opened_at = self._clock()
        self._failing = 0
        self.opened += 1
        self._transition("open", reason, detail)

    def _half_open(self) -> None:
        self._probes_left = self.config.probes
        self._probe_ok = 0
        self._probe_issued_at = self._clock()
        self._transition("half_open", "cooldown", f"{self.config.cooldown_s:g}s cooldown over")

    def _transition(self, new: State, reason: str, detail: str) -> None:
        old, self._state, self.detail = self._state, new, detail
        if self.on_change is not None:
            try:
                self.on_change(self.name, old, new, reason)
            except Exception:
                log.exception("circuit breaker on_change callback failed")


class BreakerBoard:
    """The breakers (and latency judges) of all endpoints, created on first use, sharing one
    config."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
        on_latency: OnDemote | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self._on_latency = on_latency
        self._listeners: list[OnChange] = []
        self._breakers: dict[str, CircuitBreaker] = {}

    def subscribe(self, listener: OnChange) -> None:
        """Also call `listener` on every state change (after the board's own `on_change`)."""
        self._listeners.append(listener)

    def _changed(self, name: str, old: State, new: State, reason: str) -> None:
        if self._on_change is not None:
            self._on_change(name, old, new, reason)
        for listener in self._listeners:
            listener(name, old, new, reason)

    def get(self, endpoint_name: str) -> CircuitBreaker:
        b = self._breakers.get(endpoint_name)
        if b is None:
            b = self._breakers[endpoint_name] = CircuitBreaker(
                endpoint_name,
                self.config,
                clock=self._clock,
                on_change=self._changed,
                on_latency=self._on_latency,
            )
        return b

    def is_open(self, endpoint_name: str) -> bool:
        """True while requests are refused (open, cooldown not over). No probe is taken."""
        b = self._breakers.get(endpoint_name)
        return b is not None and b.state == "open"

    def demoted(self, endpoint_name: str) -> bool:
        """True while the endpoint is demoted for latency and no probe slot is free; a False
        answer for a demoted endpoint hands out a probe slot (see `LatencyJudge.demoted`)."""
        b = self._breakers.get(endpoint_name)
        return b is not None and b.latency.is_demoted and b.latency.demoted()

    def allow(self, endpoint_name: str) -> bool:
        return self.get(endpoint_name).allow()

    def retry_at(self, endpoint_name: str) -> float:
        return self.get(endpoint_name).retry_at()

    def record(
        self,
        endpoint_name: str,
        success: bool,
        latency_s: float,
        *,
        judge_latency: bool = True,
        load: int | None = None,
        throttled: bool = False,
    ) -> None:
        self.get(endpoint_name).record(
            success, latency_s, judge_latency=judge_latency, load=load, throttled=throttled
        )

    def forget(self, keep: set[str]) -> int:
        """Drop the breakers of endpoints not in `keep` that are closed (an open one keeps
        protecting its endpoint until it closes); returns how many were dropped."""
        gone = [n for n, b in self._breakers.items() if n not in keep and b.state == "closed"]
        for name in gone:
            del self._breakers[name]
        return len(gone)

    def states(self) -> dict[str, State]:
        return {name: b.state for name, b in self._breakers.items()}

    def demotions(self) -> dict[str, bool]:
        """Every known endpoint: is it demoted for latency now?"""
        return {name: b.latency.is_demoted for name, b in self._breakers.items()}
