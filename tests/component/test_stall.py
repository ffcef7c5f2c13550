"""One prompt must not stall the worker (issue 21, finding 1), through the real `App`:

- a `max_tokens` no rate limit could ever take is refused at once with `bad_request` naming
  the limit, and takes nothing from the buckets: the row's and the tenant's later prompts go;
- a worker whose intake stood still while work waits says so on `/readyz`.

The same through a real broker and Postgres: `tests/integration/test_stall.py`.
"""

from __future__ import annotations

from llm_worker.devkit.fake_server import FakeServer

from .conftest import run_app, wait_for


async def test_a_prompt_no_limit_can_hold_is_refused_and_the_rest_are_answered(
    provider: FakeServer,
) -> None:
    env = {"LLM_WORKER_TENANT_TPM": "60000"}
    rows = lambda h: [h.row("m1", tpm_limit=60_000), h.row("m2")]  # noqa: E731 (no max_tokens)
    async with run_app(provider, env, rows=rows) as h:
        h.send({"id": "huge", "model": "m1", "prompt": "hi", "max_tokens": 10**15})
        first = (await h.wait(["huge"]))["huge"]
        h.send(*({"id": f"row{i}", "model": "m1", "prompt": f"r{i}"} for i in range(5)))
        h.send(
            *({"id": f"t{i}", "model": "m2", "prompt": f"t{i}", "tenant": "x"} for i in range(5))
        )
        h.send(
            {
                "id": "tenant-huge",
                "model": "m2",
                "prompt": "hi",
                "max_tokens": 10**15,
                "tenant": "x",
            }
        )
        later = await h.wait([*(f"row{i}" for i in range(5)), *(f"t{i}" for i in range(5))], 10)
        tenant_huge = (await h.wait(["tenant-huge"]))["tenant-huge"]
    assert first["status"] == "error" and first["attempts"] == 0
    assert first["error"]["type"] == "bad_request" and first["error"]["retryable"] is False
    assert "max_tokens 1000000000000000" in first["error"]["message"]
    assert "the tpm limit 60000 of registry row 'm1'" in first["error"]["message"]
    assert all(c["status"] == "ok" for c in later.values()), later
    assert tenant_huge["error"]["type"] == "bad_request"
    assert "tenant 'x' (LLM_WORKER_TENANT_TPM)" in tenant_huge["error"]["message"]
    assert len(h.calls()) == 10  # neither huge prompt reached the provider


async def test_readyz_reports_intake_that_stood_still_while_work_waits(
    provider: FakeServer,
) -> None:
    provider.set_profile("slow", latency_ms=30_000)
    env = {"LLM_WORKER_MAX_IN_FLIGHT": "2", "LLM_WORKER_INTAKE_STALL_S": "0.5"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", "slow")]) as h:
        h.send(*({"id": f"p{i}", "model": "m1", "prompt": f"p{i}"} for i in range(5)))
        await wait_for(lambda: len(h.calls("slow")) == 2, what="two calls in flight")
        ok, detail = h.app.ready()
        intake = detail["checks"]["intake"]
        assert intake["ok"], intake  # just taken: moving
        await wait_for(lambda: not h.app.ready()[1]["checks"]["intake"]["ok"], 5, "a stall")
        ok, detail = h.app.ready()
    assert not ok
    state = detail["checks"]["intake"]["state"]
    assert state.startswith("stalled: no record taken for") and "2 are in flight" in state
