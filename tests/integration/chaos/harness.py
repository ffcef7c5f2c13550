"""What every chaos test shares: worker processes, the fake provider as a process, prompts,
and the verdict (every id answered, errors by type, duplicates) with its one-line summary.

The summary line, printed past pytest's capture, is what the closing note of issue 15 quotes:

    [chaos] scenario=sigkill-x5 broker=tansu prompts=20000 answered=20000 errors=0
            duplicates=812 seconds=61.3   (one line)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llm_worker.devkit.devstack import free_port, spawn_fake_provider
from tests.integration.conftest import session_broker

__all__ = [
    "FakeProcess",
    "Progress",
    "Verdict",
    "WorkerProcess",
    "prompts",
    "verdict",
]


def prompts(n: int, model: str, prefix: str = "c") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "model": model, "prompt": f"{prefix} q{i}"} for i in range(n)]


@dataclass
class Verdict:
    scenario: str
    broker: str
    prompts: int
    answered: int
    errors: Counter[str]
    duplicates: int
    seconds: float
    lost: set[str] = field(default_factory=set)

    def line(self) -> str:
        errors = sum(self.errors.values())
        kinds = f" {dict(self.errors)}" if errors else ""
        return (
            f"[chaos] scenario={self.scenario} broker={self.broker} prompts={self.prompts} "
            f"answered={self.answered} errors={errors}{kinds} duplicates={self.duplicates} "
            f"seconds={self.seconds:.1f}"
        )


def verdict(
    scenario: str,
    ids: Iterable[str],
    docs: Iterable[dict[str, Any]],
    started: float,
    capsys: pytest.CaptureFixture[str],
) -> Verdict:
    """Count what the completions topic holds for `ids` and print the summary line.
    `started` is a `time.monotonic()` reading from the start of the scenario."""
    want = set(ids)
    mine = [d for d in docs if d.get("id") in want]
    per_id = Counter(str(d["id"]) for d in mine)
    # one outcome per id counts: the last one written (an earlier attempt may be a duplicate)
    last: dict[str, dict[str, Any]] = {}
    for d in mine:
        last[str(d["id"])] = d
    errors = Counter(d["error"]["type"] for d in last.values() if d["status"] != "ok")
    v = Verdict(
        scenario=scenario,
        broker=session_broker(),
        prompts=len(want),
        answered=len(per_id),
        errors=errors,
        duplicates=sum(n - 1 for n in per_id.values()),
        seconds=time.monotonic() - started,
        lost=want - set(per_id),
    )
    with capsys.disabled():
        print("\n" + v.line(), flush=True)
    report = os.environ.get("LLM_WORKER_CHAOS_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as fh:
            fh.write(v.line() + "\n")
    return v


class Progress:
    """Counts the distinct ids on a topic as they arrive, in a background thread (a live
    reader: on Tansu it may skip a record, so it measures progress; verdicts read again)."""

    def __init__(self, bootstrap: str, topic: str, isolation: str = "read_committed") -> None:
        self.ids: set[str] = set()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"progress-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
                "isolation.level": isolation,
            }
        )
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self._consumer.consume(500, 0.2):
                    if m.error() is None:
                        self.ids.add(str(json.loads(m.value() or b"{}")["id"]))
        finally:
            self._consumer.close()

    def wait(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while len(self.ids) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.ids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class WorkerProcess:
    """`llm-worker run` as a child process, its stderr in `log_dir/<name>.log`."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str, **extra: str) -> None:
        self.port = free_port()
        self.log = log_dir / f"{name}.log"
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llm_worker.worker.cli", "run"],
                env={**env, "LLM_WORKER_HTTP_PORT": str(self.port), **extra},
                stdin=subprocess.DEVNULL,
                stderr=fh,
            )

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of one of the worker's HTTP endpoints; (0, '') when unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def readyz(self) -> dict[str, Any]:
        status, body = self.get("/readyz")
        doc: dict[str, Any] = json.loads(body) if body else {}
        return {"status": status, **doc}

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (0 when absent)."""
        _, body = self.get("/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(name) and (line[len(name) : len(name) + 1] in ("{", " "))
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}; see {self.log}")
            if self.readyz().get("ready"):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout:.0f} s; see {self.log}")

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class FakeProcess:
    """`llm-worker fake-provider` as a child process, changed live through its admin API."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = spawn_fake_provider(self.port, "--latency-ms", "20", *args, quiet=True)

    def endpoint(self, profile: str = "default") -> str:
        return f"{self.url}/v1" if profile == "default" else f"{self.url}/{profile}/v1"

    def set_profile(self, profile: str, **settings: float) -> None:
        req = urllib.request.Request(
            f"{self.url}/admin/config/{profile}",
            data=json.dumps(settings).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5):
            pass

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def fake_process() -> Iterator[FakeProcess]:
    fake = FakeProcess()
    try:
        yield fake
    finally:
        fake.close()
