"""Is intake moving? The readiness check that sees a stuck worker.

A worker takes records while it has room; every request it holds ends by its final deadline
(`LLM_WORKER_REQUEST_DEADLINE_S` plus `LLM_WORKER_CAPACITY_WAIT_S`), which makes room. So a
worker that has taken no record for longer than that while work waits (records in flight, or
the group's lag on its partitions) is stuck, whatever its other checks say: `/readyz` reports
it (`checks.intake`), with how long intake has stood still and what waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["STALL_MARGIN_S", "Intake", "IntakeWatch"]

STALL_MARGIN_S = 60.0
"""The automatic stall time is the final deadline plus this: time for the last request held to
end, its outcome to be delivered and the next records to be fetched."""


class Intake(Protocol):
    """The consume loop (`stream.consumer.Worker`), as seen from here."""

    counters: dict[str, int]  # "consumed": the records taken so far

    @property
    def in_flight(self) -> int: ...


class IntakeWatch:
    """`check()`: the `/readyz` check of `intake`, whose `lag` says how many records wait on
    its partitions. `stall_s` 0 is automatic: the final deadline `final_s` plus a margin."""

    def __init__(
        self,
        stall_s: float,
        final_s: float,
        intake: Intake,
        lag: Callable[[], Mapping[Any, int]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_s = stall_s or final_s + STALL_MARGIN_S
        self._intake, self._lag = intake, lag
        self._clock = clock
        self._last = -1
        self._since = clock()

    def check(self) -> dict[str, Any]:
        """`{"ok", "state", "still_s"}`; not ok once nothing was taken for `stall_s` while
        work waits. Looked at on every `/readyz`: the count it last saw, and since when."""
        now = self._clock()
        taken, in_flight = self._intake.counters["consumed"], self._intake.in_flight
        behind = sum(self._lag().values())
        if taken != self._last or (in_flight <= 0 and behind <= 0):
            self._last, self._since = taken, now  # moving, or nothing to take
        still = now - self._since
        if still < self.stall_s:
            return {"ok": True, "state": "moving", "still_s": round(still, 1)}
        return {
            "ok": False,
            "state": f"stalled: no record taken for {still:.0f} s while {in_flight} are in"
            f" flight and {behind} behind (limit {self.stall_s:g} s)",
            "still_s": round(still, 1),
        }
