"""Per-prompt deadlines through the real broker (issue 27): expired prompts make no call.

Real broker, real Postgres, the worker in-process, the fake provider in-process counting the
calls that reach it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration.test_features import Completions, _calls, _row, _send, _topics

pytestmark = pytest.mark.integration


async def test_expired_prompts_make_no_call(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """1,000 prompts already past their `deadline`: 1,000 `deadline_exceeded` completions,
    `attempts: 0`, no provider call; live prompts in the same run (a future `deadline`, a
    `ttl_ms`) are answered. The expired ones repeat the live ones' text: no dedup answer
    reaches them either."""
    s = make_settings()
    fake.set_profile("dl", latency_ms=20)
    upsert_row(pg_dsn, _row("m1", fake.endpoint("dl")))
    await _topics(s)
    now_ms = int(time.time() * 1000)
    live = [
        {"id": f"live-{i}", "model": "m1", "prompt": f"question {i}", "deadline": now_ms + 120_000}
        for i in range(5)
    ]
    live += [
        {"id": f"ttl-{i}", "model": "m1", "prompt": f"question {5 + i}", "ttl_ms": 120_000}
        for i in range(2)
    ]
    expired = [
        {
            "id": f"late-{i}",
            "model": "m1",
            "prompt": f"question {i % 7}",
            "deadline": now_ms - 1000 - i,
            **({"ttl_ms": 600_000} if i % 2 else {}),  # both given: the earlier wins
        }
        for i in range(1000)
    ]
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, live[:3] + expired[:500] + live[3:] + expired[500:])
        out = await comps.wait([p["id"] for p in live + expired], timeout=120)
    counted = app.metrics.registry.get_sample_value(
        "llm_worker_completion_errors_total", {"type": "deadline_exceeded"}
    )
    assert counted == 1000  # the errors metric, by type, counts them
    late = [out[p["id"]] for p in expired]
    assert Counter(c["status"] for c in late) == {"error": 1000}
    assert Counter(c["error"]["type"] for c in late) == {"deadline_exceeded": 1000}
    assert all(c["attempts"] == 0 and not c["deduplicated"] for c in late)
    assert all(c["error"]["retryable"] is False for c in late)
    assert "before the worker took it" in late[0]["error"]["message"]
    for p in live:
        c = out[p["id"]]
        assert c["status"] == "ok" and c["attempts"] == 1, c
    assert _calls(fake, "dl") == len(live)  # the expired ones: none
    assert all(len(v) == 1 for v in comps.by_id().values()), "every id answered once"
