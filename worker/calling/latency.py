"""Latency judgement, one judge per endpoint: normal → demoted → (fast probes) → normal.

Latency never fails a request and never stops calls to an endpoint. A slow endpoint is
*demoted*: the router prefers candidates that are faster right now, and with nowhere else to
go the call still goes to the slow endpoint. Only errors open a circuit breaker (`breaker.py`).

**Anomalous** means the *median* of the last `recent` judged calls is, against the window's
other calls (the baseline, at least `min_latency_samples` of them): more than `z_threshold`
deviations above the baseline mean (the deviation floored at max(std, `std_floor_ratio` *
mean, `std_floor_s`)), at least `latency_min_ratio` times it, *and* at least
`latency_min_increase_s` slower. The median, not the mean: a saturated host stretches the
tail (a few calls wait for a CPU), a slow provider moves the middle.

**Comparable load.** Every call carries `load`: how many calls this worker had in flight to the
endpoint when it started, itself included. A call started above max(`load_ratio` * the
window's mean load, mean load + `load_slack`) measured the worker's own queueing (a backlog
taken on after a rebalance or at start-up) as much as the provider: it is left out, neither
judged nor part of the baseline. (After a lasting step up in load, the old baseline leaves the
window within `window_s` and the new load makes the next one.) This tells the two apart because
their order differs:
a provider that slows down at the usual load is caught by the first calls it slows, which
started before the calls in flight piled up (the load rises only after latency does); a worker
that takes on a backlog raises its load first, and its latency follows.

**A young baseline is no baseline**: nothing is judged until the window's calls span
`min_baseline_s`. A worker's first seconds (connections opening, calls in flight ramping up
with the host busy starting everything) would otherwise be the yardstick.

**Demotion** lasts at least `cooldown_s`, counted again from every slow call that started after
it began. Then `demoted()` hands out up to `probes` slots at a time (a slot not reported back
within a cooldown is handed out again) so the router sends a few calls back. `probes` calls in
a row that come back under `slow_above` (the threshold the trip set) restore the endpoint
with a fresh window: the baseline is learnt again before it can trip again, so one slow spell
causes one demotion, not a flapping series of them. Calls that started before the demotion
say nothing about it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .health_config import BreakerConfig
from .window import SlicedWindow

__all__ = ["LatencyJudge", "LatencyStats", "OnDemote"]

log = logging.getLogger(__name__)

OnDemote = Callable[[str, bool, str], None]
"""`(endpoint_name, demoted, detail)`: called when an endpoint is demoted or restored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyStats:
    """An endpoint's latency judgement: demoted now, demotions so far, and the window's calls
    (`samples`), their mean seconds and mean load (calls in flight when each started)."""

    demoted: bool
    demotions: int
    samples: int
    mean_s: float
    load_mean: float


class LatencyJudge:
    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: OnDemote | None = None,
    ) -> None:
        self.name = name
        self.config = c = config
        self._clock = clock
        self.on_change = on_change
        # columns: calls, latency sum, latency squares, load sum
        self._win = SlicedWindow(c.window_s, c.slices, 4)
        self._recent: deque[tuple[int, float]] = deque(maxlen=c.recent)  # (slice, latency)
        self.is_demoted = False
        self.slow_above: float | None = None
        """While demoted: a call this slow or slower is still slow."""
        self.demotions = 0
        self.detail = ""
        """Why the last change happened, for logs."""
        self._since = 0.0  # demoted at
        self._until = 0.0  # no probes before this
        self._fast = 0  # fast calls in a row since the last slow one
        self._probes_out = 0
        self._probe_at = 0.0
        self._fresh_at = 0.0  # when the current baseline began

    # -- the router's question ---------------------------------------------------------------
    def demoted(self) -> bool:
        """Should the router prefer other candidates now? After the cooldown a False answer
        hands out one of the `probes` slots: the caller is expected to call the endpoint."""
        if not self.is_demoted:
            return False
        now = self._clock()
        if now < self._until:
            return True
        c = self.config
        if self._probes_out < c.probes:
            self._probes_out += 1
        elif now - self._probe_at >= c.cooldown_s:
            self._probes_out = 1  # the probes handed out never reported back: again
        else:
            return True
        self._probe_at = now
        return False

    # -- results -----------------------------------------------------------------------------
    def record(self, latency_s: float, *, load: int | None = None, judge: bool = True) -> None:
        """The latency of one successful call. `judge=False`: the caller's event loop was late
        for much of the call (see `caller.LAG_UNTRUSTED_SHARE`); it says nothing here.
        `load=None`: unknown, counted as 1 and always comparable."""
        if not judge:
            return
        now = self._clock()
        if self.is_demoted:
            self._probe_result(now, latency_s)
            return
        c = self.config
        win = self._win
        win.advance(now)
        n, load_sum = win.totals[0], win.totals[3]
        comparable = True
        if load is not None and n:
            mean_load = load_sum / n
            comparable = load <= max(c.load_ratio * mean_load, mean_load + c.load_slack)
        if not comparable:
            return
        if not n:
            self._fresh_at = now  # a new baseline starts
        cur = win.add(now, (1.0, latency_s, latency_s * latency_s, 1.0 if load is None else load))
        recent = self._recent
        recent.append((cur, latency_s))
        if (
            len(recent) == c.recent
            and n + 1 - c.recent >= c.min_latency_samples
            and now - self._fresh_at >= c.min_baseline_s
        ):
            self._check(now)

    def _check(self, now: float) -> None:
        c = self.config
        oldest = self._win.oldest
        n, s, sq, _ = self._win.totals
        for sid, lat in self._recent:  # the baseline is the window minus the recent calls
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
        ordered = sorted(lat for _, lat in self._recent)
        median = ordered[len(ordered) // 2]
        z = (median - mean) / floor
        # unusual (z-score), material (a multiple of the baseline) and large in absolute terms:
        # event-loop jitter on a fast endpoint can be several deviations without meaning much
        if (
            z > c.z_threshold
            and median >= c.latency_min_ratio * mean
            and median - mean >= c.latency_min_increase_s
        ):
            self.slow_above = max(c.latency_min_ratio * mean, mean + c.latency_min_increase_s)
            self.is_demoted = True
            self.demotions += 1
            self._since = now
            self._until = now + c.cooldown_s
            self._fast = self._probes_out = 0
            self._notify(
                True,
                f"recent median {median * 1000:.1f}ms vs {mean * 1000:.1f}ms"
                f" ± {std * 1000:.1f}ms over {int(n)} calls (z={z:.1f})",
            )

    def _probe_result(self, now: float, latency_s: float) -> None:
        if now - latency_s < self._since:
            return  # started before the demotion: it says nothing new
        c = self.config
        if self._probes_out:
            self._probes_out -= 1
        assert self.slow_above is not None
        if latency_s >= self.slow_above:
            self._fast = 0
            self._until = max(self._until, now + c.cooldown_s)
            return
        self._fast += 1
        if self._fast >= c.probes and now >= self._until:
            threshold = self.slow_above
            self.is_demoted = False
            self.slow_above = None
            self._win.clear()
            self._recent.clear()
            self._notify(False, f"{self._fast} calls in a row under {threshold * 1000:.0f}ms")

    def _notify(self, demoted: bool, detail: str) -> None:
        self.detail = detail
        if self.on_change is not None:
            try:
                self.on_change(self.name, demoted, detail)
            except Exception:
                log.exception("latency on_change callback failed")

    def stats(self) -> LatencyStats:
        self._win.advance(self._clock())
        n, s, _, load_sum = self._win.totals
        return LatencyStats(
            demoted=self.is_demoted,
            demotions=self.demotions,
            samples=int(n),
            mean_s=s / n if n else 0.0,
            load_mean=load_sum / n if n else 0.0,
        )
