"""Sums over a rolling time window, kept in time slices: constant memory whatever the traffic,
O(1) amortized per `add`. The circuit breaker counts results and errors in one, the latency
judge counts, latency sums and loads in another."""

from __future__ import annotations

__all__ = ["SlicedWindow"]


class SlicedWindow:
    """`width` running sums over the last `window_s` seconds, in `slices` slices.

    Column 0 must be a count: when it drops to 0 every total is zeroed, so float drift from
    adding and subtracting never outlives an empty window."""

    def __init__(self, window_s: float, slices: int, width: int) -> None:
        if window_s <= 0 or slices < 1 or width < 1:
            raise ValueError("window_s > 0, slices >= 1 and width >= 1 needed")
        self.slice_s = window_s / slices
        self._n = slices
        self._width = width
        self._ids = [-1] * slices  # absolute slice number held by each position
        self._sums = [[0.0] * width for _ in range(slices)]
        self.totals = [0.0] * width
        """The sums over the window as of the last `advance` / `add`."""
        self.current = -1
        """The absolute number of the newest slice."""

    @property
    def oldest(self) -> int:
        """The absolute number of the oldest slice still in the window."""
        return self.current - self._n + 1

    def slice_of(self, now: float) -> int:
        return int(now / self.slice_s)

    def advance(self, now: float) -> int:
        """Drop the slices that left the window by `now`; returns the current slice number."""
        cur = int(now / self.slice_s)
        if cur <= self.current:
            return self.current
        n, totals = self._n, self.totals
        for sid in range(max(self.current + 1, cur - n + 1), cur + 1):
            i = sid % n
            if self._ids[i] != sid:
                row = self._sums[i]
                if row[0]:
                    for k in range(self._width):
                        totals[k] -= row[k]
                        row[k] = 0.0
                self._ids[i] = sid
        self.current = cur
        if not totals[0]:
            for k in range(self._width):
                totals[k] = 0.0
        return cur

    def add(self, now: float, values: tuple[float, ...]) -> int:
        """Add `values` (one per column) at `now`; returns the slice number they went to."""
        cur = int(now / self.slice_s)
        cur = self.advance(now) if cur > self.current else self.current
        row = self._sums[cur % self._n]
        totals = self.totals
        for k, v in enumerate(values):
            row[k] += v
            totals[k] += v
        return cur

    def clear(self) -> None:
        self._ids = [-1] * self._n
        self._sums = [[0.0] * self._width for _ in range(self._n)]
        self.totals = [0.0] * self._width
        self.current = -1
