"""The `/readyz` intake check (`worker.ops.intake`): a worker that takes no record for the
stall time while work waits is reported not ready, with why; one that is idle, or moving, is
not."""

from __future__ import annotations

from llm_worker.worker.app import App
from llm_worker.worker.config import load_settings
from llm_worker.worker.ops.intake import STALL_MARGIN_S, IntakeWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """The consume loop's counts, set by hand."""

    def __init__(self) -> None:
        self.counters = {"consumed": 0}
        self.in_flight = 0


def watch(stall_s: float = 60.0) -> tuple[IntakeWatch, Loop, dict[tuple[str, int], int], Clock]:
    loop, clock = Loop(), Clock()
    lag: dict[tuple[str, int], int] = {}
    return IntakeWatch(stall_s, 0.0, loop, lambda: lag, clock=clock), loop, lag, clock


def test_held_work_and_no_intake_for_the_stall_time_is_not_ready() -> None:
    w, loop, lag, clock = watch()
    loop.counters["consumed"], loop.in_flight = 40, 40  # took 40, all held
    lag[("llm_prompts", 0)] = 140  # and 100 more wait behind them
    assert w.check()["ok"]
    clock.now += 59.0
    assert w.check()["ok"]
    clock.now += 2.0
    check = w.check()
    assert not check["ok"] and check["still_s"] == 61.0
    assert check["state"] == (
        "stalled: no record taken for 61 s while 40 are in flight and 140 behind (limit 60 s)"
    )
    loop.counters["consumed"] += 1  # it took one: moving again
    assert w.check() == {"ok": True, "state": "moving", "still_s": 0.0}


def test_an_idle_worker_stays_ready() -> None:
    w, _loop, _lag, clock = watch()
    w.check()
    clock.now += 3600.0  # nothing to take for an hour
    assert w.check()["ok"]


def test_the_automatic_stall_time_outlasts_every_request_in_flight() -> None:
    loop = Loop()
    assert IntakeWatch(0.0, 720.0, loop, dict).stall_s == 720.0 + STALL_MARGIN_S
    assert IntakeWatch(30.0, 720.0, loop, dict).stall_s == 30.0


def test_readyz_carries_the_intake_check() -> None:
    env = {"LLM_WORKER_REQUEST_DEADLINE_S": "100", "LLM_WORKER_CAPACITY_WAIT_S": "200"}
    app = App(load_settings(env), http=False)
    assert app.intake.stall_s == 300.0 + STALL_MARGIN_S
    _ok, detail = app.ready()
    assert detail["checks"]["intake"]["ok"] and detail["checks"]["intake"]["state"] == "moving"
