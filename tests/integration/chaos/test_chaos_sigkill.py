"""SIGKILL the worker five times during one run, restarting it each time: every prompt is
answered, none with an error, and the duplicates (at least once: answered before the kill,
not yet committed) are counted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import FakeProcess, Progress, WorkerProcess, prompts, verdict

# alone, after the parallel pass: several worker processes under a fixed-rate or 20,000-prompt
# load need the machine to themselves (beside three other xdist processes a Tansu CI run
# answered 2,137 of 6,005 replica prompts within the wait)
pytestmark = [pytest.mark.integration, pytest.mark.serial]

PROMPTS = 20_000
KILLS = 5


def test_five_sigkills_lose_nothing(
    worker_env: dict[str, str],
    pg_dsn: str,
    fake_process: FakeProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1",
            provider="fake",
            endpoint=fake_process.endpoint(),
            upstream_model="u",
            timeout_ms=5000,
        ),
    )
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    out_topic = worker_env["LLM_WORKER_COMPLETIONS_TOPIC"]
    kh.create_topic(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], 4)
    kh.create_topic(bs, out_topic, 4)
    sent = prompts(PROMPTS, "m1")
    kh.produce_prompts(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], sent)
    ids = {p["id"] for p in sent}
    progress = Progress(bs, out_topic)
    try:
        for k in range(KILLS):
            worker = WorkerProcess(worker_env, tmp_path, f"worker-{k}")
            # each life answers another slice of the run, then dies mid-stream
            target = (k + 1) * PROMPTS // (KILLS + 2)
            reached = progress.wait(target, timeout=120)
            assert reached >= target, f"life {k} stalled at {reached} answers; see {worker.log}"
            worker.kill()
        assert len(progress.ids) < PROMPTS, "the run finished before the last kill"
        last = WorkerProcess(worker_env, tmp_path, "worker-last")
        try:
            progress.wait(PROMPTS, timeout=180)
        finally:
            assert last.stop() == 0
    finally:
        progress.close()
    docs = [r.json() for r in kh.read_all(bs, out_topic)]
    v = verdict("sigkill-x5", ids, docs, started, capsys)
    assert not v.lost, f"{len(v.lost)} prompts lost"
    assert not v.errors, v.errors
