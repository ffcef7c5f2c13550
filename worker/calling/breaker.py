"""Circuit breakers, one per endpoint: closed → open → half_open → closed.

A closed breaker opens when, over the rolling window (`window_s`):

- the error rate reaches `error_threshold` with at least `min_requests` results, or
- latency is anomalous: the mean of the last `recent` successes sits more than `z_threshold`
  standard deviations above the mean of the window's earlier successes (with at least
  `min_latency_samples` of them). The deviation has a floor, max(std, `std_floor_ratio` *
  mean, `std_floor_s`), so flat latency does not divide by zero and tiny jitter is not news.

After `cooldown_s` an open breaker turns half_open and lets `probes` requests through
(`allow()` hands out the slots). All probes succeeding closes it with a fresh window; any
failure opens it again. Probe slots that never report back are handed out again after
another `cooldown_s`.

The window is a ring of `slices` time slices holding counts and latency sums, with running
totals: constant memory whatever the traffic, O(1) amortized per `record`.

Record only outcomes that say something about the endpoint's health: a provider's 5xx,
timeout or connection error is a failure, a 400 for a bad prompt is not.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

import msgspec

__all__ = ["BreakerBoard", "BreakerConfig", "CircuitBreaker", "OnChange", "State"]

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
OnChange = Callable[[str, State, State, str], None]
"""`(endpoint_name, old_state, new_state, reason)`; reason is one of `error_rate`, `latency`,
`cooldown`, `probes_succeeded`, `probe_failed`, `reset`. `CircuitBreaker.detail` says more."""


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    window_s: float = 30.0
    slices: int = 30
    error_threshold: float = 0.5
    min_requests: int = 20
    recent: int = 5
    z_threshold: float = 2.5
    min_latency_samples: int = 30
    std_floor_ratio: float = 0.05
    std_floor_s: float = 0.001
    latency_min_ratio: float = 3.0  # and the recent mean at least this multiple of the baseline
    latency_min_increase_s: float = 0.5  # and at least this much slower: a saturated worker
    # adds tens to hundreds of milliseconds to every call without the provider being at fault,
    # and LLM answers vary by hundreds of milliseconds anyway
    cooldown_s: float = 10.0
    probes: int = 3

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.slices < 1 or self.recent < 1 or self.probes < 1:
            raise ValueError("window_s > 0, slices >= 1, recent >= 1 and probes >= 1 needed")
        if not 0 < self.error_threshold <= 1:
            raise ValueError("error_threshold must be in (0, 1]")


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        self.name = name
        self.config = c = config or BreakerConfig()
        self._clock = clock
        self.on_change = on_change
        self._state: State = "closed"
        self.detail = ""
        """Why the last transition happened, for logs."""
        self._opened_at = 0.0
        self._slow_above: float | None = None  # set by a latency trip
        self._probes_left = 0
        self._probe_ok = 0
        self._probe_issued_at = 0.0
        self.opened = 0  # times it opened
        # the ring of time slices
        self._slice_s = c.window_s / c.slices
        n = c.slices
        self._ids = [-1] * n  # absolute slice number held by each position
        self._count = [0] * n
        self._errors = [0] * n
        self._lat_n = [0] * n
        self._lat_sum = [0.0] * n
        self._lat_sq = [0.0] * n
        self._cur = -1
        self._total = self._total_errors = self._total_lat_n = 0
        self._total_lat_sum = self._total_lat_sq = 0.0
        # the last `recent` successes: (slice number, latency)
        self._recent: deque[tuple[int, float]] = deque(maxlen=c.recent)
        self._recent_sum = 0.0

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

    def record(self, success: bool, latency_s: float, *, judge_latency: bool = True) -> None:
        """The outcome of one request that `allow()` let through.

        `judge_latency=False`: the latency says more about the caller than the endpoint (the
        caller's event loop was late for much of the call); the outcome counts, the latency
        does not."""
        st = self._state
        if st == "closed":
            self._record_closed(success, latency_s, judge_latency)
        elif st == "half_open":
            if self._clock() - latency_s < self._opened_at:
                return  # started before the trip, not a probe: it says nothing new
            if not success:
                self._open("probe_failed", f"a probe failed after {latency_s:.3f}s")
                return
            if judge_latency and self._slow_above is not None and latency_s >= self._slow_above:
                self._open("probe_slow", f"a probe took {latency_s:.3f}s")
                return
            self._probe_ok += 1
            if self._probe_ok >= self.config.probes:
                self._reset_window()
                self._slow_above = None
                self._transition("closed", "probes_succeeded", f"{self._probe_ok} probes ok")
        # open: a straggler from before; it says nothing new

    def reset(self) -> None:
        """Close by hand (operator action) with a fresh window."""
        self._reset_window()
        if self._state != "closed":
            self._transition("closed", "reset", "reset by hand")

    def stats(self) -> dict[str, float | str]:
        self._advance(int(self._clock() / self._slice_s))
        return {
            "state": self.state,
            "requests": self._total,
            "errors": self._total_errors,
            "error_rate": self._total_errors / self._total if self._total else 0.0,
            "latency_mean_s": self._total_lat_sum / self._total_lat_n if self._total_lat_n else 0.0,
            "opened": self.opened,
        }

    # -- the window ------------------------------------------------------------------------
    def _advance(self, cur: int) -> None:
        if cur <= self._cur:
            return
        n = self.config.slices
        for sid in range(max(self._cur + 1, cur - n + 1), cur + 1):
            i = sid % n
            if self._ids[i] != sid:
                if self._count[i]:
                    self._total -= self._count[i]
                    self._total_errors -= self._errors[i]
                    self._total_lat_n -= self._lat_n[i]
                    self._total_lat_sum -= self._lat_sum[i]
                    self._total_lat_sq -= self._lat_sq[i]
                    self._count[i] = self._errors[i] = self._lat_n[i] = 0
                    self._lat_sum[i] = self._lat_sq[i] = 0.0
                self._ids[i] = sid
        self._cur = cur
        if not self._total_lat_n:  # drop float drift whenever the window empties
            self._total_lat_sum = self._total_lat_sq = 0.0

    def _record_closed(self, success: bool, latency_s: float, judge_latency: bool) -> None:
        c = self.config
        cur = int(self._clock() / self._slice_s)
        if cur != self._cur:
            self._advance(cur)
        i = cur % c.slices
        self._count[i] += 1
        self._total += 1
        if not success:
            self._errors[i] += 1
            self._total_errors += 1
            if (
                self._total >= c.min_requests
                and self._total_errors >= c.error_threshold * self._total
            ):
                rate = self._total_errors / self._total
                self._slow_above = None
                self._open(
                    "error_rate",
                    f"{self._total_errors}/{self._total} failed ({rate:.0%}) in {c.window_s:g}s",
                )
            return
        if not judge_latency:
            return
        sq = latency_s * latency_s
        self._lat_n[i] += 1
        self._lat_sum[i] += latency_s
        self._lat_sq[i] += sq
        self._total_lat_n += 1
        self._total_lat_sum += latency_s
        self._total_lat_sq += sq
        recent = self._recent
        if len(recent) == c.recent:
            self._recent_sum -= recent[0][1]
        recent.append((cur, latency_s))
        self._recent_sum += latency_s
        if len(recent) == c.recent and self._total_lat_n - c.recent >= c.min_latency_samples:
            self._check_latency()

    def _check_latency(self) -> None:
        c = self.config
        oldest = self._cur - c.slices + 1
        n, s, sq = self._total_lat_n, self._total_lat_sum, self._total_lat_sq
        for sid, lat in self._recent:  # the baseline is the window minus the recent samples
            if sid >= oldest:
                n -= 1
                s -= lat
                sq -= lat * lat
        if n < c.min_latency_samples:
            return
        mean = s / n
        var = sq / n - mean * mean
        std = math.sqrt(var) if var > 0 else 0.0
        floor = max(std, c.std_floor_ratio * mean, c.std_floor_s)
        recent_mean = self._recent_sum / c.recent
        z = (recent_mean - mean) / floor
        # both unusual (z-score) and material (a multiple of the baseline): event-loop jitter
        # on a fast endpoint can be several standard deviations without meaning anything
        if (
            z > c.z_threshold
            and recent_mean >= c.latency_min_ratio * mean
            and recent_mean - mean >= c.latency_min_increase_s
        ):
            # probes must come back faster than this before the breaker closes again
            self._slow_above = max(c.latency_min_ratio * mean, mean + c.latency_min_increase_s)
            self._open(
                "latency",
                f"recent mean {recent_mean * 1000:.1f}ms vs {mean * 1000:.1f}ms"
                f" ± {std * 1000:.1f}ms over {n} samples (z={z:.1f})",
            )

    def _reset_window(self) -> None:
        n = self.config.slices
        self._ids = [-1] * n
        self._count = [0] * n
        self._errors = [0] * n
        self._lat_n = [0] * n
        self._lat_sum = [0.0] * n
        self._lat_sq = [0.0] * n
        self._cur = -1
        self._total = self._total_errors = self._total_lat_n = 0
        self._total_lat_sum = self._total_lat_sq = 0.0
        self._recent.clear()
        self._recent_sum = 0.0

    # -- transitions -----------------------------------------------------------------------
    def _open(self, reason: str, detail: str) -> None:
        self._opened_at = self._clock()
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
    """The breakers of all endpoints, created on first use, sharing one config."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnChange | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
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
                endpoint_name, self.config, clock=self._clock, on_change=self._changed
            )
        return b

    def is_open(self, endpoint_name: str) -> bool:
        """True while requests are refused (open, cooldown not over). No probe is taken."""
        b = self._breakers.get(endpoint_name)
        return b is not None and b.state == "open"

    def allow(self, endpoint_name: str) -> bool:
        return self.get(endpoint_name).allow()

    def retry_at(self, endpoint_name: str) -> float:
        return self.get(endpoint_name).retry_at()

    def record(
        self, endpoint_name: str, success: bool, latency_s: float, *, judge_latency: bool = True
    ) -> None:
        self.get(endpoint_name).record(success, latency_s, judge_latency=judge_latency)

    def states(self) -> dict[str, State]:
        return {name: b.state for name, b in self._breakers.items()}
