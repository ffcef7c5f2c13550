"""The retry policy as small pure functions; the retry loop itself lives in the worker.

    should_retry(exc)                 is another attempt worth making at all?
    parse_retry_after(headers)        the provider's own hint (retry-after-ms, retry-after)
    PROVIDER_RETRY                    the backoff schedule between attempts (`adapters.backoff`)
    next_delay(exc, attempt, ...)     the delay before the next attempt, or None to stop

`attempt` counts the attempts made so far: after the first failed call it is 1.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

from .backoff import Backoff
from .errors import ProviderError

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_CAP",
    "MAX_RETRY_AFTER",
    "PROVIDER_RETRY",
    "next_delay",
    "parse_retry_after",
    "should_retry",
]

MAX_RETRY_AFTER = 60.0
"""Retry-After hints longer than this are capped to it (seconds)."""

DEFAULT_BASE = 0.25
DEFAULT_CAP = 8.0
PROVIDER_RETRY = Backoff(DEFAULT_BASE, DEFAULT_CAP, "full")
"""Between attempts at one candidate without a Retry-After: 0.25 s doubling up to 8 s, full
jitter."""


def should_retry(exc: BaseException) -> bool:
    """True for provider errors classified retryable; False for everything else."""
    return isinstance(exc, ProviderError) and exc.retryable


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup; `name` is lower case. Cheap for CIMultiDict, exact for dicts."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def _seconds(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the provider asks us to wait, capped at `MAX_RETRY_AFTER`; None if absent/invalid.

    Checks `retry-after-ms` (milliseconds) first, then `retry-after` as seconds, then
    `retry-after` as an HTTP date (relative to `now`, a Unix timestamp, default the clock).
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        ms = _seconds(raw_ms)
        if ms is not None:
            return min(ms / 1000.0, MAX_RETRY_AFTER)
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    seconds = _seconds(raw)
    if seconds is None:
        try:
            parsed = email.utils.parsedate_tz(raw.strip())
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is None:
            return None
        try:
            when = float(email.utils.mktime_tz(parsed))
        except (OverflowError, ValueError):
            return None
        seconds = when - (time.time() if now is None else now)
        if seconds < 0:
            return None
    return min(seconds, MAX_RETRY_AFTER)


def next_delay(
    exc: BaseException,
    attempt: int,
    *,
    remaining: float,
    max_attempts: int | None = None,
    schedule: Backoff = PROVIDER_RETRY,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before the next attempt, or None when retrying is pointless.

    None when the error is terminal, `max_attempts` have been made, or the delay would not
    leave any of the `remaining` time budget (seconds) for the attempt itself. A Retry-After
    hint carried by the error wins over the `schedule`'s delay (`rng` draws its jitter).
    """
    if not should_retry(exc):
        return None
    if max_attempts is not None and attempt >= max_attempts:
        return None
    if not remaining > 0:
        return None
    hint = exc.retry_after if isinstance(exc, ProviderError) else None
    if hint is not None and math.isfinite(hint) and hint >= 0:
        delay = hint
    else:
        delay = schedule.delay(attempt, rng)
    if delay >= remaining:
        return None
    return delay
