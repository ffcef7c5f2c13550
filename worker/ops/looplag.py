"""How late the event loop runs: time a stalled or overloaded loop adds to every await.

A provider call's measured latency includes the time its answer sat in the socket while the
loop was busy elsewhere (a burst of completions, a GC pause, another thread holding the
GIL). That time says nothing about the provider, yet all calls in flight during a stall
see it at once, which looks exactly like a latency anomaly to a circuit breaker.

`LoopLag` runs a timer every `interval_s` and adds up how late each tick fires. `mark()` is
that sum up to now, counting a tick that is overdue but has not fired yet up to this moment;
the difference of two marks is the time the loop was late between them (exactly, for the
ticks: no lateness from before the first mark is counted). The cost is one timer callback
per interval.

Subtracting it from a call's time is right when the loop was late to read an answer that
was already there, and an underestimate when the provider was still working meanwhile. A
stall never makes a provider look slow then, which a breaker needs, and so does routing: a
stall lands on the endpoint being called while the one not chosen keeps its older figure, so
raw times would hand the traffic to the slower endpoint after every stall.

`stalled_for()` is for another thread (the liveness check): how long since the loop last
ran a tick. A blocked loop cannot answer for itself, so that question is asked from outside.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["LoopLag"]


class LoopLag:
    def __init__(self, interval_s: float = 0.02) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.total = 0.0
        """Seconds the loop has run its timers late since `start()`, summed."""
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_tick = 0.0
        """Monotonic time of the last tick (0 before `start()`); written on the loop only."""

    def start(self) -> None:
        """Start ticking on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.last_tick = time.monotonic()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.last_tick = 0.0

    def stalled_for(self) -> float:
        """Seconds since the loop last ran a tick beyond its interval (0 when not ticking).
        Safe from any thread: it reads one float."""
        last = self.last_tick
        if not last:
            return 0.0
        return max(0.0, time.monotonic() - last - self.interval_s)

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        now = self.last_tick = time.monotonic()
        late = now - self._due
        if late > 0:
            self.total += late
        self._schedule()

    def mark(self) -> float:
        """Lateness so far, including the running lateness of an overdue tick."""
        late = time.monotonic() - self._due if self._handle is not None else 0.0
        return self.total + late if late > 0 else self.total

    def since(self, mark: float) -> float:
        """Seconds the loop was late since `mark()` returned `mark`."""
        return self.mark() - mark
