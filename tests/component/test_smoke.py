from __future__ import annotations

from llm_worker.devkit.fake_server import FakeServer

from .conftest import run_app


async def test_prompts_in_completions_out_offsets_committed(provider: FakeServer) -> None:
    async with run_app(provider, rows=lambda h: [h.row("m1")]) as h:
        h.send(*({"id": f"r{i}", "model": "m1", "prompt": f"q{i}"} for i in range(20)))
        out = await h.wait([f"r{i}" for i in range(20)])
        await h.settled()
    assert all(d["status"] == "ok" for d in out.values())
    assert out["r3"]["text"] == "[fake:up-m1] q3"
