"""The README's first command: `llm-worker dev --demo` shows completions flowing."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_dev_demo_prints_completions_and_cleans_up(broker_kind: str) -> None:
    """On the session's kind of broker (`--broker`), started and stopped by `dev` itself.

    `dev` gets a temp directory of its own (TMPDIR): brokers that other tests start meanwhile
    (in other pytest-xdist processes) make their directories elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") and not k.startswith("LLM_WORKER_")
    }
    env["LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS"] = "6000"
    with tempfile.TemporaryDirectory(prefix="llm-worker-dev-") as tmp:
        env["TMPDIR"] = tmp
        proc = _run_dev(env, broker_kind)
        left = list(Path(tmp).glob("llm-worker-kafka-*"))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "6/6 completions received" in out
    assert "chat-flaky" in out and "(fallback)" in out  # the failing primary was covered
    assert "unknown_model" in out  # the bad model got an error completion, not silence
    assert out.count("Say hello twice.'") == 2  # both identical prompts answered
    label = "Apache Kafka" if broker_kind == "kafka" else "Tansu"
    assert f"starting local broker ({label})" in out
    assert not left, "the Kafka broker's directory outlived `dev`"


def _run_dev(env: dict[str, str], broker_kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_worker.worker.cli",
            "dev",
            "--demo",
            "--once",
            "--http-port",
            "0",
            "--broker",
            broker_kind,
        ],
        env=env,
        capture_output=True,
        timeout=240,
        text=True,
    )
