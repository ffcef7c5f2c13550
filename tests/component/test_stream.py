"""The consume loop against a bridge that behaves like librdkafka: rebalances, lost partitions,
pauses across rebalances, polling while full, shutdown and commit timing.

The issue-8 tests (polling while full, a partition paused at a rebalance, lost partitions,
a commit computed before a rebalance) failed on the stream before its fix.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from llm_worker.devkit.fake_server import FakeServer

from .conftest import Harness, run_app, wait_for
from .fakes import FakeBridge

P0, P1 = ("llm_prompts", 0), ("llm_prompts", 1)


def _prompts(prefix: str, n: int, model: str = "m1") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "model": model, "prompt": f"{prefix} {i}"} for i in range(n)]


async def _member(h: Harness) -> FakeBridge:
    """Another member of the worker's group (it takes partitions, reads nothing)."""
    other = FakeBridge(h.settings, h.broker)
    await other.start()
    return other


async def test_revoke_finishes_in_flight_work_and_commits_it(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=300)
    async with run_app(provider, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("a", 6), partition=0)
        h.send(*_prompts("b", 6), partition=1)
        await wait_for(lambda: len(h.calls("slow")) == 12, what="12 calls in flight")
        assert not any(c.answered for c in h.calls("slow"))
        other = await _member(h)  # the group rebalances: the worker gives up both partitions
        await wait_for(lambda: h.bridge.assignment == {P0}, what="p0 back")
        await h.wait([p["id"] for p in _prompts("a", 6) + _prompts("b", 6)])
        await h.settled()
        await other.close()
    # the revoke waited for the calls in flight and committed them before letting go of p1
    # (which the worker cannot commit afterwards: it is the other member's)
    assert ("revoke", [P0, P1]) in h.bridge.callbacks
    assert h.committed() == {0: 6, 1: 6}
    assert len(h.completions()) == 12  # nothing answered twice


async def test_commits_never_pass_an_unfinished_message(provider: FakeServer) -> None:
    """Out-of-order completion: offset 0 is slow, 1..9 are fast; nothing is committed past 0
    until 0 is done, and then everything is."""
    provider.set_profile("slow", latency_ms=800)
    rows = lambda h: [h.row("slow", "slow"), h.row("fast")]  # noqa: E731
    async with run_app(provider, rows=rows) as h:
        h.send({"id": "s", "model": "slow", "prompt": "s"}, partition=0)
        h.send(*_prompts("f", 9, "fast"), partition=0)
        await h.wait([f"f{i}" for i in range(9)])
        await asyncio.sleep(0.2)  # several commit intervals
        assert h.committed().get(0) is None and not h.calls("slow")[0].answered
        await h.wait(["s"])
        await h.settled()
    offsets = [o for _, k, o in h.broker.commit_history if k == P0]
    assert offsets == sorted(offsets) and offsets[-1] == 10


async def test_a_second_worker_joins_and_leaves_mid_stream(provider: FakeServer) -> None:
    """Every id answered; duplicates only of what was in flight at a hand-over; the final
    committed offsets are the ends of the input."""
    provider.set_profile("p", latency_ms=20)
    env = {"LLM_WORKER_MAX_IN_FLIGHT": "16", "LLM_WORKER_TOPIC_PARTITIONS": "4"}
    rows = lambda h: [h.row("m1", "p")]  # noqa: E731
    async with run_app(provider, env, rows=rows) as a:
        a.send(*_prompts("x", 200))
        await wait_for(lambda: len(a.completions()) >= 40, what="first answers")
        second = await _second_app(a)
        async with second.running():
            await wait_for(lambda: second.bridge.assignment != set(), what="second assigned")
            await wait_for(lambda: len(a.completions()) >= 120, what="more answers")
        await a.wait([p["id"] for p in _prompts("x", 200)])
        await a.settled()
    counts = Counter(d["id"] for d in a.completions())
    assert set(counts) == {p["id"] for p in _prompts("x", 200)}
    assert sum(n - 1 for n in counts.values()) <= 2 * 16  # at most the in-flight, twice


async def _second_app(h: Harness):  # type: ignore[no-untyped-def]
    from llm_worker.worker.app import App

    from .fakes import FakeRegistry

    registry = FakeRegistry(h.registry.rows.values())
    return App(
        h.settings,
        http=False,
        bridge=FakeBridge(h.settings, h.broker),  # type: ignore[arg-type]
        registry=registry,  # type: ignore[arg-type]
        connect_admin=h.broker.connect_admin,  # type: ignore[arg-type]
    )


async def test_a_worker_full_of_rate_limited_requests_keeps_polling(
    provider: FakeServer,
) -> None:
    """Requests waiting for rate-limit capacity fill the worker: it keeps polling (so the group
    keeps it; a worker full for a second or more holds its partitions while it polls) and no
    partition is left paused when the work is done."""
    env = {"LLM_WORKER_MAX_IN_FLIGHT": "3", "LLM_WORKER_TENANT_RPM": "120"}  # 2/s, burst 2
    async with run_app(provider, env, rows=lambda h: [h.row("m1")]) as h:
        h.send(*({**p, "tenant": "t"} for p in _prompts("r", 8)), partition=0)
        await wait_for(lambda: h.app.limiter.waiting > 0 and h.app.worker.in_flight >= 3)
        full_at = time.monotonic()
        await h.wait([p["id"] for p in _prompts("r", 8)])
        polls = h.bridge.polls_between(full_at, time.monotonic())
        took = time.monotonic() - full_at
        await h.settled()
    assert took > 2 and polls >= took / 1.5, (polls, took)  # at least every HOLD_AFTER_S
    assert h.bridge.paused == set()  # held partitions resumed


async def test_a_worker_full_of_slow_calls_keeps_polling(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=1500)
    env = {"LLM_WORKER_MAX_IN_FLIGHT": "4"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("s", 8), partition=0)
        await wait_for(lambda: len(h.calls("slow")) >= 4, what="4 calls in flight")
        full_at = h.calls("slow")[3].arrived
        await wait_for(lambda: h.calls("slow")[0].answered is not None, what="first answer")
        first_answer = h.calls("slow")[0].answered
        assert first_answer is not None
        polls = h.bridge.polls_between(full_at, first_answer)
        await h.wait([p["id"] for p in _prompts("s", 8)])
    assert polls >= 3, f"{polls} polls in {first_answer - full_at:.2f} s while full"


async def test_a_partition_paused_at_a_rebalance_is_read_again(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=200)
    env = {"LLM_WORKER_MAX_IN_FLIGHT_PER_PARTITION": "4", "LLM_WORKER_CONSUME_BATCH": "2"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("p", 30), partition=0)
        await wait_for(lambda: P0 in h.bridge.paused, what="p0 paused")
        other = await _member(h)
        await other.close()  # revoke, assign p0; revoke, assign both: p0 is ours again
        await wait_for(lambda: h.bridge.assignment == {P0, P1}, what="both back")
        await h.wait([p["id"] for p in _prompts("p", 30)], timeout=5)


async def test_lost_partitions_never_move_the_committed_offset_backwards(
    provider: FakeServer,
) -> None:
    """The worker is evicted while 5 calls of p0 are in flight; another owner answers and
    commits p0 up to 20; p0 comes back. The worker's late answers must not commit 5."""
    provider.set_profile("slow", latency_ms=1000)
    async with run_app(provider, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("l", 5), partition=0)
        await wait_for(lambda: len(h.calls("slow")) == 5, what="5 calls in flight")
        h.send(*_prompts("m", 15), partition=0)  # meanwhile answered by the new owner:
        group = h.settings.group_id
        with h.broker.cond:
            h.broker.committed[(group, "llm_prompts", 0)] = 20
            h.broker.commit_history.append((group, P0, 20))
        h.bridge.lose([P0])
        await wait_for(lambda: ("lost", [P0]) in h.bridge.callbacks, what="lost")
        await wait_for(lambda: all(c.answered for c in h.calls("slow")), what="late answers")
        await asyncio.sleep(0.3)  # several commit intervals
    offsets = [o for g, k, o in h.broker.commit_history if k == P0]
    assert offsets == sorted(offsets), offsets


async def test_a_commit_queued_across_a_fast_rebalance_does_not_move_backwards(
    provider: FakeServer,
) -> None:
    """While a revoke waits for p0's calls, the commit loop computes p0's offset so far (5)
    and queues it on the consumer thread; the revoke commits 10, and when the rejoin is fast
    enough to assign p0 in the same poll, the queued 5 lands after it."""
    provider.set_profile("a", latency_ms=300)
    provider.set_profile("b", latency_ms=900)
    rows = lambda h: [h.row("a", "a"), h.row("b", "b")]  # noqa: E731
    async with run_app(provider, rows=rows) as h:
        h.bridge.rejoin_in_same_poll = True
        h.send(*_prompts("a", 5, "a"), partition=0)
        h.send(*_prompts("b", 5, "b"), partition=0)
        await wait_for(lambda: len(h.calls(None)) == 10, what="10 calls in flight")
        other = await _member(h)
        await wait_for(lambda: h.bridge.assignment == {P0}, what="p0 back")
        await asyncio.sleep(0.3)
        offsets = [o for _, k, o in h.broker.commit_history if k == P0]
        await other.close()
    assert offsets == sorted(offsets), offsets


async def test_shutdown_abandons_calls_past_the_deadline_uncommitted(
    provider: FakeServer,
) -> None:
    provider.set_profile("stuck", latency_ms=30_000)
    env = {"LLM_WORKER_SHUTDOWN_TIMEOUT_S": "0.5"}
    rows = lambda h: [h.row("stuck", "stuck"), h.row("ok")]  # noqa: E731
    async with run_app(provider, env, rows=rows) as h:
        h.send({"id": "ok0", "model": "ok", "prompt": "x"}, partition=0)
        await h.wait(["ok0"])
        h.send({"id": "stuck", "model": "stuck", "prompt": "x"}, partition=0)
        h.send({"id": "ok1", "model": "ok", "prompt": "x"}, partition=0)
        await h.wait(["ok1"])
        await wait_for(lambda: len(h.calls("stuck")) == 1, what="the stuck call")
    # stopped long before the provider would have answered; 1 is the first unfinished offset
    assert h.calls("stuck")[0].status is None
    assert h.committed() == {0: 1}
    assert [d["id"] for d in h.completions()] == ["ok0", "ok1"]


async def test_commit_interval_is_honoured(provider: FakeServer) -> None:
    env = {"LLM_WORKER_COMMIT_INTERVAL_MS": "600000"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1")]) as h:
        h.send(*_prompts("c", 3), partition=0)
        await h.wait(["c0", "c1", "c2"])
        await asyncio.sleep(0.3)
        during = list(h.bridge.commits)
    assert during == []  # only every ten minutes...
    assert h.committed() == {0: 3}  # ...and at shutdown


async def test_per_partition_limit_pauses_and_resumes(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=150)
    env = {"LLM_WORKER_MAX_IN_FLIGHT_PER_PARTITION": "4", "LLM_WORKER_CONSUME_BATCH": "2"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("q", 20), partition=0)
        await wait_for(lambda: P0 in h.bridge.paused, what="p0 paused")
        await h.wait([p["id"] for p in _prompts("q", 20)])
        await h.settled()
    assert _peak(h.calls("slow")) <= 4 + 1  # checked before each batch of 2
    assert h.bridge.paused == set()


def _peak(calls: list) -> int:  # type: ignore[type-arg]
    """Most provider calls in progress at once (from the provider's own log)."""
    return max(
        sum(1 for c in calls if c.arrived <= t.arrived < (c.answered or float("inf")))
        for t in calls
    )


async def test_max_in_flight_bounds_concurrent_provider_calls(provider: FakeServer) -> None:
    provider.set_profile("slow", latency_ms=100)
    env = {"LLM_WORKER_MAX_IN_FLIGHT": "5", "LLM_WORKER_CONSUME_BATCH": "2"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*_prompts("n", 30))
        await h.wait([p["id"] for p in _prompts("n", 30)])
    assert _peak(h.calls("slow")) == 5
    assert max(asked for _, asked, _ in h.bridge.consumes) <= 2
    assert max(got for _, _, got in h.bridge.consumes) == 2
