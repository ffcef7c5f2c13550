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
import ast
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from registry.migrate import migrate
from registry.models import ModelRow
from registry.store import update_row, upsert_row

from .bench import percentile
from .config import Settings, load_settings
from .devstack import free_port, local_stack, spawn_fake_provider, wait_port

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


def _client_conf(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers}
    for k, v in settings.kafka_extra.items():
        if k.startswith(("security.", "sasl.", "ssl.", "client.")):
            conf[k] = v
    return conf


def _answered_by(comp: dict[str, Any]) -> str | None:
    """The upstream model the fake provider saw: its text is `[fake:<model>] ...`."""
    text = comp.get("text")
    if comp.get("status") != "ok" or not isinstance(text, str) or not text.startswith("[fake:"):
        return None
    return text[len("[fake:") : text.find("]")]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


def _provider_requests(url: str) -> dict[str, int]:
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


def _readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            data: dict[str, Any] = json.load(r)
            return data
    except OSError:
        return {}


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker on :{port} exited with {proc.returncode}")
        if _readyz(port).get("ready"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready on :{port} after {timeout:.0f} s")


def _wait_group(ports: list[int], partitions: int, timeout: float) -> list[int]:
    """Until every partition is assigned and every replica (up to `partitions`) has some,
    the same on two polls in a row; returns the counts per replica."""
    want_busy = min(len(ports), partitions)
    deadline = time.monotonic() + timeout
    last: list[int] | None = None
    while time.monotonic() < deadline:
        counts = [int(_readyz(p).get("assigned_partitions", 0)) for p in ports]
        done = sum(counts) == partitions and sum(1 for c in counts if c) == want_busy
        if done and counts == last:
            return counts
        last = counts if done else None
        time.sleep(0.5)
    raise TimeoutError(f"the consumer group did not settle within {timeout:.0f} s")


def _parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class _WorkerLog:
    reloads: list[float] = field(default_factory=list)  # `registry: reloaded` times
    owned: dict[int, float] = field(default_factory=dict)  # final partitions -> time assigned
    assigns: list[float] = field(default_factory=list)  # times of every assignment
    circuits: list[tuple[float, str]] = field(default_factory=list)  # (time, "open (latency)")


def _read_log(path: Path) -> _WorkerLog:
    """What one worker's JSON log says about reloads, partitions and circuit breakers."""
    out = _WorkerLog()
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


class _Publisher(threading.Thread):
    """Publishes `{run}-{i}` at `rate`/s to partition i % partitions until stopped."""

    def __init__(self, settings: Settings, run: str, rate: float, partitions: int) -> None:
        super().__init__(name="bench-publish", daemon=True)
        self._settings = settings
        self._run = run
        self._rate = rate
        self._partitions = partitions
        self.stop = threading.Event()
        self.sent: dict[str, tuple[float, int]] = {}  # id -> (send time, partition)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._publish()
        except BaseException as exc:
            self.error = exc

    def _publish(self) -> None:
        producer = Producer(
            {**_client_conf(self._settings), "linger.ms": 5, "enable.idempotence": True}
        )
        topic = self._settings.prompts_topic
        start = time.monotonic()
        i = 0
        while not self.stop.is_set():
            ahead = start + i / self._rate - time.monotonic()
            if ahead > 0:
                producer.poll(ahead)
            pid = f"{self._run}-{i}"
            part = i % self._partitions
            now = time.time()
            prompt = {
                "id": pid,
                "model": MODEL_ID,
                "prompt": f"failover probe {i}",
                "max_tokens": 8,
                "metadata": {"sent": now, "partition": part},
            }
            while True:
                try:
                    producer.produce(topic, _enc.encode(prompt), pid.encode(), partition=part)
                    break
                except BufferError:
                    producer.poll(0.05)
            self.sent[pid] = (now, part)
            i += 1
            if i % 200 == 0:
                producer.poll(0)
        remaining = producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} prompts were not acknowledged within 30 s")


def _reread(settings: Settings, ids: set[str], quiet_s: float = 3.0) -> list[dict[str, Any]]:
    """The completions for `ids`, read from the start of the topic by a fresh consumer."""
    conf = _client_conf(settings)
    conf.update({"group.id": f"llm-worker-bench-reread-{uuid.uuid4().hex[:12]}"})
    conf["enable.auto.commit"] = False
    consumer = Consumer(conf)
    topic = settings.completions_topic
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: dict[str, dict[str, Any]] = {}
        last = time.monotonic()
        while time.monotonic() - last < quiet_s and len(found) < len(ids):
            for msg in consumer.consume(1000, 0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                last = time.monotonic()
                try:
                    comp = _dec.decode(value)
                except msgspec.DecodeError:
                    continue
                if isinstance(comp, dict) and comp.get("id") in ids:
                    found.setdefault(comp["id"], comp)
        return list(found.values())
    finally:
        consumer.close()


class _Reader(threading.Thread):
    """Reads every completion from the start of the (fresh) completions topic."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="bench-consume", daemon=True)
        conf = _client_conf(settings)
        conf.update(
            {
                "group.id": f"llm-worker-bench-failover-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 25,
            }
        )
        self._consumer = Consumer(conf)
        topic = settings.completions_topic
        meta = self._consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions")
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.stop = threading.Event()
        self.got: list[tuple[float, dict[str, Any]]] = []  # (receive time, completion)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                msgs = self._consumer.consume(1000, 0.05)
                now = time.time()
                for msg in msgs:
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    try:
                        comp = _dec.decode(value)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(comp, dict):
                        self.got.append((now, comp))
        finally:
            self._consumer.close()


def _circuit_summary(circuits: list[tuple[float, int, str]], switches: list[_Switch]) -> list[str]:
    """Breaker state changes in the workers, each placed relative to the latest commit."""
    out = []
    for t, r, what in circuits:
        before = [sw for sw in switches if sw.commit <= t]
        where = (
            f"{(t - before[-1].commit) * 1000:.0f} ms after switch {before[-1].gen}"
            if before
            else "before the first switch"
        )
        out.append(f"replica {r}: -> {what}, {where}")
    return out


def _profile(gen: int) -> str:
    return "a" if gen % 2 == 0 else "b"


def _model(gen: int) -> str:
    return f"fake-{_profile(gen)}-{gen}"


def _row(fake_url: str, gen: int) -> dict[str, str]:
    return {"endpoint": f"{fake_url}/{_profile(gen)}/v1", "upstream_model": _model(gen)}


def run_failover_bench(args: argparse.Namespace) -> int:
    n_workers = int(getattr(args, "workers", 2))
    n_switches = int(getattr(args, "switches", 20))
    rate = float(getattr(args, "rate", 500.0))
    latency_ms = float(getattr(args, "latency_ms", 20.0))
    partitions = int(getattr(args, "partitions", 4) or 4)
    interval = float(getattr(args, "interval_s", 1.5) or 1.5)
    if n_workers < 1 or n_switches < 1 or rate <= 0:
        raise ValueError("workers and switches must be >= 1 and rate > 0")

    stack = contextlib.ExitStack()
    procs: list[subprocess.Popen[bytes]] = []
    threads: list[_Publisher | _Reader] = []
    logdir = Path(tempfile.mkdtemp(prefix="llm-worker-failover-"))
    finished = False
    try:
        bootstrap, dsn = stack.enter_context(local_stack())
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
        run = uuid.uuid4().hex[:8]
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
        client_settings = load_settings(base_env)  # before the worker-only settings
        worker_env = {
            **base_env,
            # INFO (the default level) logs `registry: reloaded` and the partition assignment
            "LLM_WORKER_LOG_LEVEL": "INFO",
            "LLM_WORKER_LOG_FORMAT": "json",
            "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "LLM_WORKER_REGISTRY_REFRESH_S": "30",  # polling is too slow: only NOTIFY counts
        }
        ports: list[int] = []
        logs: list[Path] = []
        for i in range(n_workers):  # replicas of one consumer group, one process each
            port = free_port()
            log_path = logdir / f"worker-{i}.log"
            with log_path.open("wb") as log_fh:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "worker.cli", "run"],
                    env={**worker_env, "LLM_WORKER_HTTP_PORT": str(port)},
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                )
            procs.append(proc)
            ports.append(port)
            logs.append(log_path)
            wait_port("127.0.0.1", port, 60)
            _wait_ready(port, proc, 60)
        counts = _wait_group(ports, partitions, 90)
        print(
            f"group settled: {n_workers} replicas, partitions per replica {counts}",
            file=sys.stderr,
        )

        reader = _Reader(client_settings)
        publisher = _Publisher(client_settings, run, rate, partitions)
        threads += [reader, publisher]
        reader.start()
        measure_start = time.time()
        publisher.start()

        # lead-in: traffic must flow (on `a`) before the first switch
        time.sleep(LEAD_IN_S)
        deadline = time.monotonic() + 30
        while not reader.got and time.monotonic() < deadline:
            time.sleep(0.2)
        if not reader.got:
            raise RuntimeError("no completions within 30 s of publishing: the stack is not serving")

        switches: list[_Switch] = []
        next_at = time.monotonic()
        for _ in range(n_switches):
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
            next_at = time.monotonic() + interval
        time.sleep(max(0.0, next_at - interval + TAIL_S - time.monotonic()))
        publisher.stop.set()
        publisher.join(60)
        if publisher.error is not None:
            raise RuntimeError(f"publisher failed: {publisher.error}")
        publish_end = time.time()
        switches[-1].end = publish_end
        sent = dict(publisher.sent)
        # drain: every published prompt answered, or nothing new for 10 s
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
        got = list(reader.got)
        unread = sent.keys() - {c.get("id") for _, c in got}
        # A live read can skip a record that a read from the start finds (seen with Tansu when
        # two replicas append to one partition at once): look again before calling it lost.
        reread = _reread(client_settings, unread) if unread else []

        # -- analysis ---------------------------------------------------------------------
        seen: set[str] = set()
        gen_of = {_model(g): g for g in range(len(switches) + 1)}
        # (receive time, send time, partition, generation, time the worker built it)
        answers: list[tuple[float, float, int, int, float | None]] = []
        errors = 0
        error_types: dict[str, int] = {}
        mismatched = 0
        e2e: list[float] = []
        for recv, comp in got:
            cid = comp.get("id")
            if not isinstance(cid, str) or cid in seen or cid not in sent:
                continue
            seen.add(cid)
            sent_t, part = sent[cid]
            who = _answered_by(comp)
            if comp.get("status") != "ok":
                errors += 1
                err = comp.get("error")
                kind = str(err.get("type")) if isinstance(err, dict) else "unknown"
                error_types[kind] = error_types.get(kind, 0) + 1
                if errors == 1 and isinstance(err, dict):
                    print(f"first error: {kind}: {err.get('message')}", file=sys.stderr)
            elif who is None or who not in gen_of or comp.get("upstream_model") != who:
                mismatched += 1  # the completion does not say what the provider answered
            e2e.append((recv - sent_t) * 1000)
            queue_ms = comp.get("queue_ms")  # the prompt's Kafka timestamp -> completion built
            built = sent_t + queue_ms / 1000 if isinstance(queue_ms, int | float) else None
            answers.append((recv, sent_t, part, gen_of.get(who or "", -1), built))
        answers.sort(key=lambda a: a[0])
        errors += sum(1 for c in reread if c.get("status") != "ok")

        replica_logs = [_read_log(p) for p in logs]
        owner: dict[int, int] = {}
        rebalances = 0
        circuits: list[tuple[float, int, str]] = []  # (time, replica, "open (latency)")
        for r, wlog in enumerate(replica_logs):
            for p in wlog.owned:
                owner[p] = r
            rebalances += sum(1 for t in wlog.assigns if t >= measure_start)
            circuits += [(t, r, what) for t, what in wlog.circuits if t >= measure_start]
        circuits.sort()

        for sw in switches:
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

        observed = [sw for sw in switches if sw.failover_ms is not None]
        complete = [sw for sw in switches if len(sw.partition_ms) == partitions]
        failover = [sw.failover_ms for sw in observed if sw.failover_ms is not None]
        all_parts = [max(sw.partition_ms.values()) for sw in complete]
        reload_all = [ms for sw in switches for ms in sw.reload_ms.values()]
        per_replica: list[dict[str, Any]] = []
        for r in range(n_workers):
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
                    "failover_ms": _stats(firsts),
                    "reload_ms": _stats([sw.reload_ms[r] for sw in switches if r in sw.reload_ms]),
                    "e2e_ms": _stats(
                        [(a[0] - a[1]) * 1000 for a in answers if owner.get(a[2]) == r]
                    ),
                }
            )
        result: dict[str, Any] = {
            "workers": n_workers,
            "partitions": partitions,
            "rate": rate,
            "provider_latency_ms": latency_ms,
            "switches": len(switches),
            "switches_observed": len(observed),
            # switches after which some partition never served the new target (before the next)
            "switches_incomplete": len(switches) - len(complete),
            "failover_ms": _stats(failover),
            "all_partitions_ms": _stats(all_parts),
            "reload_ms": _stats(reload_all),
            "first_built_ms": _stats([sw.built_ms for sw in switches if sw.built_ms is not None]),
            "per_replica": per_replica,
            "update_ms": _stats([sw.update_ms for sw in switches]),
            "e2e_ms": _stats(e2e),
            # the worker built the completion -> the bench read it (produce, broker, fetch)
            "output_path_ms": _stats([(a[0] - a[4]) * 1000 for a in answers if a[4] is not None]),
            "stale_answers": sum(sw.stale for sw in switches),
            "old_answers_after_commit": sum(sw.old_after_commit for sw in switches),
            # how long after a commit a prompt could still be published and get an earlier target
            "old_answer_latest_sent_ms": _stats(
                [sw.old_latest_ms for sw in switches if sw.old_latest_ms is not None]
            ),
            "published": len(sent),
            "completions": len(answers) + len(reread),
            "found_only_by_reread": len(reread),
            "errors": errors,
            "error_types": error_types,
            "upstream_model_mismatches": mismatched,
            "provider_requests": _provider_requests(fake_url),
            "rebalances_during_run": rebalances,
            "circuit_changes": _circuit_summary(circuits, switches),
            "publish_s": round(publish_end - measure_start, 1),
        }
        print(json.dumps(result))

        def row(label: str, st: dict[str, float | None]) -> str:
            cells = "  ".join(f"{k} {st[k]}" for k in ("p50", "p95", "p99", "max"))
            return f"  {label:<58} {cells}"

        lines = [
            "",
            f"{len(switches)} switches a<->b of row {MODEL_ID!r} under {rate:g} prompts/s, "
            f"{n_workers} replicas, {partitions} partitions, provider {latency_ms:g} ms",
            row(
                f"failover: commit -> first new answer ({len(observed)}/{len(switches)}), ms",
                result["failover_ms"],
            ),
            row(
                f"every partition switched ({len(complete)}/{len(switches)}), ms",
                result["all_partitions_ms"],
            ),
            row("commit -> a replica reloaded (NOTIFY), ms", result["reload_ms"]),
            row("commit -> first new completion built (worker), ms", result["first_built_ms"]),
            row("publish -> completion read, all prompts, ms", result["e2e_ms"]),
            row("completion built -> read (output path), ms", result["output_path_ms"]),
            row("update_row (connect, UPDATE, COMMIT), ms", result["update_ms"]),
        ]
        for rep in per_replica:
            lines.append(
                row(
                    f"replica {rep['replica']} {rep['partitions']}: first new answer "
                    f"({rep['switches_observed']}/{len(switches)}), ms",
                    rep["failover_ms"],
                )
            )
            lines.append(row(f"replica {rep['replica']}: reloaded, ms", rep["reload_ms"]))
            lines.append(row(f"replica {rep['replica']}: publish -> completion, ms", rep["e2e_ms"]))
        lines.append(
            f"  stale answers (earlier target, published > {STALE_AFTER_S:g} s after commit): "
            f"{result['stale_answers']}; earlier-target answers for prompts published after a "
            f"commit: {result['old_answers_after_commit']}, the latest published "
            f"{result['old_answer_latest_sent_ms']['max']} ms after its commit"
        )
        if reread:
            lines.append(
                f"  {len(reread)} completions the live reader skipped were found by a read "
                "from the start of the topic (left out of the latencies)"
            )
        lines.append(
            f"  {result['completions']}/{len(sent)} completions, {errors} errors"
            f"{f' {error_types}' if error_types else ''}, "
            f"{rebalances} rebalances during the run"
        )
        if len(observed) < len(switches) or len(complete) < len(switches):
            lines.append(
                "  WARNING: some switches never reached every partition before the next one; "
                "the percentiles above leave them out (see errors and circuit changes)"
            )
        for change in result["circuit_changes"]:
            lines.append(f"  circuit: {change}")
        print("\n".join(lines), file=sys.stderr)
        finished = True
        return 0 if observed else 1
    finally:
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
        stack.close()
        if finished:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {logdir}", file=sys.stderr)
