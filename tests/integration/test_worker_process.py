"""The worker as a real process: SIGKILL mid-stream loses nothing; SIGTERM exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from llm_worker.devkit.devstack import free_port, spawn_fake_provider
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_process() -> Iterator[str]:
    port = free_port()
    proc = spawn_fake_provider(port, "--latency-ms", "20")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _start(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
        env={**env, "LLM_WORKER_HTTP_PORT": str(free_port()), **extra},
        stdin=subprocess.DEVNULL,
    )


def _count_completions(bs: str, topic: str, until: int, timeout: float) -> int:
    return len(kh.consume(bs, topic, until, timeout, quiet_s=0))  # progress, not contents


def _setup(worker_env: dict[str, str], pg_dsn: str, fake_url: str, n: int) -> set[str]:
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1",
            provider="fake",
            endpoint=f"{fake_url}/v1",
            upstream_model="u",
            timeout_ms=5000,
        ),
    )
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    kh.create_topic(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], 4)
    kh.create_topic(bs, worker_env["LLM_WORKER_COMPLETIONS_TOPIC"], 4)
    prompts = [{"id": f"r-{i}", "model": "m1", "prompt": f"q{i}"} for i in range(n)]
    kh.produce_prompts(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], prompts)
    return {p["id"] for p in prompts}


def _report(capsys: pytest.CaptureFixture[str], what: str, docs: list[dict[str, object]]) -> int:
    counts = Counter(str(d["id"]) for d in docs)
    dups = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(f"\n[{what}] {len(counts)} ids answered, {len(docs)} completions, {dups} duplicates")
    return dups


def test_sigkill_mid_stream_then_restart_loses_nothing(
    worker_env: dict[str, str], pg_dsn: str, fake_process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 3000
    ids = _setup(worker_env, pg_dsn, fake_process, n)
    bs, out_topic = (
        worker_env["KAFKA_BOOTSTRAP_SERVERS"],
        worker_env["LLM_WORKER_COMPLETIONS_TOPIC"],
    )
    first = _start(worker_env, LLM_WORKER_MAX_IN_FLIGHT="64")  # slow enough to be killed mid-way
    try:
        seen = _count_completions(bs, out_topic, 300, 90)
        assert seen >= 300, "the worker produced nothing before the kill"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    # the worker is gone: read everything it wrote (a slow reader must not make this pass)
    partial = len({r.json()["id"] for r in kh.read_all(bs, out_topic)})
    assert partial < n, "the worker finished before it was killed: the test proved nothing"
    second = _start(worker_env)
    try:
        docs = kh.consume_until_ids(bs, out_topic, ids, timeout=120)
    finally:
        second.terminate()
        second.wait(30)
    assert {d["id"] for d in docs} == ids  # every input answered at least once
    assert all(d["status"] == "ok" for d in docs)
    _report(capsys, "sigkill", docs)


def test_sigterm_under_load_exits_cleanly_and_restart_loses_nothing(
    worker_env: dict[str, str], pg_dsn: str, fake_process: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 3000
    ids = _setup(worker_env, pg_dsn, fake_process, n)
    bs, out_topic = (
        worker_env["KAFKA_BOOTSTRAP_SERVERS"],
        worker_env["LLM_WORKER_COMPLETIONS_TOPIC"],
    )
    deadline_s = 10.0
    first = _start(
        worker_env, LLM_WORKER_MAX_IN_FLIGHT="64", LLM_WORKER_SHUTDOWN_TIMEOUT_S=str(deadline_s)
    )
    seen = _count_completions(bs, out_topic, 300, 90)
    assert seen >= 300
    t0 = time.monotonic()
    first.send_signal(signal.SIGTERM)
    code = first.wait(deadline_s + 20)
    took = time.monotonic() - t0
    assert code == 0, f"worker exited with {code}"
    with capsys.disabled():
        print(f"\n[sigterm] worker exited in {took:.2f} s (deadline {deadline_s} s)")
    # the worker is gone: read everything it wrote (a slow reader must not make this pass)
    partial = len({r.json()["id"] for r in kh.read_all(bs, out_topic)})
    assert partial < n, "the worker finished before SIGTERM: the test proved nothing"
    second = _start(worker_env)
    try:
        docs = kh.consume_until_ids(bs, out_topic, ids, timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    assert {d["id"] for d in docs} == ids
    # a clean shutdown settled its in-flight work and committed it: nothing is answered twice
    assert _report(capsys, "sigterm", docs) == 0


def test_unreachable_broker_gives_a_clear_error(pg_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
            "DATABASE_URL": pg_dsn,
            "LLM_WORKER_HTTP_PORT": str(free_port()),
            "LLM_WORKER_BROKER_WAIT_S": "3",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "cannot reach Kafka" in err and "KAFKA_BOOTSTRAP_SERVERS" in err
    assert "Traceback" not in err
