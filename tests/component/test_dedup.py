"""The dedup window as the environment configures it, counted at the provider."""

from __future__ import annotations

import asyncio
from typing import Any

from llm_worker.devkit.fake_server import FakeServer

from .conftest import Harness, run_app, wait_for


def _ask(rid: str, text: str = "same question", **kw: Any) -> dict[str, Any]:
    return {"id": rid, "model": "m1", "prompt": text, **kw}


async def _one_by_one(h: Harness, *prompts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send each prompt after the previous one was answered (window hits, not coalescing)."""
    out: dict[str, dict[str, Any]] = {}
    for p in prompts:
        h.send(p)
        out.update(await h.wait([p["id"]]))
    return out


async def test_identical_prompts_make_one_call_each_requester_gets_an_answer(
    provider: FakeServer,
) -> None:
    provider.set_profile("d", latency_ms=200)
    async with run_app(provider, rows=lambda h: [h.row("m1", "d", input_cost_per_1k=1.0)]) as h:
        h.send(*(_ask(f"c{i}", metadata={"i": i}) for i in range(3)))  # concurrent: coalesced
        await h.wait(["c0", "c1", "c2"])
        out = await _one_by_one(h, _ask("later", tenant="x"))  # from the window
        out.update(await h.wait(["c0", "c1", "c2"]))
        stats = h.app.dedup.stats() if h.app.dedup else {}
    assert len(h.calls("d")) == 1
    leader = [d for d in out.values() if not d["deduplicated"]]
    assert len(leader) == 1 and leader[0]["usage"]["cost_usd"] > 0
    for d in out.values():
        assert d["text"] == "[fake:up-m1] same question"
        if d["deduplicated"]:
            assert d["attempts"] == 0 and d["usage"]["cost_usd"] == 0
    assert [out[f"c{i}"]["metadata"] for i in range(3)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert stats.coalesced == 2 and stats.hits == 1


async def test_per_tenant_dedup(provider: FakeServer) -> None:
    rows = lambda h: [h.row("m1")]  # noqa: E731
    async with run_app(provider, {"LLM_WORKER_DEDUP_PER_TENANT": "true"}, rows=rows) as h:
        out = await _one_by_one(
            h, _ask("a1", tenant="a"), _ask("a2", tenant="a"), _ask("b1", tenant="b"), _ask("n")
        )
    assert len(h.calls()) == 3  # a, b and no tenant: one call each
    assert [out[i]["deduplicated"] for i in ("a1", "a2", "b1", "n")] == [False, True, False, False]


async def test_tenants_share_answers_unless_scoped(provider: FakeServer) -> None:
    async with run_app(provider, rows=lambda h: [h.row("m1")]) as h:
        out = await _one_by_one(h, _ask("a1", tenant="a"), _ask("b1", tenant="b"), _ask("n"))
    assert len(h.calls()) == 1
    assert [out[i]["deduplicated"] for i in ("a1", "b1", "n")] == [False, True, True]


async def test_a_failover_row_update_starts_a_new_dedup_entry(provider: FakeServer) -> None:
    """The key holds the resolved routing: after the row moves to another endpoint, the
    same prompt is asked there, not answered from the old endpoint's entry."""
    async with run_app(provider, rows=lambda h: [h.row("m1", "old")]) as h:
        await _one_by_one(h, _ask("before"))
        h.registry.put(h.row("m1", "new"))
        out = await _one_by_one(h, _ask("after"), _ask("again"))
    assert len(h.calls("old")) == 1 and len(h.calls("new")) == 1
    assert out["after"]["deduplicated"] is False and out["again"]["deduplicated"] is True


async def test_dedup_can_be_switched_off_per_worker_and_per_request(
    provider: FakeServer,
) -> None:
    async with run_app(
        provider, {"LLM_WORKER_DEDUP_ENABLED": "false"}, rows=lambda h: [h.row()]
    ) as h:
        out = await _one_by_one(h, _ask("x1"), _ask("x2"))
    assert len(h.calls()) == 2 and not any(d["deduplicated"] for d in out.values())
    provider.reset()
    async with run_app(provider, rows=lambda h: [h.row()]) as h:
        out = await _one_by_one(h, _ask("y1"), _ask("y2", dedup=False), _ask("y3"))
    assert len(h.calls()) == 2
    assert [out[i]["deduplicated"] for i in ("y1", "y2", "y3")] == [False, False, True]


async def test_window_and_memory_bounds(provider: FakeServer) -> None:
    rows = lambda h: [h.row()]  # noqa: E731
    async with run_app(provider, {"LLM_WORKER_DEDUP_WINDOW_S": "0.2"}, rows=rows) as h:
        await _one_by_one(h, _ask("w1"))
        await asyncio.sleep(0.4)
        out = await _one_by_one(h, _ask("w2"))
    assert len(h.calls()) == 2 and out["w2"]["deduplicated"] is False
    provider.reset()
    async with run_app(provider, {"LLM_WORKER_DEDUP_MAX_ENTRIES": "1"}, rows=rows) as h:
        await _one_by_one(h, _ask("e1", "A"), _ask("e2", "B"), _ask("e3", "A"), _ask("e4", "A"))
    assert [c.text for c in h.calls()] == ["A", "B", "A"]  # A was evicted by B
    provider.reset()
    async with run_app(provider, {"LLM_WORKER_DEDUP_MAX_BYTES": "100"}, rows=rows) as h:
        await _one_by_one(h, _ask("b1"), _ask("b2"))  # an answer takes > 256 bytes
    assert len(h.calls()) == 2


async def test_a_leaders_error_reaches_its_followers(provider: FakeServer) -> None:
    # terminal, so it ends at once (a retryable one is held until the deadline: issue 9)
    provider.set_profile("down", latency_ms=300, error_rate=1.0, error_status=401)
    env = {"LLM_WORKER_MAX_ATTEMPTS": "1"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "down")]) as h:
        h.send(*(_ask(f"f{i}") for i in range(3)))
        out = await h.wait(["f0", "f1", "f2"])
        await wait_for(lambda: h.app.dedup is not None and h.app.dedup.stats().inflight == 0)
        out.update(await _one_by_one(h, _ask("f3")))  # errors are not kept in the window
    assert len(h.calls("down")) == 2
    assert {d["error"]["type"] for d in out.values()} == {"auth_error"}
    assert sorted(d["deduplicated"] for d in out.values()) == [False, False, True, True]
