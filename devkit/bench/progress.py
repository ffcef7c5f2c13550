"""A progress bar on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "bar"]

WIDTH = 30


def bar(done: int, total: int, elapsed: float, label: str) -> str:
    """`label [#####.....]  done/total  rate/s  elapsed s` for `done` of `total`."""
    frac = min(1.0, done / total) if total > 0 else 1.0
    filled = round(frac * WIDTH)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (
        f"{label:<18} [{'#' * filled}{'.' * (WIDTH - filled)}] "
        f"{done:>9,}/{total:,}  {rate:>7,.0f}/s  {elapsed:>6.1f} s"
    )


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._out = stream if stream is not None else sys.stderr
        self._tty = self._out.isatty()
        self._quiet = quiet
        self._total = 0
        self._label = ""
        self._t0 = 0.0
        self._last = 0.0
        self._done = 0

    def start(self, total: int, label: str) -> None:
        self._total, self._label, self._done = total, label, 0
        self._t0 = self._last = time.monotonic()

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if self._quiet or now - self._last < (0.2 if self._tty else 10.0):
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        line = bar(self._done, self._total, now - self._t0, self._label)
        if self._tty:
            print(f"\r{line}", end="", file=self._out, flush=True)
        else:
            print(line, file=self._out, flush=True)

    def finish(self) -> None:
        if self._quiet:
            return
        self._draw(time.monotonic())
        if self._tty:
            print(file=self._out, flush=True)

    def note(self, text: str) -> None:
        if not self._quiet:
            print(text, file=self._out, flush=True)
