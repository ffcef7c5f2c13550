"""`llm-worker bench`: start the stack with a worker process, publish N prompts, measure.

Prints one JSON line (machine-readable) and a short summary. Uses the local broker/Postgres
unless `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` are set.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_worker.devkit.bench.harness import WORKER_COMMAND
from llm_worker.devkit.devstack import free_port, local_stack, spawn_fake_provider, wait_port
from llm_worker.registry.migrate import migrate
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.cli.client import CompletionWaiter, publish
from llm_worker.worker.config import load_settings

__all__ = ["percentile", "run_bench"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _fake_calls(url: str) -> int:
    with urllib.request.urlopen(f"{url}/admin/config", timeout=5) as resp:
        data = json.load(resp)
    profiles = data.get("profiles", data)
    return sum(int(p.get("requests", 0)) for p in profiles.values() if isinstance(p, dict))


def _prompts(n: int, dup_fraction: float, run: str) -> list[dict[str, Any]]:
    distinct = max(1, round(n * (1 - dup_fraction)))
    return [
        {
            "id": f"{run}-{i}",
            "model": "bench",
            "prompt": f"benchmark prompt number {i % distinct} about stream processing",
            "max_tokens": 32,
        }
        for i in range(n)
    ]


@dataclass
class _Timings:
    """What each completion's arrival says: end-to-end latency, the worker's queue time and
    its own share of it, and when it came."""

    t0: float = 0.0  # when publishing began
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    added_ms: list[float] = field(default_factory=list)  # queue_ms less the provider call
    done_times: list[float] = field(default_factory=list)

    def on_completion(self, c: dict[str, Any]) -> None:
        now = time.time()
        self.done_times.append(now)
        t = self.sent_at.get(c["id"], self.t0)
        if t is not None:
            self.latencies.append((now - t) * 1000)
        if c.get("queue_ms") is not None:
            self.queue_ms.append(c["queue_ms"])
            if c.get("latency_ms") is not None:
                self.added_ms.append(c["queue_ms"] - c["latency_ms"])

    def elapsed(self) -> float:
        return (max(self.done_times) - self.t0) if self.done_times else float("nan")

    def sustained(self) -> float | None:
        """The rate between the 10th and the last completion (excludes the group join)."""
        done = self.done_times
        warm = sorted(done)[min(len(done) - 1, len(done) // 10)] if done else self.t0
        return (len(done) * 0.9) / (max(done) - warm) if done and max(done) > warm else None


def run_bench(args: argparse.Namespace) -> int:
    stack = contextlib.ExitStack()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bootstrap, dsn = stack.enter_context(local_stack(broker=getattr(args, "broker", "tansu")))
        fake_url = _start_provider(dsn, args.latency_ms, procs)
        run = uuid.uuid4().hex[:8]
        http_port = free_port()
        env = _env(bootstrap, dsn, run, http_port, args.partitions)
        workers = _start_workers(env, http_port, args.workers)
        procs.extend(workers)
        settings = load_settings(env)
        prompts = _prompts(args.count, args.duplicates, run)
        timings = _Timings()
        _wait_assigned(http_port, 60)  # the group has formed: time from here is processing
        # The client shares the cores with the worker: keep the cyclic GC from walking the
        # tens of thousands of (acyclic) prompt and completion dicts it holds, over and over.
        gc.collect()
        gc.freeze()
        gc.disable()
        with CompletionWaiter(settings) as waiter:
            timings.t0 = time.time()
            pub = threading.Thread(
                target=publish,
                args=(settings, prompts),
                kwargs={"rate": args.rate, "sent_at": timings.sent_at},
            )
            pub.start()
            got = waiter.wait(
                [p["id"] for p in prompts],
                timeout=args.timeout,
                on_completion=timings.on_completion,
            )
            pub.join()
        result = {
            **_result(args, got, timings),
            "broker": getattr(args, "broker", "tansu"),
            "provider_calls": _fake_calls(fake_url),
            "workers": args.workers,
            "worker_peak_rss_mb": max(round(_peak_rss_mb(w.pid), 1) for w in workers),
        }
        print(json.dumps(result))
        print(_summary(args, result, timings.elapsed()), file=sys.stderr)
        return 0 if len(got) == args.count else 1
    finally:
        gc.enable()
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.close()


def _start_provider(dsn: str, latency_ms: float, procs: list[subprocess.Popen[bytes]]) -> str:
    """Migrate, start the fake provider and register the `bench` row on it; its URL."""
    migrate(dsn)
    fport = free_port()
    procs.append(spawn_fake_provider(fport, "--latency-ms", str(latency_ms), quiet=True))
    fake_url = f"http://127.0.0.1:{fport}"
    upsert_row(
        dsn,
        ModelRow(
            model_id="bench",
            provider="fake",
            endpoint=f"{fake_url}/v1",
            upstream_model="fake-bench",
            max_tokens=64,
            timeout_ms=10_000,
        ),
    )
    return fake_url


def _env(bootstrap: str, dsn: str, run: str, http_port: int, partitions: int) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "LLM_WORKER_PROMPTS_TOPIC": f"bench_prompts_{run}",
        "LLM_WORKER_COMPLETIONS_TOPIC": f"bench_completions_{run}",
        "LLM_WORKER_DLQ_TOPIC": f"bench_dlq_{run}",
        "LLM_WORKER_GROUP_ID": f"bench-{run}",
        "LLM_WORKER_HTTP_PORT": str(http_port),
        "LLM_WORKER_LOG_LEVEL": "WARNING",
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LLM_WORKER_TOPIC_PARTITIONS": str(partitions),
    }


def _start_workers(env: dict[str, str], http_port: int, n: int) -> list[subprocess.Popen[bytes]]:
    """Replicas of one consumer group, one process each, each ready; the first on `http_port`."""
    workers: list[subprocess.Popen[bytes]] = []
    for i in range(n):
        port = http_port if i == 0 else free_port()
        workers.append(
            subprocess.Popen(
                list(WORKER_COMMAND),
                env={**env, "LLM_WORKER_HTTP_PORT": str(port)},
                stdin=subprocess.DEVNULL,
            )
        )
        wait_port("127.0.0.1", port, 60)
        _wait_ready(port, 60)
    return workers


def _result(
    args: argparse.Namespace, got: dict[str, dict[str, Any]], timings: _Timings
) -> dict[str, Any]:
    elapsed, sustained = timings.elapsed(), timings.sustained()
    latencies, queue_ms, added_ms = timings.latencies, timings.queue_ms, timings.added_ms
    error_types: dict[str, int] = {}
    for c in got.values():
        if c.get("status") != "ok":
            etype = (c.get("error") or {}).get("type", "unknown")
            error_types[etype] = error_types.get(etype, 0) + 1
    return {
        "count": args.count,
        "completions": len(got),
        "ok": sum(1 for c in got.values() if c.get("status") == "ok"),
        "errors": error_types,
        "deduplicated": sum(1 for c in got.values() if c.get("deduplicated")),
        "duplicates_fraction": args.duplicates,
        "provider_latency_ms": args.latency_ms,
        "publish_rate": args.rate or "burst",
        "elapsed_s": round(elapsed, 3),
        "completions_per_s": round(len(got) / elapsed, 1) if elapsed else None,
        "sustained_completions_per_s": round(sustained, 1) if sustained else None,
        "e2e_latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
        },
        "worker_queue_ms": {  # prompt's Kafka timestamp -> completion built (in the worker)
            "p50": round(percentile(queue_ms, 50), 1),
            "p99": round(percentile(queue_ms, 99), 1),
        },
        # the prompt's Kafka timestamp -> completion built, less the provider call: the
        # publisher's linger, the broker's append and fetch, and the worker itself
        "worker_added_ms": {
            "p50": round(percentile(added_ms, 50), 1),
            "p99": round(percentile(added_ms, 99), 1),
        },
    }


def _summary(args: argparse.Namespace, result: dict[str, Any], elapsed: float) -> str:
    got, e2e = result["completions"], result["e2e_latency_ms"]
    return (
        f"\n{got}/{args.count} completions in {elapsed:.2f} s = "
        f"{result['completions_per_s']} completions/s overall, "
        f"{result['sustained_completions_per_s']}/s sustained (after the first 10%); "
        f"e2e latency p50/p95/p99 = {e2e['p50']}/{e2e['p95']}/{e2e['p99']} ms "
        f"({f'published at {args.rate}/s' if args.rate else 'all published at once'}); "
        f"provider calls {result['provider_calls']}; "
        f"{got - result['ok']} error completions {result['errors'] or ''}; worker peak RSS "
        f"{result['worker_peak_rss_mb']} MB (largest of {args.workers} worker processes)"
    )


def _wait_assigned(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if json.load(r).get("assigned_partitions", 0) > 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"worker on :{port} got no partitions after {timeout:.0f} s")


def _wait_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready on :{port} after {timeout:.0f} s")
