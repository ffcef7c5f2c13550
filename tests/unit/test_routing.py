"""Routing: candidates re-ordered by latency, cost or reliability; open breakers go last."""

from __future__ import annotations

import random

import pytest

from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.routing import EndpointStats, Router, health_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cand(name: str, *, cost: float = 0.0, fallback: bool = False) -> Candidate:
    row = ModelRow(
        model_id=name,
        provider="openai_compatible",
        endpoint=f"http://{name}.invalid/v1",
        upstream_model="m",
        input_cost_per_1k=cost,
        output_cost_per_1k=2 * cost,
    )
    return Candidate(
        provider=row.provider,
        endpoint=row.endpoint,
        upstream_model="m",
        endpoint_name=f"{name}/primary",
        row=row,
        fallback=fallback,
    )


def hk(name: str) -> str:
    """The health key of candidate `name` (what stats and breakers are kept per)."""
    return f"openai_compatible:http://{name}.invalid/v1#m"


def names(cands: list[Candidate]) -> list[str]:
    return [c.endpoint_name.split("/")[0] for c in cands]


A, B, C = cand("a"), cand("b", fallback=True), cand("c", fallback=True)


def open_breaker(board: BreakerBoard, endpoint_name: str) -> None:
    for _ in range(board.config.min_requests):
        board.record(endpoint_name, False, 0.01)
    assert board.is_open(endpoint_name)


def test_priority_keeps_the_registry_order() -> None:
    router = Router("priority")
    router.record(hk("c"), True, 0.001)  # stats do not matter here
    assert names(router.order([A, B, C])) == ["a", "b", "c"]
    assert router.order([]) == []


@pytest.mark.parametrize("objective", ["priority", "latency", "cost", "reliability"])
def test_open_breaker_goes_last_but_stays(objective: str) -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(min_requests=3), clock=clock)
    router = Router("priority", breakers=board)
    for c in (A, B, C):
        router.stats.record(health_key(c), True, 0.05)
    open_breaker(board, hk("a"))
    assert names(router.order([A, B, C], objective)) == ["b", "c", "a"]
    clock.now += board.config.cooldown_s  # half_open: back in its place, to be probed
    assert names(router.order([A, B, C], objective))[0] == "a"


@pytest.mark.parametrize("objective", ["priority", "cost"])
def test_rate_limited_candidates_give_way_to_ones_with_room(objective: str) -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(min_requests=3), clock=clock)
    router = Router("priority", breakers=board)
    full = {"a"}
    limited = lambda c: c.endpoint_name.split("/")[0] in full  # noqa: E731
    assert names(router.order([A, B, C], objective, limited)) == ["b", "c", "a"]
    open_breaker(board, hk("b"))  # an open breaker still goes after a merely limited one
    assert names(router.order([A, B, C], objective, limited)) == ["c", "a", "b"]
    full = {"a", "b", "c"}  # every one limited: the objective's order, open breaker last
    assert names(router.order([A, B, C], objective, limited)) == ["a", "c", "b"]
    assert router.choices["c/primary"] == 1 and router.choices["a/primary"] == 1


def test_latency_objective_sends_most_traffic_to_the_faster_endpoint() -> None:
    slow, fast = cand("slow"), cand("fast", fallback=True)
    true_latency = {"slow/primary": 0.080, "fast/primary": 0.020}
    router = Router("latency", explore=0.05, rng=random.Random(3))
    jitter = random.Random(4)
    picks = {"slow": 0, "fast": 0}
    for i in range(1000):
        first = router.order([slow, fast])[0]
        if i >= 50:  # after warm-up
            picks[names([first])[0]] += 1
        lat = true_latency[first.endpoint_name] * jitter.uniform(0.8, 1.2)
        router.record(health_key(first), True, lat)
    assert picks["fast"] >= 0.9 * 950
    assert picks["slow"] > 0  # exploration keeps its stats fresh
    assert router.choices["fast/primary"] + router.choices["slow/primary"] == 1000


def test_unmeasured_endpoints_are_tried_first_to_warm_up() -> None:
    router = Router("latency")
    assert names(router.order([A, B])) == ["a", "b"]
    router.record(hk("a"), True, 0.5)
    assert names(router.order([A, B])) == ["b", "a"]  # b never measured
    router.record(hk("b"), True, 0.9)
    assert names(router.order([A, B])) == ["a", "b"]


def test_fast_failures_do_not_make_an_endpoint_look_fast() -> None:
    router = Router("latency")
    for _ in range(20):
        router.record(hk("a"), True, 0.010)
        router.record(hk("a"), False, 0.001)  # half of its answers are instant 500s
        router.record(hk("b"), True, 0.015)
    assert names(router.order([A, B])) == ["b", "a"]


def test_cost_objective_prefers_the_cheaper_row_ties_keep_order() -> None:
    pricey, cheap, cheap2 = cand("pricey", cost=0.03), cand("cheap", cost=0.001), cand("x")
    router = Router("cost")
    assert names(router.order([pricey, cheap])) == ["cheap", "pricey"]
    same = cand("same", cost=0.001, fallback=True)
    assert names(router.order([pricey, cheap, same])) == ["cheap", "same", "pricey"]
    assert names(router.order([cheap2, pricey])) == ["x", "pricey"]


def test_reliability_objective_prefers_fewer_errors() -> None:
    router = Router("reliability")
    for i in range(50):
        router.record(hk("a"), i % 3 != 0, 0.01)  # a third fail
        router.record(hk("b"), i % 10 != 0, 0.05)  # a tenth fail
    assert names(router.order([A, B])) == ["b", "a"]
    assert names(router.order([A, B], "priority")) == ["a", "b"]


def test_ewma_follows_recent_samples() -> None:
    stats = EndpointStats(alpha=0.5)
    assert stats.latency("e") is None and stats.error_rate("e") is None
    stats.record("e", True, 1.0)
    stats.record("e", True, 0.0)
    stats.record("e", False, 9.0)  # failures do not move the latency
    assert stats.latency("e") == pytest.approx(0.5)
    assert stats.error_rate("e") == pytest.approx(0.5)
    assert stats.expected_latency("e") == pytest.approx(1.0)
    assert stats.snapshot()["e"]["samples"] == 3


def test_choices_count_the_first_pick() -> None:
    router = Router("priority")
    for _ in range(3):
        router.order([A, B])
    router.order([B])
    assert router.choices == {"a/primary": 3, "b/primary": 1}


def test_unknown_objective_is_rejected() -> None:
    with pytest.raises(ValueError, match="objective"):
        Router("fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="objective"):
        Router().order([A, B], "fastest")


# -- latency demotion: routed around, never dropped ------------------------------------------
def slow_down(router: Router, board: BreakerBoard, name: str, to: float = 2.0) -> None:
    """`name` answered in 20 ms, then in `to` seconds: demoted by its latency judge."""
    for _ in range(60):
        router.record(hk(name), True, 0.020)
    for _ in range(5):
        router.record(hk(name), True, to)
    assert board.demotions()[hk(name)] and board.states()[hk(name)] == "closed"


@pytest.mark.parametrize("objective", ["priority", "cost", "reliability"])
def test_a_demoted_endpoint_goes_behind_a_faster_healthy_one(objective: str) -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(min_requests=3, min_baseline_s=0), clock=clock)
    router = Router("priority", breakers=board)
    router.record(hk("b"), True, 0.030)
    slow_down(router, board, "a")
    assert names(router.order([A, B, C], objective)) == ["b", "c", "a"]  # c: unmeasured
    open_breaker(board, hk("b"))
    assert names(router.order([A, B, C], objective)) == ["c", "a", "b"]  # open is still last


def test_a_demoted_endpoint_keeps_its_place_when_no_one_is_faster() -> None:
    """Moving traffic from a 2 s endpoint to a healthy one that takes 3 s gains nothing."""
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(min_baseline_s=0), clock=clock)
    router = Router("priority", breakers=board)
    for _ in range(10):
        router.record(hk("b"), True, 3.0)
    slow_down(router, board, "a")
    assert names(router.order([A, B])) == ["a", "b"]
    assert names(router.order([A])) == ["a"]  # the only candidate is always called


def test_both_demoted_keep_the_registry_order() -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(min_baseline_s=0), clock=clock)
    router = Router("priority", breakers=board)
    slow_down(router, board, "a")
    slow_down(router, board, "b")
    assert names(router.order([A, B])) == ["a", "b"]


def test_after_the_cooldown_probes_go_back_to_the_demoted_endpoint() -> None:
    clock = FakeClock()
    board = BreakerBoard(BreakerConfig(probes=2, min_baseline_s=0), clock=clock)
    router = Router("priority", breakers=board)
    router.record(hk("b"), True, 0.030)
    slow_down(router, board, "a")
    assert names(router.order([A, B]))[0] == "b"
    clock.now += board.config.cooldown_s
    firsts = [names(router.order([A, B]))[0] for _ in range(4)]
    assert firsts == ["a", "a", "b", "b"]  # two probes, then wait for their answers
    clock.now += 0.1
    for _ in range(2):
        router.record(hk("a"), True, 0.025)
    assert not board.demotions()[hk("a")]
    assert names(router.order([A, B]))[0] == "a"  # restored: back in its place
