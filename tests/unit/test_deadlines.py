"""Per-prompt deadlines (issue 27): a prompt's `deadline` (epoch ms) or `ttl_ms` (from its
record's timestamp), else the worker's `LLM_WORKER_DEFAULT_TTL_MS`.

A prompt already past it gets `deadline_exceeded` with `attempts: 0` and no call, before the
dedup window; otherwise it caps the request: retries, holds, rate-limit waits and a call in
progress end at it, with `deadline_exceeded` when it (not the worker's own deadline) ended
the request. Dedup followers never take a deadline that is not their own."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from llm_worker.adapters.base import ProviderResult
from llm_worker.adapters.errors import ServerError
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.breaker import BreakerConfig
from llm_worker.worker.calling.caller import CallFailed, CallResult
from llm_worker.worker.calling.results import DeadlineExceeded
from llm_worker.worker.config import load_settings
from llm_worker.worker.dedup import DedupWindow, FollowTimedOut
from llm_worker.worker.messages import Prompt, Rejected, decode_prompt
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pending, Pipeline, deadline_ms
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.settings import ConfigError

from .caller_fakes import RecordingLimits, Setup, answer, server_error

NOW_MS = 1_000_000  # the pipeline's wall clock, below: 1000.0 s
ROWS = {
    "m1": ModelRow(
        model_id="m1",
        provider="fake",
        endpoint="http://x/v1",
        upstream_model="u",
        canned_response="sorry",
    )
}


class Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(ROWS, model_id)


class Caller:
    """Records every call's keyword arguments; answers with the prompt's text, after `gate`
    when one is set. A call given a `prompt_deadline` it cannot answer by (the gate shut)
    ends at it with `deadline_exceeded`, as the real caller does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None

    async def call(self, candidates: list[Candidate], request: Any, **kw: Any) -> CallResult:
        self.calls.append(kw)
        if self.gate is not None:
            until = kw.get("prompt_deadline")
            try:
                async with asyncio.timeout_at(until):
                    await self.gate.wait()
            except TimeoutError:
                raise CallFailed(
                    DeadlineExceeded("the prompt's deadline passed"), 1, None
                ) from None
        result = ProviderResult(text=request.prompt or "", finish_reason="stop")
        return CallResult(result=result, candidate=candidates[0], attempts=1, latency_ms=1.0)


def _pipeline(
    caller: Caller | None = None,
    env: dict[str, str] | None = None,
    real_time: bool = False,
    **kw: Any,
) -> Pipeline:
    clocks: dict[str, Any] = {} if real_time else {"wall_clock": lambda: NOW_MS / 1000}
    return Pipeline(
        load_settings(env or {}),
        Registry(),
        caller or Caller(),  # type: ignore[arg-type]
        Metrics(),
        **clocks,
        **kw,
    )


def _rec(timestamp_ms: int | None = None, **fields: Any) -> InputRecord:
    prompt = {"id": "a", "model": "m1", "prompt": "hi", **fields}
    return InputRecord(
        topic="in",
        partition=0,
        offset=1,
        value=json.dumps(prompt).encode(),
        timestamp_ms=timestamp_ms,
    )


# -- the fields ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deadline", -1),
        ("deadline", "soon"),
        ("deadline", 1.5),
        ("deadline", True),
        ("deadline", {"ms": 1}),
        ("ttl_ms", 0),
        ("ttl_ms", -5),
        ("ttl_ms", "5000"),
        ("ttl_ms", 2.5),
    ],
)
def test_a_bad_deadline_or_ttl_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    raw = json.dumps({"id": "a", "model": "m1", "prompt": "hi", field: value}).encode()
    got = decode_prompt(raw, max_bytes=10_000, max_metadata_bytes=1000)
    assert isinstance(got, Rejected) and not got.dlq
    assert got.reason == "validation_error" and f"$.{field}" in got.message


def test_deadline_and_ttl_are_read() -> None:
    raw = json.dumps({"id": "a", "model": "m1", "prompt": "x", "deadline": 0, "ttl_ms": 1})
    got = decode_prompt(raw.encode(), max_bytes=10_000, max_metadata_bytes=1000)
    assert isinstance(got, Prompt) and (got.deadline, got.ttl_ms) == (0, 1)


def test_the_default_ttl_setting_is_checked() -> None:
    assert load_settings({}).default_ttl_ms == 0
    assert load_settings({"LLM_WORKER_DEFAULT_TTL_MS": "5000"}).default_ttl_ms == 5000
    with pytest.raises(ConfigError, match="LLM_WORKER_DEFAULT_TTL_MS"):
        load_settings({"LLM_WORKER_DEFAULT_TTL_MS": "-1"})


def _prompt(**fields: Any) -> Prompt:
    return Prompt(id="a", model="m1", prompt="x", **fields)


def test_the_earlier_of_deadline_and_ttl_wins_and_the_default_only_without_either() -> None:
    ts, taken = 990_000, 1_000_000.0
    assert deadline_ms(_prompt(), ts, taken, 0) is None
    assert deadline_ms(_prompt(deadline=995_000, ttl_ms=60_000), ts, taken, 0) == (
        995_000,
        "`deadline`",
    )
    assert deadline_ms(_prompt(deadline=2_000_000, ttl_ms=1000), ts, taken, 0) == (
        991_000,
        "`ttl_ms` 1000 from the record's timestamp",
    )
    # no timestamp: from when the worker took it
    assert deadline_ms(_prompt(ttl_ms=1000), None, taken, 0) == (
        1_001_000.0,
        "`ttl_ms` 1000 from when the worker took the record",
    )
    assert deadline_ms(_prompt(), ts, taken, 7000) == (
        997_000,
        "LLM_WORKER_DEFAULT_TTL_MS 7000 from the record's timestamp",
    )
    # a prompt's own deadline or ttl replaces the default, even a later one
    assert deadline_ms(_prompt(ttl_ms=60_000), ts, taken, 7000) == (
        1_050_000,
        "`ttl_ms` 60000 from the record's timestamp",
    )
    assert deadline_ms(_prompt(deadline=5_000_000), ts, taken, 7000) == (5_000_000, "`deadline`")


# -- expired when taken ----------------------------------------------------------------------
def _expired(out: Outcome | Pending, attempts: int = 0) -> Any:
    assert isinstance(out, Outcome) and out.completion is not None
    comp = out.completion
    assert comp.status == "error" and comp.error is not None
    assert comp.error.type == "deadline_exceeded" and comp.error.retryable is False
    assert comp.attempts == attempts and out.model_label == "m1"
    return comp


@pytest.mark.parametrize(
    ("timestamp_ms", "fields", "late"),
    [
        (None, {"deadline": NOW_MS - 1500}, 1500),
        (None, {"deadline": NOW_MS}, 0),  # due now: expired
        (990_000, {"ttl_ms": 4000}, 6000),
        (990_000, {"ttl_ms": 60_000, "deadline": 0}, NOW_MS),
    ],
)
async def test_a_prompt_past_its_deadline_is_answered_without_a_call(
    timestamp_ms: int | None, fields: dict[str, Any], late: int
) -> None:
    caller = Caller()
    p = _pipeline(caller)
    comp = _expired(await p.process(_rec(timestamp_ms, **fields)))
    assert caller.calls == []
    assert f"passed {late} ms before the worker took it" in comp.error.message
    assert comp.text is None and not comp.canned  # the row's canned answer is not wanted late


async def test_the_default_ttl_expires_prompts_that_give_none() -> None:
    caller = Caller()
    p = _pipeline(caller, {"LLM_WORKER_DEFAULT_TTL_MS": "5000"})
    comp = _expired(p.begin(_rec(990_000)))
    assert "LLM_WORKER_DEFAULT_TTL_MS 5000" in comp.error.message
    assert isinstance(p.begin(_rec(990_000, ttl_ms=20_000)), Pending)  # its own ttl wins
    assert caller.calls == []


async def test_an_expired_prompt_is_not_answered_from_the_dedup_window_nor_leads() -> None:
    caller = Caller()
    window: DedupWindow[CallResult] = DedupWindow(window_s=60)
    p = _pipeline(caller, dedup=window)
    ok = await p.process(_rec())  # an identical prompt answered and stored
    assert ok.completion is not None and ok.completion.status == "ok"
    _expired(p.begin(_rec(deadline=NOW_MS - 1)))
    assert window.stats().hits == 0 and window.stats().leaders == 1
    assert len(caller.calls) == 1


# -- not yet: it caps the request ------------------------------------------------------------
async def test_a_live_deadline_caps_the_request_and_reaches_the_caller() -> None:
    now = [50.0]
    caller = Caller()
    p = _pipeline(caller, clock=lambda: now[0])
    step = p.begin(_rec(990_000, ttl_ms=12_500))  # 2.5 s left
    assert isinstance(step, Pending)
    assert step.prompt_deadline == pytest.approx(52.5) and step.deadline == step.prompt_deadline
    far = p.begin(_rec(deadline=NOW_MS + 1_000_000))  # later than the worker's own deadline
    assert isinstance(far, Pending) and far.deadline == pytest.approx(50.0 + 120.0)
    none = p.begin(_rec())
    assert isinstance(none, Pending) and none.prompt_deadline is None
    out = await p.finish(step)
    assert out.completion is not None and out.completion.status == "ok"
    assert caller.calls[-1]["prompt_deadline"] == pytest.approx(52.5)
    assert caller.calls[-1]["deadline"] == pytest.approx(52.5)


# -- the caller ------------------------------------------------------------------------------
async def test_the_caller_makes_no_call_past_the_prompts_deadline(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [answer()]}
    with pytest.raises(CallFailed) as info:
        await s.call(prompt_deadline=s.clock.now)
    assert type(info.value.error) is DeadlineExceeded and info.value.attempts == 0
    assert s.provider.called == [] and s.limiter.acquired == []


async def test_the_prompts_deadline_caps_retries_and_ends_them_as_deadline_exceeded(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.took = 1.0
    s.retry_wait = 10.0
    s.provider.script = {"http://p": [server_error(), answer()]}
    with pytest.raises(CallFailed) as info:  # the worker's deadline (60 s) is far
        await s.call(cands=[s.primary], deadline_s=60.0, prompt_deadline=s.clock.now + 5.0)
    assert s.provider.called == ["http://p"]
    err = info.value.error
    assert type(err) is DeadlineExceeded and err.retryable is False
    assert err.message == (
        "the prompt's deadline passed after 1 attempts and 0.0s held;"
        " the last error: server_error: upstream broke"
    )
    assert info.value.attempts == 1 and s.remaining == [pytest.approx(4.0)]


async def test_the_workers_own_deadline_still_ends_with_the_providers_error(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.took = 1.0
    s.retry_wait = 10.0
    s.provider.script = {"http://p": [server_error(), answer()]}
    with pytest.raises(CallFailed) as info:  # the prompt's deadline is later than the worker's
        await s.call(cands=[s.primary], deadline_s=5.0, prompt_deadline=s.clock.now + 500.0)
    assert type(info.value.error) is ServerError


async def test_the_prompts_deadline_caps_a_rate_limit_wait(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.limiter.wait = 10.0  # no room for 10 s
    s.provider.script = {"http://p": [answer()]}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=60.0, prompt_deadline=s.clock.now + 2.0)
    assert s.limiter.deadlines == [pytest.approx(102.0)]  # not 100 + 60 + the capacity wait
    assert s.provider.called == []
    err = info.value.error
    assert type(err) is DeadlineExceeded and info.value.attempts == 0
    assert "the last error: rate_limited: " in err.message


async def test_the_prompts_deadline_caps_a_wait_for_a_concurrency_slot(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.concurrency = limits = RecordingLimits(cap=1)
    while limits.limit.try_acquire():  # every slot is taken
        pass
    s.provider.script = {"http://p": [answer()]}
    with pytest.raises(CallFailed) as info:  # the clock stands: 0.05 real seconds
        await s.call(cands=[s.primary], deadline_s=60.0, prompt_deadline=s.clock.now + 0.05)
    err = info.value.error
    assert type(err) is DeadlineExceeded and "the last error: timeout: no concurrency slot" in (
        err.message
    )
    assert s.provider.called == []


async def test_the_prompts_deadline_ends_a_hold_for_open_breakers(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, breaker=BreakerConfig(consecutive_failures=1, cooldown_s=1e3))
    s.provider.script = {"http://p": [server_error()], "http://f": [server_error()]}
    s.pass_wait = 100.0
    with pytest.raises(CallFailed):
        await s.call(deadline_s=5.0)  # both fail once: both breakers open
    s.observer.ticks = {"circuit_open": 100.0}  # the deadline passes while it waits
    with pytest.raises(CallFailed) as info:
        await s.call(deadline_s=600.0, prompt_deadline=s.clock.now + 1.0)
    assert s.provider.called == ["http://p", "http://f"]  # no call in the second request
    err = info.value.error
    assert type(err) is DeadlineExceeded and info.value.attempts == 0
    assert "the last error: circuit_open: circuit open for m/primary" in err.message


async def test_the_prompts_deadline_ends_a_call_in_progress(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.gate = asyncio.Event()  # the provider never answers
    s.provider.script = {"http://p": [answer()]}
    started = time.monotonic()
    with pytest.raises(CallFailed) as info:  # the clock stands: 0.05 real seconds
        await s.call(cands=[s.primary], deadline_s=60.0, prompt_deadline=s.clock.now + 0.05)
    assert time.monotonic() - started < 5
    assert type(info.value.error) is DeadlineExceeded and info.value.attempts == 1
    assert s.provider.called == ["http://p"]


# -- dedup -----------------------------------------------------------------------------------
def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_follower_whose_deadline_passes_ends_alone_and_the_leader_answers() -> None:
    caller = Caller()
    caller.gate = asyncio.Event()
    p = _pipeline(caller, real_time=True, dedup=DedupWindow(window_s=60))
    leader = p.begin(_rec())  # no deadline
    follower = p.begin(_rec(deadline=_now_ms() + 100))
    assert isinstance(leader, Pending) and isinstance(follower, Pending)
    led = asyncio.create_task(p.finish(leader))
    await asyncio.sleep(0)
    out = await asyncio.wait_for(p.finish(follower), 5)
    comp = _expired(out)
    assert "while it waited for an identical request's answer" in comp.error.message
    assert len(caller.calls) == 1 and not led.done()
    caller.gate.set()
    answered = await led
    assert answered.completion is not None and answered.completion.status == "ok"


async def test_a_leader_ended_by_its_own_deadline_leaves_followers_to_lead_again() -> None:
    caller = Caller()
    caller.gate = asyncio.Event()
    p = _pipeline(caller, real_time=True, dedup=DedupWindow(window_s=60))
    leader = p.begin(_rec(deadline=_now_ms() + 50))
    f1 = p.begin(_rec())  # no deadline of its own
    f2 = p.begin(_rec(deadline=_now_ms() + 60_000))
    assert all(isinstance(x, Pending) for x in (leader, f1, f2))
    tasks = [asyncio.create_task(p.finish(x)) for x in (leader, f1, f2)]  # type: ignore[arg-type]
    done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert done == {tasks[0]}
    _expired(tasks[0].result(), attempts=1)  # its call, ended by its deadline
    await asyncio.sleep(0.01)
    assert len(caller.calls) == 2  # one follower leads a new call, the other follows it
    caller.gate.set()
    answers = [(await asyncio.wait_for(t, 5)).completion for t in tasks[1:]]
    assert all(c is not None and c.status == "ok" for c in answers)
    assert sorted(c.deduplicated for c in answers if c is not None) == [False, True]
    assert len(caller.calls) == 2


async def test_a_bounded_follower_times_out_alone_and_a_leaders_timeout_is_its_own() -> None:
    window: DedupWindow[str] = DedupWindow(window_s=60)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "answer"

    leader = asyncio.create_task(window.run("k", slow, len))
    await asyncio.sleep(0)
    with pytest.raises(FollowTimedOut):
        await window.run("k", slow, len, follow_s=0.01)
    gate.set()
    assert await leader == ("answer", False)

    async def times_out() -> str:
        await asyncio.sleep(0.01)
        raise TimeoutError("the leader's own")

    first = asyncio.create_task(window.run("t", times_out, len))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError, match="the leader's own"):  # not FollowTimedOut
        await window.run("t", times_out, len, follow_s=30)
    with pytest.raises(TimeoutError):
        await first
