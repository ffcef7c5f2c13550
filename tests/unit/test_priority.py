"""Request priority: higher first where requests wait (rate-limit lines, concurrency slots),
aging against starvation, the prompt's field and the row's default, and the metrics."""

from __future__ import annotations

import asyncio

import pytest

from llm_worker.registry.apply import row_value_problems
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate
from llm_worker.worker.calling.concurrency import AdaptiveLimit
from llm_worker.worker.calling.priority import HIGH, LOW, NAMES, NORMAL, Lanes, rank
from llm_worker.worker.calling.ratelimit import RateLimiter, RateRequest
from llm_worker.worker.messages import Completion, Prompt, Rejected, decode_prompt
from llm_worker.worker.ops.metrics import PRIORITY_NAMES, Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.pipeline import _priority
from llm_worker.worker.records import InputRecord, Outcome

from .test_ratelimit import FakeTime


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- the lanes -------------------------------------------------------------------------------


def test_lanes_serve_higher_priority_first_and_first_come_within_one() -> None:
    lanes: Lanes[str] = Lanes(aging_s=30)
    lanes.push("low1", LOW, 0.0)
    lanes.push("normal1", NORMAL, 1.0)
    lanes.push("low2", LOW, 2.0)
    lanes.push("high1", HIGH, 3.0)
    lanes.push("high2", HIGH, 4.0)
    assert lanes.counts() == (2, 1, 2) and len(lanes) == 5
    assert [lanes.pop(5.0) for _ in range(5)] == ["high1", "high2", "normal1", "low1", "low2"]
    with pytest.raises(IndexError):
        lanes.pop(5.0)


def test_lanes_age_a_waiter_one_level_per_aging_period() -> None:
    lanes: Lanes[str] = Lanes(aging_s=10)
    lanes.push("old low", LOW, 0.0)
    lanes.push("normal", NORMAL, 5.0)
    assert lanes.pop(9.0) == "normal"  # not yet aged: low
    lanes.push("normal", NORMAL, 9.0)
    assert lanes.pop(10.0) == "old low"  # aged to normal, and it waited longer
    assert lanes.pop(10.0) == "normal" and lanes.n == 0
    lanes.push("old low", LOW, 0.0)
    lanes.push("high", HIGH, 19.0)
    assert lanes.pop(19.5) == "high"  # aged to normal only
    lanes.push("high", HIGH, 19.0)
    assert lanes.pop(20.0) == "old low"  # aged to high: it goes before the later high


def test_lanes_remove_a_waiter_that_gave_up() -> None:
    lanes: Lanes[str] = Lanes()
    a = lanes.push("a", LOW, 0.0)
    lanes.push("b", LOW, 1.0)
    assert lanes.remove(a, LOW) and not lanes.remove(a, LOW)
    assert lanes.pop(2.0) == "b" and lanes.n == 0
    with pytest.raises(ValueError, match="aging_s"):
        Lanes(aging_s=0)


def test_rank_names() -> None:
    assert [rank(n) for n in NAMES] == [HIGH, NORMAL, LOW] and rank(None) == NORMAL
    assert PRIORITY_NAMES == NAMES  # the metrics' labels, by rank


# -- concurrency slots -----------------------------------------------------------------------


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_highest_priority_waiter() -> None:
    clock = Clock()
    lim = AdaptiveLimit(cap=4, clock=clock)
    for _ in range(4):
        assert lim.try_acquire()
    order: list[str] = []

    async def wait(name: str, prio: int) -> None:
        await lim.acquire(priority=prio)
        order.append(name)

    tasks = [asyncio.create_task(wait(f"low{i}", LOW)) for i in range(3)]
    await _settle()
    tasks.append(asyncio.create_task(wait("normal", NORMAL)))
    tasks.append(asyncio.create_task(wait("high", HIGH)))
    await _settle()
    assert lim.waiting_by_priority() == (1, 1, 3)
    for _ in range(5):
        lim.release(ok=False)
        await _settle()
    assert order == ["high", "normal", "low0", "low1", "low2"]
    await asyncio.gather(*tasks)


async def test_a_low_slot_waiter_ages_past_later_high_ones() -> None:
    clock = Clock()
    lim = AdaptiveLimit(cap=4, clock=clock, aging_s=10)
    for _ in range(4):
        assert lim.try_acquire()
    order: list[str] = []

    async def wait(name: str, prio: int) -> None:
        await lim.acquire(priority=prio)
        order.append(name)

    tasks = [asyncio.create_task(wait("low", LOW))]
    await _settle()
    clock.now = 5.0
    tasks += [asyncio.create_task(wait(f"high{i}", HIGH)) for i in range(3)]
    await _settle()
    lim.release(ok=False)
    await _settle()
    assert order == ["high0"]  # the low one ranks as low: 5 s waited
    clock.now = 20.0  # it has waited two aging periods: high, and older than the others
    lim.release(ok=False)
    await _settle()
    assert order == ["high0", "low"]
    for _ in range(2):
        lim.release(ok=False)
    await asyncio.gather(*tasks)


async def test_a_slot_waiter_that_times_out_leaves_its_lane() -> None:
    lim = AdaptiveLimit(cap=4)
    for _ in range(4):
        assert lim.try_acquire()
    with pytest.raises(TimeoutError):
        await lim.acquire(timeout=0.01, priority=HIGH)
    assert lim.waiting == 0 and lim.waiting_by_priority() == (0, 0, 0)


# -- rate-limit lines ------------------------------------------------------------------------


def _ask(prio: int) -> RateRequest:
    return RateRequest(endpoint="ep", model_id="m", rpm=60, priority=prio)  # 1/s


async def test_a_high_request_passes_a_backlog_of_low_ones_in_a_bucket() -> None:
    t = FakeTime()
    rl = RateLimiter(clock=t, sleep=t.sleep)  # type: ignore[arg-type]
    lows = [asyncio.create_task(rl.acquire(_ask(LOW))) for _ in range(20)]
    await t.advance(0)
    high = asyncio.create_task(rl.acquire(_ask(HIGH)))
    await t.advance(0)
    assert rl.stats().waiting_by == (1, 0, 19)
    await t.advance(3.5)
    # it waited for the places already handed out (a burst's worth), not for 19 low ones
    assert high.done() and high.result() <= 3.0
    assert sum(task.done() for task in lows) <= 4
    await t.advance(20)
    assert all(task.done() for task in lows)
    assert rl.stats().waiting_by == (0, 0, 0)


async def test_a_low_request_is_served_under_a_stream_of_high_ones() -> None:
    t = FakeTime()
    rl = RateLimiter(clock=t, sleep=t.sleep, aging_s=5)  # type: ignore[arg-type]
    assert await rl.acquire(_ask(HIGH)) == 0.0  # the burst
    highs = [asyncio.create_task(rl.acquire(_ask(HIGH))) for _ in range(3)]
    await t.advance(0)
    low = asyncio.create_task(rl.acquire(_ask(LOW)))
    await t.advance(0)
    for _ in range(40):  # a high one arrives every half second: twice what the bucket serves
        highs.append(asyncio.create_task(rl.acquire(_ask(HIGH))))
        await t.advance(0.5)
        if low.done():
            break
    # served once it aged to high (2 x 5 s) and the high ones ahead of it went: not starved
    assert low.done() and 9.0 <= low.result() <= 14.0
    await t.advance(60)
    assert all(h.done() for h in highs)


async def test_a_waiter_in_a_line_times_out_at_its_deadline_and_leaves_it() -> None:
    t = FakeTime()
    rl = RateLimiter(clock=t, sleep=t.sleep)  # type: ignore[arg-type]
    first = [asyncio.create_task(rl.acquire(_ask(NORMAL))) for _ in range(5)]
    await t.advance(0)
    late = asyncio.create_task(rl.acquire(_ask(LOW), deadline=2.0))
    await t.advance(2.5)
    assert late.done() and type(late.exception()).__name__ == "RateLimitTimeout"
    await t.advance(10)
    assert all(task.done() and task.exception() is None for task in first)
    assert rl.waiting == 0 and rl._lines == {}


# -- the prompt's field and the row's default ------------------------------------------------


def _decode(raw: bytes) -> Prompt | Rejected:
    return decode_prompt(raw, max_bytes=1 << 20, max_metadata_bytes=1 << 16)


def test_a_prompt_says_its_priority_and_another_value_is_a_validation_error() -> None:
    ok = _decode(b'{"id":"a","model":"m","prompt":"x","priority":"high"}')
    assert isinstance(ok, Prompt) and ok.priority == "high"
    bad = _decode(b'{"id":"a","model":"m","prompt":"x","priority":"urgent"}')
    assert isinstance(bad, Rejected) and bad.reason == "validation_error" and not bad.dlq
    assert "priority" in bad.message


def _cand(model_id: str, priority: str | None) -> Candidate:
    row = ModelRow(
        model_id=model_id, provider="openai", endpoint="", upstream_model="u", priority=priority
    )
    return Candidate(
        provider="openai",
        endpoint="",
        upstream_model="u",
        endpoint_name=f"{model_id}/primary",
        row=row,
        fallback=False,
    )


def test_the_effective_priority_is_the_prompts_else_the_requested_rows_else_normal() -> None:
    def prompt(**kw: str) -> Prompt:
        return Prompt(id="a", model="m", prompt="x", **kw)  # type: ignore[arg-type]

    rows = [_cand("m", "low"), _cand("fb", "high")]
    assert _priority(prompt(priority="high"), rows) == HIGH
    assert _priority(prompt(), rows) == LOW  # the requested row's, not its fallback's
    assert _priority(prompt(), [_cand("m", None)]) == NORMAL
    assert _priority(prompt(), []) == NORMAL


def test_a_rows_priority_is_checked() -> None:
    row = ModelRow(model_id="m", provider="openai", endpoint="", upstream_model="u")
    assert row_value_problems(ModelRow(**{**_fields(row), "priority": "low"})) == []
    problems = row_value_problems(ModelRow(**{**_fields(row), "priority": "hihg"}))
    assert problems == ["priority: 'hihg'; did you mean 'high'? (known: high, normal, low)"]


def _fields(row: ModelRow) -> dict[str, object]:
    return {f: getattr(row, f) for f in row.__struct_fields__}


# -- the metric ------------------------------------------------------------------------------


def test_completions_queue_time_is_observed_by_priority() -> None:
    metrics = Metrics()
    recorder = OutcomeRecorder(metrics, log_outcomes="none")
    batch = []
    for i, prio in enumerate([HIGH, LOW, LOW, -1]):
        comp = Completion(id=f"r{i}", model="m", status="ok", queue_ms=250.0 * (i + 1))
        rec = InputRecord(topic="p", partition=0, offset=i, value=b"{}")
        out = Outcome(topic="c", value=b"", key=None, headers=None, completion=comp, priority=prio)
        batch.append((rec, out, None))
    recorder.record(batch)

    def sample(name: str, label: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"priority": label})

    assert sample("llm_worker_queue_seconds_count", "high") == 1
    assert sample("llm_worker_queue_seconds_sum", "high") == pytest.approx(0.25)
    assert sample("llm_worker_queue_seconds_count", "low") == 2
    assert sample("llm_worker_queue_seconds_sum", "low") == pytest.approx(1.25)
    assert sample("llm_worker_queue_seconds_count", "normal") == 0  # -1: no provider call


# -- the benchmark scenario's figures --------------------------------------------------------


def test_the_priority_scenario_reports_high_and_low_queue_ms_side_by_side() -> None:
    from llm_worker.devkit.bench.scenarios import PRIORITY_MIX, SCENARIOS, priority_figures

    assert "priority" in SCENARIOS and PRIORITY_MIX.count("high") * 10 == len(PRIORITY_MIX)
    done = [
        {"id": f"run1-{i}", "queue_ms": 100.0 if i % 10 == 0 else 5000.0 + i} for i in range(40)
    ]
    done += [{"id": "other-0", "queue_ms": 1.0}, {"id": "run1-x", "queue_ms": 1.0}]
    done.append({"id": "run1-50", "queue_ms": None})  # no Kafka timestamp: not counted
    figures = priority_figures(done, "run1", PRIORITY_MIX)
    assert figures["high"] == {"count": 4, "queue_ms_p50": 100.0, "queue_ms_p95": 100.0}
    assert figures["low"]["count"] == 36 and figures["low"]["queue_ms_p95"] == 5037.0
    assert figures["high_vs_low_p95"] == round(100 / 5037, 3)
    assert priority_figures([], "run1", PRIORITY_MIX)["high_vs_low_p95"] is None
