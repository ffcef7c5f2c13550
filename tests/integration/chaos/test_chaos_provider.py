"""Provider faults under a steady stream (worker and fake provider in this process, real broker
and Postgres). A transient fault (an error burst, a latency spike, connections reset
mid-response, hung responses that reach the timeout, malformed or truncated 200 bodies, a 429
storm with `Retry-After`, a provider that accepts connections and never answers) lasts a few
seconds and must cost no prompt and make no error completion: the fault policy holds and
retries. A persistent one ends every prompt in a clear error completion at the request's
deadline, and loses none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import prompts, verdict
from tests.integration.test_failover import Stream

pytestmark = pytest.mark.integration

FAULT_S = 3.0
"""How long a transient fault lasts."""

TIMEOUT_MS = 1000
"""The row's per-attempt timeout: a hung response reaches it quickly."""

FAST_BREAKER: dict[str, Any] = {"breaker_cooldown_s": 2.0, "breaker_window_s": 10.0}
"""Probes come sooner than by default, so the recovery fits a short test."""

TRANSIENT: dict[str, dict[str, float]] = {
    "error-burst": {"error_rate": 1.0, "error_status": 500},
    "latency-spike": {"latency_ms": 1500.0},
    "reset-mid-response": {"reset_rate": 0.5},
    "hung-responses": {"hang_rate": 0.3},
    "malformed-json": {"malformed_rate": 0.5},
    "truncated-json": {"truncated_rate": 0.5},
    "429-storm": {"error_rate": 1.0, "error_status": 429, "retry_after_s": 1.0},
    "never-answers": {"hang_rate": 1.0},
}

HEALED: dict[str, float] = {
    "error_rate": 0.0,
    "latency_ms": 5.0,
    "reset_rate": 0.0,
    "hang_rate": 0.0,
    "malformed_rate": 0.0,
    "truncated_rate": 0.0,
}


def _row(fake: FakeServer) -> ModelRow:
    return ModelRow(
        model_id="m1",
        provider="fake",
        endpoint=fake.endpoint("p"),
        upstream_model="u",
        timeout_ms=TIMEOUT_MS,
    )


async def _topics(s: Settings) -> None:
    for topic in (s.prompts_topic, s.completions_topic):
        await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, topic, 2)


@pytest.mark.parametrize("fault", list(TRANSIENT))
async def test_a_transient_provider_fault_costs_no_prompt(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    fake: FakeServer,
    fault: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    s = make_settings(request_deadline_s=60.0, **FAST_BREAKER)
    fake.set_profile("p", latency_ms=5)
    upsert_row(pg_dsn, _row(fake))
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await asyncio.sleep(1.0)
        fake.set_profile("p", **TRANSIENT[fault])
        await asyncio.sleep(FAULT_S)
        fake.set_profile("p", **HEALED)
        await asyncio.sleep(1.0)
    bs = s.kafka_bootstrap_servers
    docs = [r.json() for r in await asyncio.to_thread(kh.read_all, bs, s.completions_topic)]
    v = verdict(f"provider-{fault}", stream.sent, docs, started, capsys)
    calls = fake.calls("p")
    struck = sum(1 for c in calls if c.fault or (c.status or 200) >= 400)
    if fault != "latency-spike":
        assert struck > 0, "the fault never reached a request: the test proved nothing"
    assert not v.lost, f"{len(v.lost)} prompts lost"
    assert not v.errors, v.errors
    assert v.duplicates == 0


PERSISTENT: dict[str, tuple[dict[str, float], set[str]]] = {
    "server-errors": ({"error_rate": 1.0, "error_status": 503}, {"server_error"}),
    "never-answers": ({"hang_rate": 1.0}, {"timeout"}),
    "malformed-json": ({"malformed_rate": 1.0}, {"server_error"}),
}


@pytest.mark.serial  # a 4 s deadline: under a parallel pass's load a call once timed out first
@pytest.mark.parametrize("fault", list(PERSISTENT))
async def test_a_persistent_provider_fault_ends_in_clear_errors_at_the_deadline(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    fake: FakeServer,
    fault: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    deadline_s = 4.0
    s = make_settings(request_deadline_s=deadline_s, **FAST_BREAKER)
    settings, types = PERSISTENT[fault]
    fake.set_profile("p", latency_ms=5, **settings)
    upsert_row(pg_dsn, _row(fake))
    await _topics(s)
    sent = prompts(60, "m1", prefix=fault)
    ids = {p["id"] for p in sent}
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, sent)
    app = App(s, http=False)
    async with app.running():
        await asyncio.to_thread(kh.consume_until_ids, bs, s.completions_topic, ids, 90.0)
    docs = [r.json() for r in await asyncio.to_thread(kh.read_all, bs, s.completions_topic)]
    v = verdict(f"provider-persistent-{fault}", ids, docs, started, capsys)
    assert not v.lost
    assert sum(v.errors.values()) == len(ids)  # every prompt ends in an error completion...
    assert set(v.errors) <= types | {"circuit_open"}, v.errors  # ...of the fault's type
    reached = [d for d in docs if d["error"]["type"] in types]
    assert reached and all("request deadline passed" in d["error"]["message"] for d in reached)
    assert all(d["error"]["retryable"] for d in docs)
