"""Latency demotion with a fake clock: what trips it (and what must not), probes, restore."""

from __future__ import annotations

import random

import pytest

from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.latency import LatencyJudge


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


Change = tuple[str, bool, str]


def make(clock: FakeClock, **cfg: object) -> tuple[LatencyJudge, list[Change]]:
    """A judge; calls come 10 ms apart here, so the young-baseline rule is off unless asked."""
    changes: list[Change] = []
    judge = LatencyJudge(
        "ep",
        BreakerConfig(**{"min_baseline_s": 0.0, **cfg}),  # type: ignore[arg-type]
        clock=clock,
        on_change=lambda *a: changes.append(a),
    )
    return judge, changes


def calls(
    judge: LatencyJudge,
    clock: FakeClock,
    latencies: list[float],
    *,
    load: int | list[int] | None = None,
    judge_it: bool = True,
) -> None:
    """Answers arriving 10 ms apart, each having taken its latency."""
    loads = load if isinstance(load, list) else [load] * len(latencies)  # type: ignore[list-item]
    for lat, ld in zip(latencies, loads, strict=True):
        clock.now += 0.01
        judge.record(lat, load=ld, judge=judge_it)


def demote(judge: LatencyJudge, clock: FakeClock) -> None:
    calls(judge, clock, [0.020] * 100)
    calls(judge, clock, [2.0] * 5)
    assert judge.is_demoted


# -- what trips it ---------------------------------------------------------------------------
def test_a_jump_from_20ms_to_2s_demotes_within_the_recent_calls() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    rng = random.Random(7)
    calls(judge, clock, [rng.uniform(0.018, 0.022) for _ in range(40)])
    assert not judge.is_demoted
    slow = 0
    while not judge.is_demoted and slow < 5:
        calls(judge, clock, [2.0])
        slow += 1
    assert slow == 3  # the median of the last five moved: three slow calls
    assert [c[1] for c in changes] == [True]
    assert "recent median" in judge.detail and "z=" in judge.detail
    assert judge.demoted()  # the router is told to prefer others during the cooldown


def test_a_slow_tail_is_not_a_slow_provider() -> None:
    """A saturated host stretches a few calls (the incident: median ~50 ms, slowest ~1.1 s);
    two slow calls in every five do not move the median."""
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.050] * 100)
    for _ in range(40):
        calls(judge, clock, [0.050, 1.1, 0.050, 1.1, 0.050])
    assert changes == []


def test_normal_jitter_does_not_demote() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    rng = random.Random(11)
    calls(judge, clock, [0.02 * rng.lognormvariate(0, 0.25) for _ in range(5000)])
    assert changes == []


def test_flat_latency_needs_a_real_change() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.020] * 100)  # std 0: the floor (5% of the mean = 1 ms) applies
    calls(judge, clock, [0.021] * 5)  # +1 ms: z = 1
    calls(judge, clock, [0.030] * 5)  # z is large, but 1.5x the baseline is no anomaly
    calls(judge, clock, [0.080] * 5)  # 4x, but 60 ms slower could be our own busy loop
    calls(judge, clock, [0.400] * 5)  # 20x, still less than the 0.5 s increase asked for
    assert changes == []
    calls(judge, clock, [1.0] * 5)  # fifty times the baseline and 0.98 s slower
    assert [c[1] for c in changes] == [True]


def test_the_latency_increase_floor_is_configurable() -> None:
    clock = FakeClock()
    judge, changes = make(clock, latency_min_increase_s=0.05)
    calls(judge, clock, [0.020] * 100)
    calls(judge, clock, [0.100] * 5)  # 5x and 80 ms slower: enough for a fast endpoint
    assert [c[1] for c in changes] == [True]


def test_needs_enough_samples() -> None:
    clock = FakeClock()
    judge, _ = make(clock)
    calls(judge, clock, [0.02] * 20 + [2.0] * 5)  # only 20 baseline calls: no verdict
    assert not judge.is_demoted


def test_latency_measured_on_a_late_loop_is_not_judged() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.02] * 40)
    calls(judge, clock, [2.0] * 20, judge_it=False)
    assert changes == [] and judge.stats().samples == 40
    calls(judge, clock, [2.0] * 5)
    assert judge.is_demoted


def test_nothing_is_judged_on_a_baseline_younger_than_min_baseline_s() -> None:
    """A worker's first seconds: connections open, the load ramps up, the host is busy."""
    clock = FakeClock()
    judge, changes = make(clock, min_baseline_s=5.0)
    calls(judge, clock, [0.2] * 100 + [1.0] * 300)  # 4 s after the first call: no verdict
    assert changes == []
    clock.now += 1.0
    calls(judge, clock, [0.02] * 200)  # the window is 30 s: the start-up calls still count
    calls(judge, clock, [2.0] * 5)
    assert [c[1] for c in changes] == [True]


# -- comparable load -------------------------------------------------------------------------
def test_calls_started_while_catching_up_on_a_backlog_are_not_judged() -> None:
    """After a rebalance the worker takes on a backlog: its calls in flight jump from ~10 to
    256 and its own queueing makes every call slow. Those calls are not compared with calls
    made at the usual load; the same latency at the usual load is judged."""
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.020] * 200, load=10)
    calls(judge, clock, [1.5] * 100, load=256)  # catching up: slow, at 25x the usual load
    assert changes == []
    calls(judge, clock, [1.5] * 5, load=10)  # the provider itself, at the usual load
    assert [c[1] for c in changes] == [True]


def test_a_provider_slowing_down_is_caught_while_its_load_rises() -> None:
    """The load rises only after latency does (requests pile up behind slow answers), so the
    first slow calls started at the usual load."""
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.020] * 200, load=4)
    calls(judge, clock, [1.5] * 40, load=list(range(4, 44)))  # 100/s piling up at 1.5 s
    assert [c[1] for c in changes] == [True]


def test_a_lasting_step_up_in_load_makes_a_new_baseline() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.020] * 200, load=10)
    clock.now += 31.0  # the old baseline has left the window
    calls(judge, clock, [0.040] * 100, load=60)  # twice the traffic from now on
    calls(judge, clock, [1.5] * 5, load=60)
    assert [c[1] for c in changes] == [True]


def test_comparable_load_has_slack_for_small_loads() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    calls(judge, clock, [0.020] * 100, load=1)
    calls(judge, clock, [1.0] * 5, load=8)  # 8x the load, but only 7 more: comparable
    assert [c[1] for c in changes] == [True]


def test_bad_load_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="load"):
        BreakerConfig(load_ratio=0.5)
    with pytest.raises(ValueError, match="min_baseline_s"):
        BreakerConfig(min_baseline_s=-1)


# -- demoted: probes, restore ----------------------------------------------------------------
def test_probes_after_the_cooldown_restore_with_a_fresh_window() -> None:
    clock = FakeClock()
    judge, changes = make(clock, probes=2)
    demote(judge, clock)
    clock.now += 9.9
    assert judge.demoted()
    clock.now += 0.2  # cooldown over: two probe slots, then wait for them
    assert [judge.demoted() for _ in range(3)] == [False, False, True]
    calls(judge, clock, [0.020, 0.020])
    assert not judge.is_demoted and not judge.demoted()
    assert [c[1] for c in changes] == [True, False]
    assert "2 calls in a row" in changes[-1][2]
    # the window was reset: slowness right after the restore needs a new baseline first,
    # so one slow spell demotes once instead of flapping
    calls(judge, clock, [2.0] * 5)
    assert not judge.is_demoted
    calls(judge, clock, [0.020] * 100 + [2.0] * 5)
    assert judge.is_demoted


def test_a_slow_probe_demotes_for_another_cooldown() -> None:
    clock = FakeClock()
    judge, changes = make(clock)
    demote(judge, clock)
    clock.now += 10.0
    assert not judge.demoted()  # a probe slot
    calls(judge, clock, [0.020])  # fast
    assert not judge.demoted()
    calls(judge, clock, [2.0])  # slow: starts over, and no probe for another cooldown
    assert judge.demoted()
    clock.now += 9.9
    assert judge.demoted()
    clock.now += 0.2
    assert not judge.demoted()
    calls(judge, clock, [0.02] * 3)
    assert [c[1] for c in changes] == [True, False]


def test_answers_of_calls_started_before_the_demotion_say_nothing() -> None:
    clock = FakeClock()
    judge, _ = make(clock)
    demote(judge, clock)
    clock.now += 10.0
    calls(judge, clock, [11.0] * 5)  # started before the demotion; slow, but not news
    assert not judge.demoted()  # the probe slots are still free
    calls(judge, clock, [0.02] * 3)
    assert not judge.is_demoted


def test_lost_probe_slots_are_handed_out_again() -> None:
    clock = FakeClock()
    judge, _ = make(clock, probes=1)
    demote(judge, clock)
    clock.now += 10.0
    assert [judge.demoted(), judge.demoted()] == [False, True]  # never reported back
    clock.now += 9.9
    assert judge.demoted()
    clock.now += 0.1
    assert not judge.demoted()


def test_with_no_other_candidate_fast_calls_restore_it_after_the_cooldown() -> None:
    """All traffic still goes to a demoted endpoint that has no alternative: every call is
    a probe. It stays demoted for a cooldown after its last slow call."""
    clock = FakeClock()
    judge, changes = make(clock)
    demote(judge, clock)
    calls(judge, clock, [2.0] * 200)  # 2 s of slow calls: the cooldown restarts with each
    calls(judge, clock, [0.02] * 500)  # 5 s of fast ones: not yet a cooldown after the slow
    assert judge.is_demoted
    calls(judge, clock, [0.02] * 600)
    assert not judge.is_demoted
    assert [c[1] for c in changes] == [True, False]


def test_board_reports_demotions_and_callback_errors_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    def broken(*_: object) -> None:
        raise RuntimeError("log sink down")

    board = BreakerBoard(BreakerConfig(min_baseline_s=0), clock=clock, on_latency=broken)
    assert not board.demoted("never-seen")
    for _ in range(100):
        board.record("a", True, 0.02)
        board.record("b", True, 0.02)
    for _ in range(5):
        board.record("a", True, 2.0)
    assert board.demotions() == {"a": True, "b": False}
    assert board.demoted("a") and not board.demoted("b")
    assert board.states() == {"a": "closed", "b": "closed"}
    assert "on_change callback failed" in caplog.text
