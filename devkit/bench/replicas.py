"""Worker processes seen from a benchmark: readiness, group settling, what their JSON logs say,
and the fake provider's request counts."""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llm_worker.worker.config import Settings

__all__ = [
    "WorkerLog",
    "client_conf",
    "provider_requests",
    "read_log",
    "readyz",
    "wait_group",
    "wait_ready",
]


def client_conf(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    for k, v in settings.kafka_extra.items():
        if k.startswith(("security.", "sasl.", "ssl.", "client.")):
            conf[k] = v
    return conf


def provider_requests(url: str) -> dict[str, int]:
    try:
        with urllib.request.urlopen(f"{url}/admin/config", timeout=5) as resp:
            data = json.load(resp)
    except OSError:
        return {}
    profiles = data.get("profiles", {}) if isinstance(data, dict) else {}
    return {
        name: int(p.get("requests", 0))
        for name, p in profiles.items()
        if isinstance(p, dict) and p.get("requests")
    }


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            data: dict[str, Any] = json.load(r)
            return data
    except OSError:
        return {}


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker on :{port} exited with {proc.returncode}")
        if readyz(port).get("ready"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready on :{port} after {timeout:.0f} s")


def wait_group(ports: list[int], partitions: int, timeout: float) -> list[int]:
    """Until every partition is assigned and every replica (up to `partitions`) has some,
    the same on two polls in a row; returns the counts per replica."""
    want_busy = min(len(ports), partitions)
    deadline = time.monotonic() + timeout
    last: list[int] | None = None
    while time.monotonic() < deadline:
        counts = [int(readyz(p).get("assigned_partitions", 0)) for p in ports]
        done = sum(counts) == partitions and sum(1 for c in counts if c) == want_busy
        if done and counts == last:
            return counts
        last = counts if done else None
        time.sleep(0.5)
    raise TimeoutError(f"the consumer group did not settle within {timeout:.0f} s")


def _parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class WorkerLog:
    reloads: list[float] = field(default_factory=list)  # `registry: reloaded` times
    owned: dict[int, float] = field(default_factory=dict)  # final partitions -> time assigned
    assigns: list[float] = field(default_factory=list)  # times of every assignment
    circuits: list[tuple[float, str]] = field(default_factory=list)  # (time, "open (latency)")


def read_log(path: Path) -> WorkerLog:
    """What one worker's JSON log says about reloads, partitions and circuit breakers."""
    out = WorkerLog()
    reloads, owned, assigns = out.reloads, out.owned, out.assigns
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
                msg = str(rec.get("msg", ""))
                ts = _parse_ts(str(rec["ts"]))
            except (ValueError, KeyError):
                continue
            if msg.startswith("registry: reloaded"):
                reloads.append(ts)
            elif msg.startswith(("partitions assigned: ", "partitions revoked: ")):
                try:
                    keys = ast.literal_eval(msg.split(": ", 1)[1])
                except (ValueError, SyntaxError):
                    continue
                parts = [int(k[1]) for k in keys]
                if msg.startswith("partitions assigned"):
                    assigns.append(ts)
                    owned.update(dict.fromkeys(parts, ts))
                else:
                    for p in parts:
                        owned.pop(p, None)
            elif msg.startswith("partitions lost"):
                owned.clear()
            elif msg.startswith("circuit ") and "->" in msg:
                out.circuits.append((ts, msg.split("-> ", 1)[1]))
    return out
