"""`llm-worker bench-failover`: how fast a registry row update reaches replicas under load.

One fake provider process serves two profiles, `a` and `b`. The registry row `bench` points at
one of them; every switch updates `endpoint` (alternately `a` and `b`) and `upstream_model` in
one UPDATE. The upstream model names the switch too (`fake-b-1`, `fake-a-2`, ...) and the fake
provider echoes it (`[fake:fake-b-1] ...`), so every completion says which switch's target
answered it, even though the endpoints alternate. `--workers` worker processes form one
consumer group. A thread publishes prompts at a steady `--rate`, each prompt to a chosen
partition and carrying its send time in `metadata`; another thread reads the completions. The
bench then switches the row between `a` and `b` (`--switches` times, one UPDATE each, about
1.5 s apart) and measures, for every switch, from the moment the UPDATE has committed:

- `failover_ms`: until the first completion answered by the new target for a prompt published
  after the commit (the provider's text says which target answered);
- `all_partitions_ms`: until every partition, and so every replica, has served such a
  completion;
- `reload_ms`: until each replica logged `registry: reloaded` (NOTIFY -> reload), from the
  workers' logs;
- `stale_answers`: completions from an earlier target for prompts published more than 1 s
  after the commit (should be 0).

It also splits the path: `first_built_ms` (commit -> the first new-target completion built in
a worker, from the completion's `queue_ms`) and `output_path_ms` (built -> read by the bench).
Circuit breaker changes logged by the workers are listed, placed relative to the switches.

The workers poll the registry only every 30 s (`LLM_WORKER_REGISTRY_REFRESH_S`), so only
LISTEN/NOTIFY can make a switch fast; other `LLM_WORKER_*` variables in the environment reach
them unchanged. Prints one JSON line and a summary; exits 1 only if no switch was observed.
`args`: `workers`, `switches`, `rate`, `latency_ms`, and optionally `partitions` (4) and
`interval_s` (1.5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from llm_worker.devkit.bench.failover_report import answered_by, circuit_summary, stats, summary
from llm_worker.devkit.bench.harness import WORKER_COMMAND
from llm_worker.devkit.bench.replicas import (
    WorkerLog,
    provider_requests,
    read_log,
    wait_group,
    wait_ready,
)
from llm_worker.devkit.bench.traffic import Publisher, Reader, reread
from llm_worker.devkit.devstack import free_port, local_stack, spawn_fake_provider, wait_port
from llm_worker.registry.migrate import migrate
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import update_row, upsert_row
from llm_worker.worker.config import load_settings

__all__ = ["run_failover_bench"]

MODEL_ID = "bench"
STALE_AFTER_S = 1.0  # a prompt published this long after a commit must reach the new target
LEAD_IN_S = 3.0  # steady traffic on the first target before the first switch
TAIL_S = 3.0  # traffic after the last switch

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


@dataclass
class _Switch:
    gen: int  # 1 for the first switch; generation 0 is the initial row
    profile: str  # the fake profile the row points at after this switch
    commit: float  # wall time right after the UPDATE committed
    update_ms: float  # how long update_row took (connect, UPDATE, COMMIT)
    end: float = math.inf  # the next switch's commit (or the end of publishing)
    failover_ms: float | None = None
    built_ms: float | None = None  # commit -> first new-target completion built in a worker
    partition_ms: dict[int, float] = field(default_factory=dict)
    reload_ms: dict[int, float] = field(default_factory=dict)  # replica -> ms
    stale: int = 0
    old_after_commit: int = 0
    old_latest_ms: float | None = None  # latest send time (after the commit) of an old answer


def _profile(gen: int) -> str:
    return "a" if gen % 2 == 0 else "b"


def _model(gen: int) -> str:
    return f"fake-{_profile(gen)}-{gen}"


def _row(fake_url: str, gen: int) -> dict[str, str]:
    return {"endpoint": f"{fake_url}/{_profile(gen)}/v1", "upstream_model": _model(gen)}


@dataclass(frozen=True)
class _Params:
    workers: int
    switches: int
    rate: float
    latency_ms: float
    partitions: int
    interval: float
    broker: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Params:
        p = cls(
            workers=int(getattr(args, "workers", 2)),
            switches=int(getattr(args, "switches", 20)),
            rate=float(getattr(args, "rate", 500.0)),
            latency_ms=float(getattr(args, "latency_ms", 20.0)),
            partitions=int(getattr(args, "partitions", 4) or 4),
            interval=float(getattr(args, "interval_s", 1.5) or 1.5),
            broker=getattr(args, "broker", "tansu"),
        )
        if p.workers < 1 or p.switches < 1 or p.rate <= 0:
            raise ValueError("workers and switches must be >= 1 and rate > 0")
        return p


@dataclass
class _Answers:
    """The first completion read for each prompt this run published."""

    # (receive time, send time, partition, generation, time the worker built it)
    rows: list[tuple[float, float, int, int, float | None]] = field(default_factory=list)
    errors: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    mismatched: int = 0
    e2e: list[float] = field(default_factory=list)


def run_failover_bench(args: argparse.Namespace) -> int:
    params = _Params.from_args(args)
    stack = contextlib.ExitStack()
    procs: list[subprocess.Popen[bytes]] = []
    threads: list[Publisher | Reader] = []
    logdir = Path(tempfile.mkdtemp(prefix="llm-worker-failover-"))
    finished = False
    try:
        bootstrap, dsn = stack.enter_context(local_stack(broker=params.broker))
        fake_url = _start_provider(dsn, params.latency_ms, procs)
        run = uuid.uuid4().hex[:8]
        client_env, worker_env = _environments(bootstrap, dsn, run, params.partitions)
        client_settings = load_settings(client_env)  # before the worker-only settings
        logs = _start_replicas(worker_env, params, logdir, procs)

        reader = Reader(client_settings)
        publisher = Publisher(client_settings, run, params.rate, params.partitions, MODEL_ID)
        threads += [reader, publisher]
        reader.start()
        measure_start = time.time()
        publisher.start()
        _wait_for_traffic(reader)
        switches = _switch_under_load(dsn, fake_url, publisher, params)
        publish_end = switches[-1].end
        sent = dict(publisher.sent)
        got = _drain(reader, sent)
        unread = sent.keys() - {c.get("id") for _, c in got}
        # A live read can skip a record that a read from the start finds (seen with Tansu when
        # two replicas append to one partition at once): look again before calling it lost.
        again = reread(client_settings, unread) if unread else []

        answers = _read_answers(got, sent, {_model(g): g for g in range(len(switches) + 1)})
        answers.errors += sum(1 for c in again if c.get("status") != "ok")
        replica_logs = [read_log(p) for p in logs]
        for sw in switches:
            _measure_switch(sw, answers.rows, replica_logs)
        result: dict[str, Any] = {
            **_switch_figures(params, switches),
            **_answer_figures(answers, len(sent), again),
            **_replica_figures(replica_logs, switches, answers.rows, measure_start),
            "provider_requests": provider_requests(fake_url),
            "publish_s": round(publish_end - measure_start, 1),
        }
        print(json.dumps(result))

        print(summary(result, MODEL_ID, STALE_AFTER_S), file=sys.stderr)
        finished = True
        return 0 if result["switches_observed"] else 1
    finally:
        _stop(procs, threads)
        stack.close()
        if finished:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {logdir}", file=sys.stderr)


# -- the run ------------------------------------------------------------------------------


def _start_provider(dsn: str, latency_ms: float, procs: list[subprocess.Popen[bytes]]) -> str:
    """Migrate, start the fake provider and point the row at its first target; its URL."""
    migrate(dsn)
    fport = free_port()
    procs.append(spawn_fake_provider(fport, "--latency-ms", f"{latency_ms:g}", quiet=True))
    fake_url = f"http://127.0.0.1:{fport}"
    upsert_row(
        dsn,
        ModelRow(
            model_id=MODEL_ID,
            provider="fake",
            endpoint=_row(fake_url, 0)["endpoint"],
            upstream_model=_model(0),
            max_tokens=64,
            timeout_ms=10_000,
        ),
    )
    return fake_url


def _environments(
    bootstrap: str, dsn: str, run: str, partitions: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The bench's own clients' environment, and the workers' (the same plus their settings)."""
    base_env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "LLM_WORKER_PROMPTS_TOPIC": f"failover_prompts_{run}",
        "LLM_WORKER_COMPLETIONS_TOPIC": f"failover_completions_{run}",
        "LLM_WORKER_DLQ_TOPIC": f"failover_dlq_{run}",
        "LLM_WORKER_GROUP_ID": f"failover-{run}",
        "LLM_WORKER_TOPIC_PARTITIONS": str(partitions),
    }
    worker_env = {
        **base_env,
        # INFO (the default level) logs `registry: reloaded` and the partition assignment
        "LLM_WORKER_LOG_LEVEL": "INFO",
        "LLM_WORKER_LOG_FORMAT": "json",
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LLM_WORKER_REGISTRY_REFRESH_S": "30",  # polling is too slow: only NOTIFY counts
    }
    return base_env, worker_env


def _start_replicas(
    worker_env: dict[str, str],
    params: _Params,
    logdir: Path,
    procs: list[subprocess.Popen[bytes]],
) -> list[Path]:
    """Replicas of one consumer group, one process each, ready and sharing the partitions;
    their log files."""
    ports: list[int] = []
    logs: list[Path] = []
    for i in range(params.workers):
        port = free_port()
        log_path = logdir / f"worker-{i}.log"
        with log_path.open("wb") as log_fh:
            proc = subprocess.Popen(
                list(WORKER_COMMAND),
                env={**worker_env, "LLM_WORKER_HTTP_PORT": str(port)},
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        ports.append(port)
        logs.append(log_path)
        wait_port("127.0.0.1", port, 60)
        wait_ready(port, proc, 60)
    counts = wait_group(ports, params.partitions, 90)
    print(
        f"group settled: {params.workers} replicas, partitions per replica {counts}",
        file=sys.stderr,
    )
    return logs


def _wait_for_traffic(reader: Reader) -> None:
    """Lead-in: traffic must flow (on `a`) before the first switch."""
    time.sleep(LEAD_IN_S)
    deadline = time.monotonic() + 30
    while not reader.got and time.monotonic() < deadline:
        time.sleep(0.2)
    if not reader.got:
        raise RuntimeError("no completions within 30 s of publishing: the stack is not serving")


def _switch_under_load(
    dsn: str, fake_url: str, publisher: Publisher, params: _Params
) -> list[_Switch]:
    """Switch the row `params.switches` times while the publisher runs, then stop publishing
    after the tail; the last switch ends when publishing did."""
    switches: list[_Switch] = []
    next_at = time.monotonic()
    for _ in range(params.switches):
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if publisher.error is not None:
            raise RuntimeError(f"publisher failed: {publisher.error}")
        gen = len(switches) + 1
        before = time.time()
        update_row(dsn, MODEL_ID, **_row(fake_url, gen))
        commit = time.time()
        if switches:
            switches[-1].end = commit
        switches.append(_Switch(gen, _profile(gen), commit, (commit - before) * 1000))
        next_at = time.monotonic() + params.interval
    time.sleep(max(0.0, next_at - params.interval + TAIL_S - time.monotonic()))
    publisher.stop.set()
    publisher.join(60)
    if publisher.error is not None:
        raise RuntimeError(f"publisher failed: {publisher.error}")
    switches[-1].end = time.time()
    return switches


def _drain(reader: Reader, sent: dict[str, tuple[float, int]]) -> list[tuple[float, Any]]:
    """Read until every published prompt is answered, or nothing new came for 10 s."""
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < 10:
        ids = {c.get("id") for _, c in reader.got}
        if sent.keys() <= ids:
            break
        if len(reader.got) != last_n:
            last_n, last_change = len(reader.got), time.monotonic()
        time.sleep(0.25)
    reader.stop.set()
    reader.join(10)
    return list(reader.got)


def _stop(procs: list[subprocess.Popen[bytes]], threads: list[Publisher | Reader]) -> None:
    for t in threads:
        t.stop.set()
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for t in threads:
        t.join(5)


# -- what the completions and the logs say -------------------------------------------------


def _read_answers(
    got: list[tuple[float, Any]], sent: dict[str, tuple[float, int]], gen_of: dict[str, int]
) -> _Answers:
    out = _Answers()
    seen: set[str] = set()
    for recv, comp in got:
        cid = comp.get("id")
        if not isinstance(cid, str) or cid in seen or cid not in sent:
            continue
        seen.add(cid)
        sent_t, part = sent[cid]
        who = answered_by(comp)
        if comp.get("status") != "ok":
            out.errors += 1
            err = comp.get("error")
            kind = str(err.get("type")) if isinstance(err, dict) else "unknown"
            out.error_types[kind] = out.error_types.get(kind, 0) + 1
            if out.errors == 1 and isinstance(err, dict):
                print(f"first error: {kind}: {err.get('message')}", file=sys.stderr)
        elif who is None or who not in gen_of or comp.get("upstream_model") != who:
            out.mismatched += 1  # the completion does not say what the provider answered
        out.e2e.append((recv - sent_t) * 1000)
        queue_ms = comp.get("queue_ms")  # the prompt's Kafka timestamp -> completion built
        built = sent_t + queue_ms / 1000 if isinstance(queue_ms, int | float) else None
        out.rows.append((recv, sent_t, part, gen_of.get(who or "", -1), built))
    out.rows.sort(key=lambda a: a[0])
    return out


def _measure_switch(
    sw: _Switch,
    answers: list[tuple[float, float, int, int, float | None]],
    replica_logs: list[WorkerLog],
) -> None:
    """Fill in `sw`'s figures from the answers to prompts sent while it was the latest."""
    for recv, sent_t, part, gen, built in answers:
        if not sw.commit < sent_t < sw.end:
            continue
        if gen == sw.gen:
            ms = (recv - sw.commit) * 1000
            if sw.failover_ms is None:
                sw.failover_ms = ms
            if built is not None:
                b_ms = (built - sw.commit) * 1000
                sw.built_ms = b_ms if sw.built_ms is None else min(sw.built_ms, b_ms)
            sw.partition_ms.setdefault(part, ms)
        elif 0 <= gen < sw.gen:
            sw.old_after_commit += 1
            late = (sent_t - sw.commit) * 1000
            sw.old_latest_ms = max(late, sw.old_latest_ms or 0.0)
            if sent_t > sw.commit + STALE_AFTER_S:
                sw.stale += 1
    for r, wlog in enumerate(replica_logs):
        after = [t for t in wlog.reloads if t >= sw.commit - 0.002 and t < sw.end]
        if after:
            sw.reload_ms[r] = max(0.0, (after[0] - sw.commit) * 1000)


def _switch_figures(params: _Params, switches: list[_Switch]) -> dict[str, Any]:
    observed = [sw for sw in switches if sw.failover_ms is not None]
    complete = [sw for sw in switches if len(sw.partition_ms) == params.partitions]
    return {
        "workers": params.workers,
        "partitions": params.partitions,
        "rate": params.rate,
        "provider_latency_ms": params.latency_ms,
        "switches": len(switches),
        "switches_observed": len(observed),
        # switches after which some partition never served the new target (before the next)
        "switches_incomplete": len(switches) - len(complete),
        "failover_ms": stats([sw.failover_ms for sw in observed if sw.failover_ms is not None]),
        "all_partitions_ms": stats([max(sw.partition_ms.values()) for sw in complete]),
        "reload_ms": stats([ms for sw in switches for ms in sw.reload_ms.values()]),
        "first_built_ms": stats([sw.built_ms for sw in switches if sw.built_ms is not None]),
        "update_ms": stats([sw.update_ms for sw in switches]),
        "stale_answers": sum(sw.stale for sw in switches),
        "old_answers_after_commit": sum(sw.old_after_commit for sw in switches),
        # how long after a commit a prompt could still be published and get an earlier target
        "old_answer_latest_sent_ms": stats(
            [sw.old_latest_ms for sw in switches if sw.old_latest_ms is not None]
        ),
    }


def _answer_figures(answers: _Answers, published: int, again: list[Any]) -> dict[str, Any]:
    rows = answers.rows
    return {
        "e2e_ms": stats(answers.e2e),
        # the worker built the completion -> the bench read it (produce, broker, fetch)
        "output_path_ms": stats([(a[0] - a[4]) * 1000 for a in rows if a[4] is not None]),
        "published": published,
        "completions": len(rows) + len(again),
        "found_only_by_reread": len(again),
        "errors": answers.errors,
        "error_types": answers.error_types,
        "upstream_model_mismatches": answers.mismatched,
    }


def _replica_figures(
    replica_logs: list[WorkerLog],
    switches: list[_Switch],
    answers: list[tuple[float, float, int, int, float | None]],
    measure_start: float,
) -> dict[str, Any]:
    """Each replica's share of the switches, and the group's rebalances and breaker changes."""
    owner: dict[int, int] = {}
    rebalances = 0
    circuits: list[tuple[float, int, str]] = []  # (time, replica, "open (latency)")
    for r, wlog in enumerate(replica_logs):
        for p in wlog.owned:
            owner[p] = r
        rebalances += sum(1 for t in wlog.assigns if t >= measure_start)
        circuits += [(t, r, what) for t, what in wlog.circuits if t >= measure_start]
    circuits.sort()
    per_replica: list[dict[str, Any]] = []
    for r in range(len(replica_logs)):
        mine = sorted(p for p, o in owner.items() if o == r)
        firsts = [
            min(sw.partition_ms[p] for p in mine if p in sw.partition_ms)
            for sw in switches
            if any(p in sw.partition_ms for p in mine)
        ]
        per_replica.append(
            {
                "replica": r,
                "partitions": mine,
                "switches_observed": len(firsts),
                "failover_ms": stats(firsts),
                "reload_ms": stats([sw.reload_ms[r] for sw in switches if r in sw.reload_ms]),
                "e2e_ms": stats([(a[0] - a[1]) * 1000 for a in answers if owner.get(a[2]) == r]),
            }
        )
    return {
        "per_replica": per_replica,
        "rebalances_during_run": rebalances,
        "circuit_changes": circuit_summary(circuits, [(sw.gen, sw.commit) for sw in switches]),
    }
