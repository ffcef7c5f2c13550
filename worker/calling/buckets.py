"""One GCRA token bucket (virtual scheduling).

One float, the theoretical arrival time `tat`, replaces "tokens + last refill". A request of
`n` tokens may go at `max(tat, now) + min(n, burst)/rate - burst/rate`, and going moves `tat`
on by `n/rate`. So an oversized request (n > burst) goes when the bucket is full and leaves it
in debt: the long-run rate holds and nothing waits forever. `pause` (a provider's 429 with
Retry-After) holds the bucket: nothing goes before the pause ends, and it restarts empty.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]

Clock = Callable[[], float]


class TokenBucket:
    """A GCRA token bucket. `rate_per_s=math.inf` makes a bucket that only pauses."""

    __slots__ = ("_a", "_b", "_clock", "_holes", "_interval", "_paused_until", "_tat",
                 "_tau", "burst", "name", "rate")  # fmt: skip

    def __init__(
        self, rate_per_s: float, burst: float, clock: Clock = time.monotonic, *, name: str = ""
    ) -> None:
        self._clock = clock
        self.name = name
        self._tat = -math.inf
        self._paused_until = -math.inf
        # Places handed out are kept as u, meaning the time a*u + b: pauses move them back
        # (b grows), rate changes stretch the queue around "now" (a and b change).
        self._a = 1.0
        self._b = 0.0
        # Reservations given back from the middle of the queue leave holes: (place, size),
        # sorted; every place after a hole comes up earlier by its size.
        self._holes: list[tuple[float, float]] = []
        self.rate = self.burst = self._interval = self._tau = 0.0
        self.set_rate(rate_per_s, burst)

    def set_rate(self, rate_per_s: float, burst: float) -> None:
        """Change the rate; requests already queued are rescheduled at the new rate."""
        if not rate_per_s > 0 or not burst > 0:
            raise ValueError(f"rate and burst must be > 0, got {rate_per_s}, {burst}")
        old = self._interval
        new = 1.0 / rate_per_s  # 0.0 for inf
        if old and new and new != old:
            k, c = new / old, self._clock()
            if self._tat > c:
                self._tat = c + (self._tat - c) * k
            self._a *= k
            self._b = k * (self._b - c) + c
        self.rate = rate_per_s
        self.burst = burst
        self._interval = new
        self._tau = burst * new if new else 0.0

    def earliest(self, n: float, now: float) -> float:
        """When `n` tokens could be taken (may be <= now: at once)."""
        if self._interval:
            tat = self._tat if self._tat > now else now
            t = tat + (n if n < self.burst else self.burst) * self._interval - self._tau
        else:
            t = now
        return t if t > self._paused_until else self._paused_until

    def reserve(self, n: float, at: float) -> float:
        """Take `n` tokens at time `at` (>= earliest). Returns the mark `refund` needs."""
        if self._interval:
            self._tat = (self._tat if self._tat > at else at) + n * self._interval
        return self.place(self._tat)

    def place(self, at: float) -> float:
        """A time as a place in the queue, which `when` maps to its current time."""
        u = (at - self._b) / self._a
        for hole, size in self._holes:  # the inverse of `when`
            if hole > u:
                break
            u += size
        return u

    def when(self, place: float) -> float:
        """When a place handed out earlier comes up now (pauses, rate changes and the
        reservations given back before it applied)."""
        u = place
        for hole, size in self._holes:  # a place at or after a hole moves up by its size
            if hole > place:
                break
            u -= size
        t = self._a * u + self._b
        return t if t > self._paused_until else self._paused_until

    def refund(self, n: float, mark: float) -> None:
        """Give back a reservation never used (`mark`: where it ended). Later reservations
        move up into its time, so a queue whose waiters are cancelled (their partitions were
        revoked) does not keep the next ones waiting for requests that will never go."""
        if not self._interval:
            return
        give = n * self._interval
        if self._tat > self.when(mark) + 1e-9:  # others are queued behind it
            bisect.insort(self._holes, (mark, give / self._a))
        self._tat -= give
        self._fold(self._clock())

    def _fold(self, now: float) -> None:
        """Holes whose time has passed apply to every place still waiting: fold them into
        the mapping (places before them are due anyway)."""
        while self._holes and self.when(self._holes[0][0]) <= now:
            _hole, size = self._holes.pop(0)
            self._b -= self._a * size

    def try_take(self, n: float = 1.0) -> float:
        """0.0 if `n` tokens were taken, else the seconds to wait before they could be."""
        now = self._clock()
        t = self.earliest(n, now)
        if t <= now:
            self.reserve(n, now)
            return 0.0
        return t - now

    def penalize(self, seconds: float) -> None:
        """Pause for `seconds` (a 429's Retry-After); the bucket restarts empty afterwards."""
        if seconds <= 0:
            return
        now = self._clock()
        until = now + seconds
        if until <= self._paused_until:
            return
        delta = until - max(now, self._paused_until)
        self._paused_until = until
        self._b += delta
        if self._interval:
            self._tat = max(self._tat, now + self._tau) + delta

    def idle(self, now: float) -> bool:
        """Full and not paused: forgetting it changes nothing."""
        return now >= self._paused_until and self._tat <= now
