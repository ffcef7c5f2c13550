"""The README's first command: `llm-worker dev --demo` shows completions flowing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _clean_env() -> dict[str, str]:
    """The environment of a new user: no broker, database or worker settings of the tests'."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") and not k.startswith("LLM_WORKER_")
    }


def test_dev_demo_prints_completions_and_cleans_up(broker_kind: str) -> None:
    """On the session's kind of broker (`--broker`), started and stopped by `dev` itself.

    `dev` gets a temp directory of its own (TMPDIR): brokers that other tests start meanwhile
    (in other pytest-xdist processes) make their directories elsewhere."""
    env = _clean_env()
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
    assert out.index("dev stack is ready") < out.index("sending 6 demo prompts")
    assert "worker stopped" in out


def test_dev_banner_means_a_send_is_answered_at_once(broker_kind: str) -> None:
    """The banner comes once the worker owns its partitions: the `send` it suggests is answered
    within seconds (before, with librdkafka's default 45 s session, Tansu took ~23 s to hand
    the new group its partitions and the first `send` waited that long). Ctrl-C then prints
    "worker stopped"."""
    env = _clean_env()
    with tempfile.TemporaryDirectory(prefix="llm-worker-dev-") as tmp:
        env["TMPDIR"] = tmp
        dev = subprocess.Popen(
            [*_CLI, "dev", "--http-port", "0", "--broker", broker_kind],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            banner = _read_banner(dev)
            bootstrap = re.search(r"KAFKA_BOOTSTRAP_SERVERS=(\S+) ", banner)
            assert bootstrap, banner
            assert "listening on 127.0.0.1" in banner  # the dev stack binds where it says
            t0 = time.monotonic()
            sent = subprocess.run(
                [*_CLI, "send", "Hello there", "--model", "chat-small", "--timeout", "20"],
                env={**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap.group(1)},
                capture_output=True,
                timeout=60,
                text=True,
            )
            took = time.monotonic() - t0
        finally:
            dev.send_signal(signal.SIGINT)
            rest, _ = dev.communicate(timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert '"status": "ok"' in sent.stdout
    # the process's own start-up (imports, metadata) included; ~23 s before the fix
    assert took < 8, f"the first send after the banner took {took:.1f} s"
    assert "worker stopped" in rest, rest
    assert dev.returncode == 0, rest


_CLI = [sys.executable, "-m", "llm_worker.worker.cli"]


def _read_banner(dev: subprocess.Popen[str], timeout: float = 180) -> str:
    """`dev`'s output up to the banner's last line, or a failure with what it printed."""
    assert dev.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = dev.stdout.readline()
        if not line:
            break  # dev ended before its banner
        lines.append(line)
        if line.startswith("Ctrl-C stops everything."):
            return "".join(lines)
    raise AssertionError("no banner from `dev`:\n" + "".join(lines))


def _run_dev(env: dict[str, str], broker_kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *_CLI,
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
