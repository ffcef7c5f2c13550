"""Backoff schedules: the one home of "wait longer after each failure, up to a cap".

    Backoff(base, cap, jitter).delay(attempt)   the wait after failure `attempt` (1-based)
    Backoff(base, cap).delays()                 the waits after failures 1, 2, 3, ... in turn

Failure `attempt` waits `base * 2**(attempt-1)`, never more than `cap`. Jitter spreads the
waits of many clients that failed together: "full" draws uniformly from [0, delay], "equal"
from [delay/2, delay], "none" waits exactly the delay. It lives in the lowest wing so every
user (the provider retry policy, the registry cache, the worker) can share it.

Each schedule's numbers stay beside its user: `adapters.retry` (provider retries),
`worker.calling.holds` (passes over the candidates), `registry.cache` (reconnects),
`worker.stream` (reaching the broker, a full produce queue, redelivery).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["none", "full", "equal"]

_MAX_EXPONENT = 62  # 2**62 * any sane base is far above any cap; avoids float overflow


@dataclass(frozen=True, slots=True)
class Backoff:
    """An exponential schedule from `base` seconds, doubling, limited to `cap`."""

    base: float
    cap: float
    jitter: Jitter = "none"

    def ceiling(self, attempt: int) -> float:
        """The delay after failure `attempt` before jitter, within [0, cap]."""
        cap = max(0.0, self.cap)
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(cap, max(0.0, self.base) * (2.0**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failure `attempt` (1-based; below 1 counts as 1), always within
        [0, cap]. `rng` draws the jitter (default: the `random` module)."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "none":
            return ceiling
        draw = (rng or random).random()
        if self.jitter == "equal":
            half = ceiling / 2.0
            delay = half + half * draw
        else:
            delay = ceiling * draw
        return min(max(delay, 0.0), max(0.0, self.cap))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits after failures 1, 2, 3, ... for a loop that retries until it succeeds."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt, rng)
