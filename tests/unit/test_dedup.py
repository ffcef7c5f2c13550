"""The dedup window: one provider call per distinct request, answers shared, memory bounded."""

from __future__ import annotations

import asyncio
import gc
import random

import msgspec
import pytest

from llm_worker.adapters.base import Message, ProviderRequest, ProviderResult
from llm_worker.adapters.errors import RateLimited, ServerError
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate
from llm_worker.worker.calling.caller import CallResult
from llm_worker.worker.config import load_settings
from llm_worker.worker.dedup import DedupWindow, dedup_key
from llm_worker.worker.messages import Prompt
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import InputRecord, Outcome, Pending, Pipeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req(text: str = "hi", **kw: object) -> ProviderRequest:
    return ProviderRequest(messages=(Message("user", text),), **kw)  # type: ignore[arg-type]


def size1(_: object) -> int:
    return 1


# -- the key ---------------------------------------------------------------------------------


def _from_prompt(p: Prompt) -> ProviderRequest:
    """What the pipeline hands the provider: no id, no metadata, no tenant."""
    return ProviderRequest(
        messages=tuple(Message(m.role, m.content) for m in p.messages or ()) or None,
        prompt=p.prompt,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=(p.stop,) if isinstance(p.stop, str) else (tuple(p.stop) if p.stop else None),
        seed=p.seed,
    )


def test_key_ignores_request_id_metadata_and_headers() -> None:
    a = msgspec.json.decode(
        b'{"id":"a-1","model":"m","messages":[{"role":"user","content":"hi"}],'
        b'"temperature":0.2,"metadata":{"trace":1}}',
        type=Prompt,
    )
    b = msgspec.json.decode(
        b'{"metadata":{"other":"x"},"temperature":0.2,"id":"b-2","model":"m",'
        b'"messages":[{"content":"hi","role":"user"}],"dedup":true}',
        type=Prompt,
    )
    assert dedup_key("m", _from_prompt(a)) == dedup_key("m", _from_prompt(b))


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.7},
        {"seed": 7},
        {"stop": ("\n",)},
        {"top_p": 0.9},
        {"max_tokens": 10},
    ],
)
def test_key_changes_with_every_answer_changing_parameter(change: dict[str, object]) -> None:
    base = req(temperature=0.2)
    changed = msgspec.structs.replace(base, **change)
    assert dedup_key("m", base) != dedup_key("m", changed)


def test_key_changes_with_model_content_role_and_prompt_form() -> None:
    keys = {
        dedup_key("m", req("hi")),
        dedup_key("other-model", req("hi")),
        dedup_key("m", req("hi!")),
        dedup_key("m", ProviderRequest(messages=(Message("system", "hi"),))),
        dedup_key("m", ProviderRequest(prompt="hi")),
        dedup_key("m", ProviderRequest(messages=(Message("user", "hi"), Message("user", "")))),
    }
    assert len(keys) == 6


def test_stop_order_matters_but_equal_requests_agree() -> None:
    assert dedup_key("m", req(stop=("a", "b"))) == dedup_key("m", req(stop=("a", "b")))
    assert dedup_key("m", req(stop=("a", "b"))) != dedup_key("m", req(stop=("b", "a")))


def test_tenant_scopes_the_key_only_when_passed() -> None:
    r = req()
    assert dedup_key("m", r, tenant="acme") != dedup_key("m", r, tenant="globex")
    assert dedup_key("m", r, tenant="acme") != dedup_key("m", r)
    assert dedup_key("m", r) == dedup_key("m", req())
    assert len(dedup_key("m", r)) == 32 and int(dedup_key("m", r), 16) >= 0


# -- singleflight ----------------------------------------------------------------------------


async def test_concurrent_duplicates_cause_one_call_per_distinct_key() -> None:
    window: DedupWindow[str] = DedupWindow()
    distinct = [dedup_key("m", req(f"question {i}")) for i in range(300)]
    rng = random.Random(1)
    keys = distinct + [rng.choice(distinct) for _ in range(700)]
    rng.shuffle(keys)
    calls: dict[str, int] = {}
    release = asyncio.Event()

    def caller(key: str):  # type: ignore[no-untyped-def]
        async def call() -> str:
            calls[key] = calls.get(key, 0) + 1
            await release.wait()
            return f"answer to {key}"

        return call

    tasks = [asyncio.create_task(window.run(k, caller(k), len)) for k in keys]
    await asyncio.sleep(0)  # everyone has arrived: 300 leaders are in flight
    assert window.stats().inflight == 300
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)

    assert len(calls) == 300 and all(n == 1 for n in calls.values())
    assert [value for value, _ in results] == [f"answer to {k}" for k in keys]
    assert sum(not shared for _, shared in results) == 300
    assert sum(shared for _, shared in results) == 700
    st = window.stats()
    assert (st.leaders, st.coalesced, st.inflight, st.entries) == (300, 700, 0, 300)


async def test_leader_failure_reaches_followers_with_its_class_and_is_not_cached() -> None:
    window: DedupWindow[str] = DedupWindow()
    release = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise RateLimited("slow down", provider="openai", status=429, retry_after=2.0)

    tasks = [asyncio.create_task(window.run("k", failing, len)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(type(o) is RateLimited for o in outcomes)
    assert all(o.retry_after == 2.0 and o.status == 429 for o in outcomes)  # type: ignore[union-attr]

    async def ok() -> str:
        nonlocal calls
        calls += 1
        return "fine"

    assert await window.run("k", ok, len) == ("fine", False)  # the failure was not remembered
    assert calls == 2
    assert window.stats().failures == 1


async def test_cancelled_leader_hands_over_and_followers_do_not_hang() -> None:
    window: DedupWindow[str] = DedupWindow()
    started = 0
    never = asyncio.Event()

    async def leader_call() -> str:
        nonlocal started
        started += 1
        await never.wait()  # hangs until cancelled
        return "unreachable"

    async def follower_call() -> str:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        return "from the new leader"

    leader = asyncio.create_task(window.run("k", leader_call, len))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(window.run("k", follower_call, len)) for _ in range(4)]
    await asyncio.sleep(0)
    leader.cancel()
    results = await asyncio.wait_for(asyncio.gather(*followers), 2)

    with pytest.raises(asyncio.CancelledError):
        await leader
    assert started == 2  # the cancelled leader, then exactly one taker-over
    assert [v for v, _ in results] == ["from the new leader"] * 4
    assert sorted(shared for _, shared in results) == [False, True, True, True]
    assert window.stats().takeovers == 1


async def test_cancelled_follower_does_not_disturb_leader_or_others() -> None:
    window: DedupWindow[str] = DedupWindow()
    release = asyncio.Event()

    async def call() -> str:
        await release.wait()
        return "done"

    leader = asyncio.create_task(window.run("k", call, len))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(window.run("k", call, len))
    stayer = asyncio.create_task(window.run("k", call, len))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await leader == ("done", False)
    assert await stayer == ("done", True)
    assert quitter.cancelled()


async def test_answers_are_served_until_the_window_expires() -> None:
    clock = FakeClock()
    window: DedupWindow[str] = DedupWindow(window_s=60.0, clock=clock)
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return f"answer {calls}"

    assert await window.run("k", call, len) == ("answer 1", False)
    clock.now += 59.9
    assert await window.run("k", call, len) == ("answer 1", True)
    clock.now += 0.2
    assert await window.run("k", call, len) == ("answer 2", False)
    assert calls == 2
    st = window.stats()
    assert (st.hits, st.expirations, st.entries) == (1, 1, 1)


async def test_byte_cap_evicts_oldest_first() -> None:
    window: DedupWindow[str] = DedupWindow(max_bytes=100)
    calls: list[str] = []

    def make(key: str):  # type: ignore[no-untyped-def]
        async def call() -> str:
            calls.append(key)
            return "x" * 40

        return call

    for key in ("a", "b", "c"):
        await window.run(key, make(key), len)
    st = window.stats()
    assert (st.entries, st.bytes, st.evictions) == (2, 80, 1)
    assert (await window.run("c", make("c"), len))[1] is True
    assert (await window.run("b", make("b"), len))[1] is True
    assert (await window.run("a", make("a"), len))[1] is False  # "a" was evicted
    assert calls == ["a", "b", "c", "a"]
    assert window.stats().bytes <= 100


async def test_entry_cap_and_too_big_results() -> None:
    window: DedupWindow[str] = DedupWindow(max_entries=2, max_bytes=10)

    async def small() -> str:
        return "ok"

    async def huge() -> str:
        return "x" * 11

    for key in ("a", "b", "c"):
        await window.run(key, small, len)
    assert window.stats().entries == 2
    assert await window.run("big", huge, len) == ("x" * 11, False)
    assert await window.run("big", huge, len) == ("x" * 11, False)  # never stored
    assert window.stats().too_big == 2


async def test_zero_window_still_coalesces_in_flight() -> None:
    window: DedupWindow[str] = DedupWindow(window_s=0)
    release = asyncio.Event()
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "v"

    tasks = [asyncio.create_task(window.run("k", call, size1)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert calls == 1
    await window.run("k", call, size1)
    assert calls == 2 and window.stats().entries == 0


async def test_failure_with_no_followers_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    window: DedupWindow[str] = DedupWindow()

    async def boom() -> str:
        raise ServerError("500")

    with pytest.raises(ServerError):
        await window.run("k", boom, len)
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


def test_get_answers_from_the_window_without_waiting() -> None:
    clock = FakeClock()
    window: DedupWindow[str] = DedupWindow(window_s=60.0, clock=clock)
    assert window.get("k") is None  # nothing stored yet
    window._store("k", "answer", len)
    assert window.get("k") == "answer"
    clock.now += 60.1
    assert window.get("k") is None  # expired: dropped, the next request leads again
    st = window.stats()
    assert (st.hits, st.expirations, st.entries) == (1, 1, 0)


async def test_get_does_not_answer_a_call_still_in_flight() -> None:
    window: DedupWindow[str] = DedupWindow()
    release = asyncio.Event()

    async def call() -> str:
        await release.wait()
        return "answer"

    leader = asyncio.create_task(window.run("k", call, len))
    await asyncio.sleep(0)
    assert window.get("k") is None  # in flight: only `run` can follow it
    release.set()
    assert await leader == ("answer", False)
    assert window.get("k") == "answer"


# -- the pipeline answers window hits without a task ----------------------------------------


class _Registry:
    def __init__(self) -> None:
        row = ModelRow(
            model_id="m",
            provider="fake",
            endpoint="http://fake/v1",
            upstream_model="up",
            input_cost_per_1k=1.0,
            output_cost_per_1k=2.0,
        )
        self.candidates = [
            Candidate(
                provider="fake",
                endpoint="http://fake/v1",
                upstream_model="up",
                endpoint_name="m/primary",
                row=row,
                fallback=False,
            )
        ]

    def resolve(self, model_id: str) -> list[Candidate]:
        return list(self.candidates)


class _Caller:
    def __init__(self) -> None:
        self.calls = 0

    async def call(
        self, candidates: list[Candidate], request: ProviderRequest, **_: object
    ) -> CallResult:
        self.calls += 1
        await asyncio.sleep(0)
        return CallResult(
            result=ProviderResult(
                text="answer", finish_reason="stop", input_tokens=100, output_tokens=50
            ),
            candidate=candidates[0],
            attempts=2,
            latency_ms=12.5,
        )


def _record(offset: int, request_id: str) -> InputRecord:
    value = msgspec.json.encode(
        {"id": request_id, "model": "m", "prompt": "same question", "metadata": {"n": offset}}
    )
    return InputRecord(topic="p", partition=0, offset=offset, value=value, key=b"k")


async def test_begin_answers_a_window_hit_synchronously_with_its_own_completion() -> None:
    caller = _Caller()
    window: DedupWindow[CallResult] = DedupWindow()
    pipeline = Pipeline(
        load_settings({}),
        _Registry(),
        caller,
        Metrics(),
        dedup=window,  # type: ignore[arg-type]
    )
    first = pipeline.begin(_record(0, "a"))
    assert isinstance(first, Pending)  # nothing stored yet: it needs the provider call
    led = await pipeline.finish(first)
    assert led.completion is not None
    assert (led.completion.deduplicated, led.completion.attempts) == (False, 2)
    assert led.completion.usage is not None and led.completion.usage.cost_usd == 0.2

    hit = pipeline.begin(_record(1, "b"))  # identical request: answered right here
    assert isinstance(hit, Outcome) and hit.completion is not None
    c = hit.completion
    assert (c.id, c.text, c.metadata) == ("b", "answer", {"n": 1})
    assert (c.deduplicated, c.attempts) == (True, 0)
    assert c.usage is not None and c.usage.cost_usd == 0.0
    assert msgspec.json.decode(hit.value)["id"] == "b" and hit.key == b"k"
    assert caller.calls == 1 and window.stats().hits == 1


async def test_bytes_are_given_back_when_answers_expire_or_are_cleared() -> None:
    """`llm_worker_dedup_bytes` follows what is kept: expiry and clear() give bytes back."""
    clock = FakeClock()
    window: DedupWindow[str] = DedupWindow(window_s=10.0, max_bytes=1000, clock=clock)

    async def answer() -> str:
        return "x" * 100

    await window.run("a", answer, len)
    await window.run("b", answer, len)
    assert window.stats().bytes == 200
    clock.now += 11
    assert window.get("a") is None  # expired: dropped
    assert window.stats().bytes == 100
    await window.run("c", answer, len)  # "b" expired too: pruned when "c" is stored
    assert window.stats().bytes == 100 and len(window) == 1
    window.clear()
    assert window.stats().bytes == 0 and len(window) == 0
    await window.run("d", answer, len)
    assert window.stats().bytes == 100
