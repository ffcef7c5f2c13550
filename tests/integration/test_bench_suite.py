"""`llm-worker bench <scenario>` end to end on the session's broker and Postgres: a tiny
throughput, duplicates and soak run, through the real command line, each answering every
prompt on both systems, with the figures a user reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from llm_worker.devkit.bench.traffic import Publisher
from llm_worker.worker.config import load_settings
from tests.integration import kafka_helpers as kh
from tests.integration.conftest import kafka_test_env

pytestmark = pytest.mark.integration


def test_a_tiny_suite_runs_every_prompt_through_worker_and_baseline(
    kafka_bootstrap: str, pg_dsn: str, broker_kind: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env.update(kafka_test_env(), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DATABASE_URL=pg_dsn)
    # the worker's and the baseline's processes start in a few seconds each; bounded anyway
    args = ["throughput", "duplicates", "soak", "-n", "300", "--latency-ms", "5"]
    args += ["--rate", "100", "--duration", "3", "--broker", broker_kind]
    done = subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["scenario"] for line in lines] == ["throughput", "duplicates", "soak"]
    throughput, duplicates, soak = lines
    for line in lines:
        assert line["broker"] == broker_kind
        for run in line["runs"]:
            assert run["completions"] == run["count"] == 300, run
            assert run["ok"] == 300 and run["errors"] == {}
            assert run["cpu_s_per_1k"] > 0 and run["peak_rss_mb"] > 0
            assert run["overhead_ms"]["p99"] is not None
    assert [r["system"] for r in throughput["runs"]] == ["worker", "baseline"]
    assert [r["provider_calls"] for r in throughput["runs"]] == [300, 300]
    assert set(throughput["vs_baseline"]) == {
        "throughput_ratio",
        "sustained_ratio",
        "cpu_per_completion_ratio",
    }
    worker, baseline = duplicates["runs"]
    # 70% repeats: the worker calls the provider once per distinct prompt, the plain loop
    # once per prompt (a follower arriving after its leader's answer is served from the window)
    assert worker["provider_calls"] == 90 and worker["dedup_ratio"] == 0.7
    assert baseline["provider_calls"] == 300 and baseline["dedup_ratio"] == 0.0
    # paced at 100/s: 300 prompts take 3 s at least (however slow the machine)
    for line in lines:
        assert all(r["throughput_per_s"] < 110 for r in line["runs"]), line
    assert [r["system"] for r in soak["runs"]] == ["worker"]
    assert soak["rss_samples"] >= 1 and soak["duration_s"] == 3.0
    # the summary table, after the progress bars
    assert "scenario" in done.stderr and "baseline" in done.stderr


def test_the_publisher_paces_what_it_sends(kafka_bootstrap: str) -> None:
    """The paced load of `bench failover` and the replica tests: prompt i leaves no earlier
    than i / rate after the start (a delivery report must not let the next one out early)."""
    env = {**kafka_test_env(), "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    settings = load_settings({**env, "LLM_WORKER_PROMPTS_TOPIC": f"pace_{uuid.uuid4().hex}"})
    kh.create_topic(kafka_bootstrap, settings.prompts_topic, 2)
    publisher = Publisher(settings, "pace", 100.0, 2, "m1")
    t0 = time.time()
    publisher.start()
    time.sleep(1.5)
    publisher.stop.set()
    publisher.join(timeout=60)
    assert publisher.error is None
    sent = sorted(t for t, _ in publisher.sent.values())
    assert len(sent) >= 50
    # 100/s: the i-th prompt no earlier than i/100 s after the first (5 ms of clock slack)
    early = [i for i, t in enumerate(sent) if t < sent[0] + i / 100.0 - 0.005]
    assert not early, f"{len(early)} of {len(sent)} prompts left early"
    assert sent[-1] - t0 < 1.5 + 1.0  # and it did stop when told
