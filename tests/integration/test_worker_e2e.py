"""The whole path on a real broker and a real Postgres, worker in-process."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


def _row(model_id: str, endpoint: str, **kw: object) -> ModelRow:
    return ModelRow(
        model_id=model_id,
        provider="fake",
        endpoint=endpoint,
        upstream_model=f"up-{model_id}",
        max_tokens=64,
        timeout_ms=5000,
        input_cost_per_1k=0.001,
        output_cost_per_1k=0.002,
        **kw,  # type: ignore[arg-type]
    )


async def _wait_commits(s: Settings, expected: dict[int, int], partitions: int) -> dict[int, int]:
    got: dict[int, int] = {}
    for _ in range(100):
        got = await asyncio.to_thread(
            kh.committed, s.kafka_bootstrap_servers, s.group_id, s.prompts_topic, partitions
        )
        if all(got.get(p) == off for p, off in expected.items()):
            break
        await asyncio.sleep(0.2)
    return got


async def test_thousand_prompts_in_thousand_completions_out(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 4)
    prompts = [
        {"id": f"req-{i}", "model": "m1", "prompt": f"question {i}", "metadata": {"n": i}}
        for i in range(1000)
    ]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    async with App(s, http=False).running():
        out = await asyncio.to_thread(kh.consume, bs, s.completions_topic, 1000, 120)
        ids = [r.json()["id"] for r in out]
        assert sorted(ids) == sorted(p["id"] for p in prompts)  # one to one, none extra
        by_id = {r.json()["id"]: r for r in out}
        sample = by_id["req-7"]
        doc = sample.json()
        assert doc["status"] == "ok" and doc["metadata"] == {"n": 7}
        assert "question 7" in doc["text"] and doc["provider"] == "fake"
        assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["cost_usd"] > 0
        assert doc["attempts"] == 1 and doc["fallback_used"] is False
        assert sample.key == b"req-7"  # the input key is kept
        # committed offset of every partition = one past the last offset consumed from it
        inputs = await asyncio.to_thread(kh.consume, bs, s.prompts_topic, 1000, 60)
        expected = {p: off + 1 for p, off in kh.last_offsets(inputs).items()}
        assert len(expected) == 4
        got = await _wait_commits(s, expected, 4)
        assert got == expected


async def test_bad_input_never_stops_the_stream(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(max_message_bytes=2000)
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)

    def good(i: int) -> bytes:
        return json.dumps({"id": f"good-{i}", "model": "m1", "prompt": "hi"}).encode()

    records: list[bytes] = [
        good(0),
        b"{this is not json",  # -> DLQ invalid_json
        good(1),
        json.dumps({"model": "m1", "prompt": "no id"}).encode(),  # -> DLQ missing_id
        good(2),
        json.dumps({"id": "bad-type", "model": "m1", "prompt": "x", "max_tokens": "lots"}).encode(),
        json.dumps(
            {
                "id": "bad-both",
                "model": "m1",
                "prompt": "x",
                "messages": [{"role": "user", "content": "y"}],
            }
        ).encode(),
        json.dumps({"id": "bad-neither", "model": "m1"}).encode(),
        json.dumps({"id": "bad-big", "model": "m1", "prompt": "x" * 5000}).encode(),
        json.dumps({"id": "bad-model", "model": "no-such-model", "prompt": "x"}).encode(),
        good(3),
    ]
    await asyncio.to_thread(kh.produce, bs, s.prompts_topic, records)
    async with App(s, http=False).running():
        comps = {
            r.json()["id"]: r.json()
            for r in await asyncio.to_thread(kh.consume, bs, s.completions_topic, 9, 60)
        }
        dlq = await asyncio.to_thread(kh.consume, bs, s.dlq_topic, 2, 60)
        got = await _wait_commits(s, {0: len(records)}, 1)
    for i in range(4):
        assert comps[f"good-{i}"]["status"] == "ok"
    for rid, etype in [
        ("bad-type", "validation_error"),
        ("bad-both", "validation_error"),
        ("bad-neither", "validation_error"),
        ("bad-big", "payload_too_large"),
        ("bad-model", "unknown_model"),
    ]:
        assert comps[rid]["status"] == "error", rid
        assert comps[rid]["error"]["type"] == etype, comps[rid]
    assert "max_tokens" in comps["bad-type"]["error"]["message"]
    assert "no-such-model" in comps["bad-model"]["error"]["message"]
    reasons = {r.headers["llm_worker.reason"]: r for r in dlq}
    assert set(reasons) == {b"invalid_json", b"missing_id"}
    assert reasons[b"invalid_json"].value == b"{this is not json"  # original bytes kept
    assert reasons[b"invalid_json"].headers["llm_worker.source"].endswith(b"/0/1")
    assert got == {0: len(records)}  # every offset advanced, bad ones included


async def test_failing_primary_is_answered_by_the_fallback(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(max_attempts=2)
    fake.set_profile("down", error_rate=1.0, error_status=503)
    upsert_row(
        pg_dsn,
        _row(
            "m1",
            fake.endpoint("down"),
            fallback_provider="fake",
            fallback_endpoint=fake.endpoint(),
            fallback_model="backup-model",
        ),
    )
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    prompts = [{"id": f"f-{i}", "model": "m1", "prompt": f"p{i}"} for i in range(40)]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    async with App(s, http=False).running():
        out = [
            r.json() for r in await asyncio.to_thread(kh.consume, bs, s.completions_topic, 40, 60)
        ]
    assert len(out) == 40
    assert all(c["status"] == "ok" for c in out), Counter(c["status"] for c in out)
    assert all(c["fallback_used"] and c["upstream_model"] == "backup-model" for c in out)
    assert all(c["endpoint_name"] == "m1/fallback" for c in out)
    # two tries on the primary, then the fallback; once the primary's circuit breaker has seen
    # its minimum of 20 failures it opens, and the rest skip the primary (fewer attempts)
    assert {c["attempts"] for c in out} <= {1, 2, 3}
    assert any(c["attempts"] == 3 for c in out) and any(c["attempts"] < 3 for c in out)
    assert 20 <= fake.counters("down")["requests"] < 80


async def test_all_candidates_failing_ends_with_an_error_at_the_deadline(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """A retryable failure is held and tried again, not answered with an error after the
    attempts: only the request's deadline ends it, with the provider's last error."""
    s = make_settings(max_attempts=2, request_deadline_s=3.0)
    fake.set_profile("down", error_rate=1.0, error_status=500)
    upsert_row(pg_dsn, _row("m1", fake.endpoint("down")))
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    await asyncio.to_thread(
        kh.produce_prompts, bs, s.prompts_topic, [{"id": "x1", "model": "m1", "prompt": "p"}]
    )
    async with App(s, http=False).running():
        out = [
            r.json() for r in await asyncio.to_thread(kh.consume, bs, s.completions_topic, 1, 60)
        ]
    assert out[0]["status"] == "error"
    assert out[0]["error"]["type"] == "server_error" and out[0]["error"]["retryable"] is True
    assert "request deadline passed" in out[0]["error"]["message"]
    assert out[0]["attempts"] > 2  # more than the two attempts of one pass
    assert out[0]["attempts"] == fake.counters("down")["requests"]
