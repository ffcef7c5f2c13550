"""Circuit breaker: opens on error rate (never on latency), cools down, probes, closes."""

from __future__ import annotations

import pytest

from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


Change = tuple[str, str, str, str]


def make(clock: FakeClock, **cfg: object) -> tuple[CircuitBreaker, list[Change]]:
    """A breaker; the error-rate tests leave the consecutive-failures trip off."""
    cfg.setdefault("consecutive_failures", 0)
    changes: list[Change] = []
    b = CircuitBreaker(
        "ep",
        BreakerConfig(**cfg),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda *a: changes.append(a),
    )
    return b, changes


def feed(b: CircuitBreaker, clock: FakeClock, outcomes: list[tuple[bool, float]]) -> None:
    for ok, latency in outcomes:
        assert b.allow()
        clock.now += 0.01
        b.record(ok, latency)


def ok(n: int, latency: float = 0.02) -> list[tuple[bool, float]]:
    return [(True, latency)] * n


def fail(n: int) -> list[tuple[bool, float]]:
    return [(False, 0.01)] * n


# -- failures in a row -----------------------------------------------------------------------


def test_failures_in_a_row_open_a_breaker_whose_window_is_full_of_successes() -> None:
    clock = FakeClock()
    b, changes = make(clock, consecutive_failures=10)
    feed(b, clock, ok(5000))  # minutes of good answers
    feed(b, clock, fail(9))
    assert b.state == "closed"  # 9 of 5009: far from the 50% rate
    feed(b, clock, fail(1))
    assert b.state == "open" and not b.allow()
    assert changes == [("ep", "closed", "open", "consecutive_failures")]
    assert "10 failures in a row" in b.detail


def test_a_success_between_failures_starts_the_count_again() -> None:
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=10)
    feed(b, clock, ok(100))
    for _ in range(20):
        feed(b, clock, fail(9) + ok(10))  # one short of the trip each time, under 50% errors
    assert b.state == "closed"


def test_throttling_is_no_run_of_failures() -> None:
    """429s and 529s from an endpoint over its concurrency are the endpoint alive and asking
    to slow down (adaptive concurrency answers them), not a dead one."""
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=10)
    feed(b, clock, ok(5000))
    for _ in range(50):
        assert b.allow()
        clock.now += 0.01
        b.record(False, 0.01, throttled=True)
    assert b.state == "closed"
    feed(b, clock, fail(10))  # then the endpoint dies
    assert b.state == "open"


def test_consecutive_failures_zero_is_off_and_the_default_is_ten() -> None:
    clock = FakeClock()
    b, _ = make(clock, consecutive_failures=0)
    feed(b, clock, ok(5000) + fail(500))
    assert b.state == "closed"
    assert BreakerConfig().consecutive_failures == 10
    with pytest.raises(ValueError, match="consecutive_failures"):
        BreakerConfig(consecutive_failures=-1)


# -- error rate ------------------------------------------------------------------------------


def test_error_rate_opens_only_after_min_requests() -> None:
    clock = FakeClock()
    b, changes = make(clock)
    feed(b, clock, fail(19))
    assert b.state == "closed"  # 100% errors, but only 19 requests
    feed(b, clock, fail(1))
    assert b.state == "open"
    assert not b.allow()
    assert changes == [("ep", "closed", "open", "error_rate")]
    assert "20/20 failed" in b.detail


def test_error_rate_below_threshold_stays_closed() -> None:
    clock = FakeClock()
    b, _ = make(clock)
    feed(b, clock, (ok(3) + fail(2)) * 20)  # 40% errors over 100 requests
    assert b.state == "closed"
    feed(b, clock, fail(15))  # now 55/115 = 48%
    assert b.state == "closed"
    feed(b, clock, fail(5))  # 60/120 = 50%
    assert b.state == "open"


def test_old_errors_leave_the_window() -> None:
    clock = FakeClock()
    b, _ = make(clock, window_s=30.0)
    feed(b, clock, fail(15))
    clock.now += 31
    feed(b, clock, ok(10) + fail(9))  # 9/19 in the window; the 15 old ones are gone
    assert b.state == "closed"
    assert b.stats().requests == 19


# -- cooldown, probes ------------------------------------------------------------------------


def test_cooldown_then_probes_then_closed() -> None:
    clock = FakeClock()
    b, changes = make(clock)
    feed(b, clock, fail(20))
    clock.now += 9.9
    assert b.state == "open" and not b.allow()
    clock.now += 0.2
    assert b.state == "half_open"
    assert [b.allow() for _ in range(4)] == [True, True, True, False]  # 3 probes
    for _ in range(3):
        b.record(True, 0.02)
    assert b.state == "closed"
    assert [c[3] for c in changes] == ["error_rate", "cooldown", "probes_succeeded"]
    assert b.allow()
    assert [c[2:] for c in changes] == [
        ("open", "error_rate"),
        ("half_open", "cooldown"),
        ("closed", "probes_succeeded"),
    ]
    feed(b, clock, fail(19))  # the window was reset: the old failures are forgotten
    assert b.state == "closed"


def test_a_failed_probe_opens_again_for_another_cooldown() -> None:
    clock = FakeClock()
    b, changes = make(clock)
    feed(b, clock, fail(20))
    clock.now += 10
    assert b.allow()
    b.record(True, 0.02)
    assert b.allow()
    b.record(False, 0.5)
    assert b.state == "open" and not b.allow()
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()
    assert [c[3] for c in changes] == ["error_rate", "cooldown", "probe_failed", "cooldown"]
    assert b.opened == 2


def test_lost_probes_are_handed_out_again() -> None:
    clock = FakeClock()
    b, _ = make(clock)
    feed(b, clock, fail(20))
    clock.now += 10
    assert [b.allow() for _ in range(4)] == [True, True, True, False]  # never reported back
    clock.now += 5
    assert not b.allow()
    clock.now += 5
    assert b.allow()


def test_callback_errors_do_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    def broken(*_: object) -> None:
        raise RuntimeError("metrics exporter down")

    b = CircuitBreaker("ep", clock=clock, on_change=broken)
    feed(b, clock, fail(10))
    assert b.state == "open"
    assert "on_change callback failed" in caplog.text


def test_board_shares_config_and_reports_states() -> None:
    clock = FakeClock()
    seen: list[Change] = []
    board = BreakerBoard(
        BreakerConfig(min_requests=2), clock=clock, on_change=lambda *a: seen.append(a)
    )
    assert board.get("a") is board.get("a")
    board.record("a", False, 0.1)
    board.record("a", False, 0.1)
    board.record("b", True, 0.1)
    assert board.states() == {"a": "open", "b": "closed"}
    assert board.is_open("a") and not board.is_open("b") and not board.is_open("never-seen")
    assert "never-seen" not in board.states()
    clock.now += 10
    assert not board.is_open("a")  # half_open now; checking took no probe
    assert [board.allow("a") for _ in range(4)] == [True, True, True, False]
    assert seen[0] == ("a", "closed", "open", "error_rate")


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        BreakerConfig(error_threshold=0)
    with pytest.raises(ValueError):
        BreakerConfig(probes=0)


def test_slow_answers_never_open_the_breaker() -> None:
    clock = FakeClock()
    b, changes = make(clock, min_baseline_s=0.0)
    feed(b, clock, ok(100, 0.020) + ok(200, 5.0))  # slow for good, but every call answered
    assert b.state == "closed" and b.allow() and changes == []
    assert b.latency.is_demoted  # the latency judge noticed: the router routes around it


def test_probe_answers_from_before_the_trip_are_not_probes() -> None:
    clock = FakeClock()
    b, changes = make(clock)
    feed(b, clock, fail(20))
    clock.now += b.config.cooldown_s + 0.01
    assert b.state == "half_open"
    for _ in range(b.config.probes):  # calls let through before the trip answer now
        b.record(True, b.config.cooldown_s + 1.0)
    assert b.state == "half_open"
    for _ in range(b.config.probes):
        assert b.allow()
        clock.now += 0.02
        b.record(True, 0.02)
    assert b.state == "closed"
    assert [c[3] for c in changes] == ["error_rate", "cooldown", "probes_succeeded"]
