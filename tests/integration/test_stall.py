"""One prompt must not stall the worker (issue 21, finding 1), replayed as reported, through
the real broker and Postgres.

A registry row with no `max_tokens` and `tpm_limit` 60,000, and a tenant TPM limit. One prompt
asks for `max_tokens: 10**15`. It used to be answered `ok` and leave the row's bucket and the
tenant's in debt for ~31,000 years: later prompts for the row or the tenant were never
answered, and once they filled the in-flight slots, neither were unrelated ones. Now it is
refused at once with `bad_request` naming the limit, and everything after it is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


async def test_a_huge_max_tokens_is_refused_and_stalls_nothing(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    for row in (
        ModelRow(
            model_id="limited",
            provider="fake",
            endpoint=fake.endpoint(),
            upstream_model="u",
            tpm_limit=60_000,
        ),
        ModelRow(model_id="free", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
    ):
        upsert_row(pg_dsn, row)
    # few slots, so that held prompts would fill them (as in the report)
    s = make_settings(tenant_tpm=60_000, max_in_flight=16)
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    huge = {"id": "huge", "model": "limited", "prompt": "hi", "max_tokens": 10**15, "tenant": "t"}
    later = [
        *({"id": f"row-{i}", "model": "limited", "prompt": f"r{i}"} for i in range(20)),
        *(
            {"id": f"tenant-{i}", "model": "free", "prompt": f"t{i}", "tenant": "t"}
            for i in range(20)
        ),
        *({"id": f"other-{i}", "model": "free", "prompt": f"o{i}"} for i in range(10)),
    ]
    async with App(s, http=False).running() as app:
        await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, [huge])
        (first,) = await asyncio.to_thread(
            kh.consume_until_ids, bs, s.completions_topic, {"huge"}, 60.0, quiet_s=0.5
        )
        await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, later)
        out = await asyncio.to_thread(
            kh.consume_until_ids, bs, s.completions_topic, {p["id"] for p in later}, 60.0
        )
        ready, detail = app.ready()
    # every later prompt answered: for the row, for the tenant, and unrelated ones
    answered = {c["id"]: c for c in out if c["id"] != "huge"}
    assert len(answered) == 50, sorted(set(p["id"] for p in later) - set(answered))
    assert all(c["status"] == "ok" for c in answered.values()), [
        c for c in answered.values() if c["status"] != "ok"
    ]
    assert first["status"] == "error" and first["attempts"] == 0
    assert first["error"]["type"] == "bad_request" and first["error"]["retryable"] is False
    assert first["error"]["message"].startswith(
        "max_tokens 1000000000000000 (about 1000000000000001 tokens with the prompt) exceeds the"
        " tpm limit 60000 of registry row 'limited' (its tpm_limit)"
    )
    assert ready, detail["checks"]
    assert detail["checks"]["intake"]["state"] == "moving"
