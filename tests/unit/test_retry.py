"""The retry policy: classification, Retry-After parsing, backoff bounds, the next delay."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_worker.adapters.backoff import Backoff, Jitter
from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.retry import (
    MAX_RETRY_AFTER,
    PROVIDER_RETRY,
    next_delay,
    parse_retry_after,
    should_retry,
)
from llm_worker.worker.calling.holds import PASS_BACKOFF

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "exc",
    [
        RateLimited("x"),
        Overloaded("x"),
        ServerError("x"),
        ProviderTimeout("x"),
        ConnectionFailed("x"),
    ],
)
def test_retryable_errors_are_retried(exc: ProviderError) -> None:
    assert should_retry(exc)


@pytest.mark.parametrize(
    "exc",
    [
        BadRequest("x"),
        ContextLengthExceeded("x"),
        AuthError("x"),
        NotFound("x"),
        ProviderError("x"),
        ValueError("x"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ],
)
def test_terminal_and_foreign_errors_are_not_retried(exc: BaseException) -> None:
    assert not should_retry(exc)


def test_retry_after_ms_wins_over_seconds() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "7"}) == 1.5


def test_retry_after_seconds_and_fractions() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": " 0.5 "}) == 0.5
    assert parse_retry_after({"retry-after": "0"}) == 0.0


def test_retry_after_header_names_are_case_insensitive() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"RETRY-AFTER-MS": "250"}) == 0.25


def test_retry_after_http_date_is_relative_to_now() -> None:
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=NOW) == pytest.approx(12.0)


def test_retry_after_past_date_is_ignored() -> None:
    date = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=NOW) is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "soon"},
        {"retry-after": "-3"},
        {"retry-after": "nan"},
        {"retry-after": "inf"},
        {"retry-after": ""},
        {"retry-after-ms": "-1"},
        {"x-other": "5"},
    ],
)
def test_missing_negative_or_garbage_retry_after_is_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, now=NOW) is None


def test_garbage_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "abc", "retry-after": "2"}) == 2.0


def test_retry_after_is_capped() -> None:
    assert parse_retry_after({"retry-after": "3600"}) == MAX_RETRY_AFTER
    assert parse_retry_after({"retry-after-ms": "600000"}) == MAX_RETRY_AFTER
    date = email.utils.formatdate(NOW + 86_400, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=NOW) == MAX_RETRY_AFTER


def test_backoff_grows_exponentially_until_the_cap() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 1.0  # the top of the jitter range

    top = Top()
    delays = [PROVIDER_RETRY.delay(n, top) for n in range(1, 9)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_equal_jitter_keeps_at_least_half_the_delay() -> None:
    rng = random.Random(7)
    for _ in range(200):
        delay = Backoff(1.0, 100.0, "equal").delay(3, rng)
        assert 2.0 <= delay <= 4.0


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = [Backoff(1.0, 100.0, "full").delay(3, rng) for _ in range(500)]
    assert min(delays) < 0.5
    assert max(delays) > 3.5
    assert all(0.0 <= d <= 4.0 for d in delays)


@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    base=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    cap=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.sampled_from(["full", "equal", "none"]),
)
def test_backoff_never_exceeds_the_cap_and_is_never_negative(
    attempt: int, base: float, cap: float, seed: int, jitter: str
) -> None:
    mode: Jitter = "equal" if jitter == "equal" else "full" if jitter == "full" else "none"
    delay = Backoff(base, cap, mode).delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= cap


def test_next_delay_is_none_for_terminal_errors() -> None:
    assert next_delay(BadRequest("x"), 1, remaining=30.0) is None
    assert next_delay(ValueError("x"), 1, remaining=30.0) is None


def test_next_delay_honours_retry_after() -> None:
    exc = RateLimited("slow down", status=429, retry_after=2.5)
    assert next_delay(exc, 1, remaining=30.0) == 2.5


def test_next_delay_uses_backoff_without_retry_after() -> None:
    delay = next_delay(ServerError("x"), 2, remaining=30.0, schedule=Backoff(1.0, 8.0, "full"))
    assert delay is not None
    assert 0.0 <= delay <= 2.0


def test_next_delay_gives_up_when_the_budget_is_spent() -> None:
    assert next_delay(ServerError("x"), 1, remaining=0.0) is None
    assert next_delay(ServerError("x"), 1, remaining=-1.0) is None
    # a Retry-After longer than what is left of the deadline is pointless
    assert next_delay(RateLimited("x", retry_after=10.0), 1, remaining=5.0) is None


def test_next_delay_respects_max_attempts() -> None:
    assert next_delay(ServerError("x"), 3, remaining=30.0, max_attempts=3) is None
    assert next_delay(ServerError("x"), 2, remaining=30.0, max_attempts=3) is not None


def test_a_schedule_without_jitter_doubles_up_to_its_cap_as_the_retry_loops_did() -> None:
    """The broker wait, a full produce queue and redelivery used `delay = min(delay * 2, cap)`
    from their first delay: the schedule gives the same waits, exactly."""
    for first, cap in ((0.5, 5.0), (0.01, 0.5), (0.1, 5.0)):
        delays, old = Backoff(first, cap).delays(), first
        for _ in range(12):
            assert next(delays) == old
            old = min(old * 2, cap)


def test_the_named_schedules_keep_their_numbers() -> None:
    assert Backoff(0.25, 8.0, "full") == PROVIDER_RETRY
    assert Backoff(0.5, 5.0, "equal") == PASS_BACKOFF
