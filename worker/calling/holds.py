"""Requests held instead of answered with an error: how many, for how long, and why.

This is a stream: the backlog is the buffer, and a late answer beats an error the user must
find and replay. A request is *held* while it waits, for one of three reasons:

- `circuit_open`: every candidate's breaker is open; it waits for a half-open probe;
- `retry_backoff`: a retryable failure; it waits before trying again (backoff, Retry-After);
- `rate_limit`: for rate-limit capacity (counted by the limiter, `RateLimiter.waiting`).

The worker pauses its partitions when it is full of held requests (and keeps polling), so a
sick endpoint slows intake instead of draining the backlog into error completions.

`Holds` keeps the counts and seconds behind `llm_worker_held_requests{reason}` and
`llm_worker_held_seconds_total{reason}`, and writes two log lines per *episode*: one when an
endpoint starts holding requests, one when it holds none any more. A request joins its
endpoint's episode at its first wait and leaves it when it ends (answered, failed or at its
deadline), so a request that goes back and forth between waiting and probing does not log
each time.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llm_worker.adapters.backoff import Backoff
from llm_worker.adapters.errors import ProviderError
from llm_worker.adapters.retry import MAX_RETRY_AFTER

__all__ = [
    "HOLD_REASONS",
    "PASS_BACKOFF_BASE_S",
    "PASS_BACKOFF_CAP_S",
    "Episode",
    "HoldStats",
    "Holds",
    "pass_delay",
]

log = logging.getLogger("llm_worker.holds")

PASS_BACKOFF_BASE_S = 0.5
"""The wait after a request's first pass over its candidates failed retryably; it doubles with
every failed pass..."""
PASS_BACKOFF_CAP_S = 5.0
"""...up to this, so a held request tries again at least this often. Once the failures have
opened the breakers, the request waits for their half-open probes instead."""
PASS_BACKOFF = Backoff(PASS_BACKOFF_BASE_S, PASS_BACKOFF_CAP_S, "equal")


def pass_delay(passes: int, error: ProviderError, *, rng: random.Random | None = None) -> float:
    """The wait before pass `passes` + 1, after `passes` failed passes ending in `error`:
    exponential with equal jitter (half the delay at least), never shorter than the provider's
    Retry-After (capped at `MAX_RETRY_AFTER`)."""
    delay = PASS_BACKOFF.delay(passes, rng)
    hint = error.retry_after
    if hint is not None and hint > delay:
        delay = min(hint, MAX_RETRY_AFTER)
    return delay


HOLD_REASONS = ("circuit_open", "retry_backoff", "rate_limit")


class Episode:
    """An endpoint holding requests, from the first one held to the last one let go."""

    __slots__ = ("active", "endpoint", "longest", "reason", "requests", "started")

    def __init__(self, endpoint: str, reason: str, started: float) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.started = started
        self.active = 0
        self.requests = 0
        self.longest = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldStats:
    """Requests held now and the seconds held so far (summed when each wait ends), for a
    breaker's half-open probe (`circuit_open`) and for a retry backoff; endpoints holding
    requests now (`episodes`)."""

    circuit_open: int
    circuit_open_s: float
    retry_backoff: int
    retry_backoff_s: float
    episodes: int


class Holds:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.waiting: dict[str, int] = {"circuit_open": 0, "retry_backoff": 0}
        """Requests waiting right now, by reason (rate-limit waits: the limiter's own)."""
        self.seconds: dict[str, float] = {"circuit_open": 0.0, "retry_backoff": 0.0}
        """Seconds waited, by reason, summed when each wait ends."""
        self._episodes: dict[str, Episode] = {}

    @property
    def total(self) -> int:
        return self.waiting["circuit_open"] + self.waiting["retry_backoff"]

    @contextlib.contextmanager
    def wait(self, reason: str) -> Iterator[None]:
        """Count the body as one request waiting for `reason`."""
        start = self._clock()
        self.waiting[reason] += 1
        try:
            yield
        finally:
            self.waiting[reason] -= 1
            self.seconds[reason] += self._clock() - start

    def join(self, endpoint: str, reason: str, why: str) -> Episode:
        """A request starts waiting on `endpoint`; the first one starts an episode (logged)."""
        ep = self._episodes.get(endpoint)
        if ep is None:
            ep = self._episodes[endpoint] = Episode(endpoint, reason, self._clock())
            log.warning(
                "endpoint %s: holding requests (%s: %s)",
                endpoint,
                reason,
                why,
                extra={"endpoint": endpoint, "hold_reason": reason},
            )
        ep.active += 1
        ep.requests += 1
        return ep

    def leave(self, ep: Episode, joined_at: float) -> None:
        """A request that joined `ep` at `joined_at` ended; the last one ends the episode."""
        now = self._clock()
        ep.longest = max(ep.longest, now - joined_at)
        ep.active -= 1
        if ep.active > 0 or self._episodes.get(ep.endpoint) is not ep:
            return
        del self._episodes[ep.endpoint]
        log.info(
            "endpoint %s: no longer holding requests: %d held over %.1f s, longest %.1f s",
            ep.endpoint,
            ep.requests,
            now - ep.started,
            ep.longest,
            extra={"endpoint": ep.endpoint, "hold_reason": ep.reason, "held": ep.requests},
        )

    def stats(self) -> HoldStats:
        return HoldStats(
            circuit_open=self.waiting["circuit_open"],
            circuit_open_s=self.seconds["circuit_open"],
            retry_backoff=self.waiting["retry_backoff"],
            retry_backoff_s=self.seconds["retry_backoff"],
            episodes=len(self._episodes),
        )
