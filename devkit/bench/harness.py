"""One load against one system on a shared stack: the suite's measuring loop.

`open_stack` starts (or takes from the environment) the broker and Postgres, and one fake
provider process for the whole suite. `run_load` then runs one measured load: fresh topics, a
fresh profile of the fake provider at the load's latency, a fresh process of the system under
test (`worker`: `llm-worker run` with default settings and a registry row of its own;
`baseline`: the plain loop of `baseline.py`), a publisher thread (all at once, or paced), and a
reader of the completions on this thread. Timed `events` (a slowdown, a failover) run from the
reader's loop. The process's CPU is read from /proc before publishing and after the last
completion; its peak RSS is its VmHWM; RSS is sampled every `rss_every_s` when asked.
`read_topic` reads a run's topic whole afterwards (the `streaming` scenario's chunks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from llm_worker.devkit.bench.progress import Progress
from llm_worker.devkit.bench.replicas import readyz, wait_ready
from llm_worker.devkit.bench.stats import Sample
from llm_worker.devkit.devstack import free_port, local_stack, spawn_fake_provider
from llm_worker.registry.migrate import migrate
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.cli.client import wait_until

__all__ = [
    "SYSTEMS",
    "WORKER_COMMAND",
    "Load",
    "Record",
    "Stack",
    "open_stack",
    "prompt_text",
    "provider_batches",
    "py_spy_path",
    "read_topic",
    "run_load",
    "set_profile",
]

SYSTEMS = ("worker", "baseline")
"""The systems a load runs against; any other name is a variant of the worker."""
WORKER_COMMAND = (sys.executable, "-P", "-m", "llm_worker.worker.cli", "run")
"""How the benches start a worker. `-P`: no working directory at the front of its import
path, so the worker's code is found as the bench's own is (the installed package, or
`PYTHONPATH`): a `--variant before:PYTHONPATH=<an older checkout>` run from inside another
checkout ran that checkout's code otherwise, the same code as the worker beside it."""
_dec = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    broker: str
    bootstrap: str
    dsn: str
    fake_url: str
    profile_dir: str | None = None  # py-spy each run's process into this directory


@contextlib.contextmanager
def open_stack(
    broker: str, announce: Callable[[str], None], profile_dir: str | None = None
) -> Iterator[Stack]:
    with contextlib.ExitStack() as stack:
        bootstrap, dsn = stack.enter_context(local_stack(announce, broker=broker))
        migrate(dsn)
        port = free_port()
        fake = spawn_fake_provider(port, "--latency-ms", "20", quiet=True)
        stack.callback(_end, fake)
        yield Stack(broker, bootstrap, dsn, f"http://127.0.0.1:{port}", profile_dir)


def _end(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def set_profile(stack: Stack, profile: str, **settings: float) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{stack.fake_url}/admin/config/{profile}",
        data=json.dumps(settings).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


def _requests(stack: Stack, profiles: tuple[str, ...]) -> int:
    with urllib.request.urlopen(f"{stack.fake_url}/admin/config", timeout=5) as resp:
        found = json.load(resp).get("profiles", {})
    return sum(int(found.get(p, {}).get("requests", 0)) for p in profiles)


def provider_batches(stack: Stack, profile: str) -> list[dict[str, Any]]:
    """The batch jobs the fake provider was given on `profile` (`GET /admin/batches`)."""
    with urllib.request.urlopen(f"{stack.fake_url}/admin/batches", timeout=5) as resp:
        found = json.load(resp).get("batches", [])
    return [b for b in found if isinstance(b, dict) and b.get("profile") == profile]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (nan when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


def mem_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Load:
    count: int
    latency_ms: float
    rate: float | None = None  # prompts/s; None publishes everything at once
    duplicates: float = 0.0  # fraction of prompts that repeat an earlier one
    partitions: int = 4
    timeout_s: float = 600.0
    rss_every_s: float = 0.0  # > 0: sample RSS this often (into `Run.rss`)
    fallback: bool = False  # the worker's row gets a fallback on profile `<run>b`
    response_format: dict[str, Any] | None = None  # asked by every prompt when set
    stream: bool = False  # every prompt says `"stream": true` (chunks on the run's topic)
    token_delay_ms: float = 0.0  # the fake's pause before each streamed event after the first
    scrape_metrics: bool = False  # keep the worker's /metrics at the end (`Run.metrics_text`)
    jitter_ms: float = 0.0  # the fake's latency is latency_ms ± jitter_ms (uniform)
    keys: int = 0  # > 0: prompt i has Kafka key i % keys (0: every prompt its own key)
    key_per_partition: bool = False  # prompt i goes to partition i % partitions, keyed by it
    priorities: tuple[str, ...] = ()  # prompt i says priorities[i % len] (none: says nothing)
    rpm_limit: int | None = None  # the worker's row's rpm_limit (saturates the endpoint)
    lane: str | None = None  # the worker's row's lane ("batch": every prompt a batch job's)
    cost_per_1k: tuple[float, float] = (0.0, 0.0)  # the row's input, output USD per 1k tokens
    events: list[tuple[float, Callable[[Run], None]]] = field(default_factory=list)


@dataclass
class Run:
    """A load in progress: what an event may act on, and what came back."""

    stack: Stack
    system: str
    run_id: str
    profile: str
    model_id: str
    proc: subprocess.Popen[bytes] | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s from start, MB)
    errors: list[str] = field(default_factory=list)  # why the run ended early, if it did
    metrics_text: str = ""  # the worker's /metrics after the last completion, when asked


def py_spy_path() -> str | None:
    """The `py-spy` executable: beside this Python's, else on PATH; None when neither."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def _py_spy(run: Run, load: Load, pid: int) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of the process (collapsed stacks, idle frames left out) when asked."""
    if not run.stack.profile_dir:
        return None
    os.makedirs(run.stack.profile_dir, exist_ok=True)
    name = f"{run.system}-{load.latency_ms:g}ms-{run.run_id}.txt"
    spy = py_spy_path()
    assert spy is not None, "checked before the run (`bench --py-spy`)"
    args = ["record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking"]
    return subprocess.Popen(
        [spy, *args, "--output", os.path.join(run.stack.profile_dir, name)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _create_topics(stack: Stack, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    # the prompts' timestamps from the broker where it can (Apache Kafka; Tansu keeps the
    # producer's): then a completion's queue_ms starts at the append, not before the linger
    conf = {"message.timestamp.type": "LogAppendTime"}
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=conf) for n in names])
    for fut in futures.values():
        fut.result(30)


def log_path(run: Run) -> str:
    """Where a worker run's log goes: every default is on, its line per outcome included
    (the CPU they cost is counted), so the lines go to a file, not the terminal."""
    folder = os.path.join(tempfile.gettempdir(), "llm-worker-bench")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{run.system}-{run.run_id}.log")


def _start(run: Run, load: Load, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if run.system != "baseline":  # the worker, or a variant of it (other settings)
        port = free_port()
        env["LLM_WORKER_HTTP_PORT"] = str(port)
        with open(log_path(run), "wb") as log:  # default logging: outcome lines too
            proc = subprocess.Popen(
                list(WORKER_COMMAND),
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        wait_ready(port, proc, 60)
        deadline = time.monotonic() + 60
        while int(readyz(port).get("assigned_partitions", 0)) < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the worker got no partitions within 60 s")
            time.sleep(0.2)
        return proc
    env["BASELINE_PROVIDER_URL"] = f"{run.stack.fake_url}/{run.profile}/v1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devkit.bench.baseline"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assigned = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"assigned"):
                assigned.set()

    threading.Thread(target=watch, daemon=True).start()
    if not assigned.wait(60):
        _end(proc)
        raise RuntimeError("the baseline loop got no partitions within 60 s")
    return proc


def _publish(
    stack: Stack, topic: str, run: Run, load: Load, sent: array[float], stop: threading.Event
) -> None:
    try:
        _produce_all(stack, topic, run, load, sent, stop)
    except Exception as exc:  # the reader's loop sees it and ends the run
        run.errors.append(f"publisher: {exc!r}")


def prompt_text(n: int) -> str:
    """The text of the bench's prompt number `n` (the fake answers it in 8 words)."""
    return f"benchmark prompt number {n} about stream processing"


def _produce_all(
    stack: Stack, topic: str, run: Run, load: Load, sent: array[float], stop: threading.Event
) -> None:
    # linger 5 ms paced too: one record per produce request loads Tansu more than the worker
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
    distinct = max(1, round(load.count * (1 - load.duplicates)))
    start = time.monotonic()
    for i in range(load.count):
        if stop.is_set():
            break
        if load.rate:
            wait_until(producer, start + i / load.rate)
        prompt: dict[str, Any] = {
            "id": f"{run.run_id}-{i}",
            "model": run.model_id,
            "prompt": prompt_text(i % distinct),
            "max_tokens": 32,
        }
        if load.response_format is not None:
            prompt["response_format"] = load.response_format
        if load.stream:
            prompt["stream"] = True
        if load.priorities:
            prompt["priority"] = load.priorities[i % len(load.priorities)]
        value = _enc.encode(prompt)
        sent[i] = time.time()
        key, part = _key(load, i)
        while True:
            try:
                producer.produce(topic, value, key, partition=part)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(30):
        raise RuntimeError("prompts not acknowledged by the broker within 30 s")


def _key(load: Load, i: int) -> tuple[bytes, int]:
    """Prompt `i`'s Kafka key and partition (-1: the partitioner's choice, by the key)."""
    if load.key_per_partition:
        part = i % load.partitions
        return f"p{part}".encode(), part
    return str(i % load.keys if load.keys else i).encode(), -1


def _scrape(port: int) -> str:
    """The worker's /metrics text ("" when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return bytes(resp.read()).decode()
    except OSError:
        return ""


def _register_model(stack: Stack, run: Run, load: Load) -> tuple[str, ...]:
    """The worker's registry row for this run (with a fallback profile when `load.fallback`);
    the fake profiles it calls."""
    profiles: tuple[str, ...] = (run.profile,)
    row = ModelRow(
        model_id=run.model_id,
        provider="fake",
        endpoint=f"{stack.fake_url}/{run.profile}/v1",
        upstream_model="fake-bench",
        max_tokens=64,
        timeout_ms=30_000,
        rpm_limit=load.rpm_limit,
        lane=load.lane,
        input_cost_per_1k=load.cost_per_1k[0],
        output_cost_per_1k=load.cost_per_1k[1],
    )
    if load.fallback:
        profiles += (run.profile + "b",)
        set_profile(stack, profiles[1], latency_ms=load.latency_ms)
        row = msgspec.structs.replace(
            row,
            fallback_provider="fake",
            fallback_endpoint=f"{stack.fake_url}/{profiles[1]}/v1",
            fallback_model="fake-bench-b",
        )
    upsert_row(stack.dsn, row)
    return profiles


def _env(stack: Stack, run_id: str, load: Load, extra_env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "DATABASE_URL": stack.dsn,
        "LLM_WORKER_PROMPTS_TOPIC": f"bench_prompts_{run_id}",
        "LLM_WORKER_COMPLETIONS_TOPIC": f"bench_completions_{run_id}",
        "LLM_WORKER_DLQ_TOPIC": f"bench_dlq_{run_id}",
        "LLM_WORKER_CHUNKS_TOPIC": f"bench_chunks_{run_id}",
        "LLM_WORKER_GROUP_ID": f"bench-{run_id}",
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LLM_WORKER_TOPIC_PARTITIONS": str(load.partitions),
        **extra_env,
    }


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    timestamp_ms: int


def read_topic(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0
) -> list[Record]:
    """Every record of `topic` up to the end offsets it has now."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                out.append(Record(msg.key(), value, msg.timestamp()[1]))
                offset, part = msg.offset(), msg.partition()
                if offset is not None and part in ends and offset + 1 >= ends[part]:
                    del ends[part]
        if ends:
            raise RuntimeError(f"{topic}: not read to its end within {timeout_s:g} s")
        return out
    finally:
        consumer.close()


def _completion_reader(stack: Stack, run_id: str, topic: str, partitions: int) -> Consumer:
    reader = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"bench-reader-{run_id}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 25,
        }
    )
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return reader


def _read_completions(
    reader: Consumer, prefix: str, sent: array[float], seen: bytearray, sample: Sample
) -> None:
    """Add to `sample` the first completion of each of this run's prompts in one poll."""
    for msg in reader.consume(1000, 0.2):
        value = msg.value()
        if msg.error() is not None or value is None:
            continue
        comp = _dec.decode(value)
        cid = comp.get("id") if isinstance(comp, dict) else None
        if not isinstance(cid, str) or not cid.startswith(prefix):
            continue
        i = int(cid[len(prefix) :])
        if 0 <= i < len(seen) and not seen[i]:
            seen[i] = 1
            sample.add(comp, time.time(), sent[i] or None)


def _watch(
    run: Run,
    load: Load,
    proc: subprocess.Popen[bytes],
    reader: Consumer,
    sent: array[float],
    sample: Sample,
    progress: Progress,
) -> None:
    """Until every prompt is answered (or the run fails): fire the load's events on time,
    sample the process's RSS, read completions."""
    seen = bytearray(load.count)
    events = sorted(load.events, key=lambda e: e[0])
    next_rss = 0.0
    while len(sample.done) < load.count:
        elapsed = time.time() - sample.start
        if elapsed > load.timeout_s:
            run.errors.append(f"timed out after {load.timeout_s:.0f} s")
        elif proc.poll() is not None:
            run.errors.append(f"{run.system} exited with {proc.returncode}")
        if run.errors:
            where = f" (its log: {log_path(run)})" if run.system != "baseline" else ""
            progress.note(f"{run.system}: {'; '.join(run.errors)}{where}")
            break
        while events and events[0][0] <= elapsed:
            events.pop(0)[1](run)
        if load.rss_every_s and elapsed >= next_rss:
            run.rss.append((elapsed, mem_mb(proc.pid)))
            next_rss += load.rss_every_s
        _read_completions(reader, run.run_id + "-", sent, seen, sample)
        progress.update(len(sample.done))


def run_load(
    stack: Stack,
    system: str,
    load: Load,
    progress: Progress,
    extra_env: dict[str, str] | None = None,
) -> tuple[Sample, Run]:
    """Run `load` against `system`: `baseline`, else the worker (`extra_env` on top)."""
    run_id = uuid.uuid4().hex[:8]
    run = Run(stack, system, run_id, f"r{run_id}", f"bench-{run_id}")
    set_profile(
        stack,
        run.profile,
        latency_ms=load.latency_ms,
        jitter_ms=load.jitter_ms,
        token_delay_ms=load.token_delay_ms,
    )
    profiles: tuple[str, ...] = (run.profile,)
    prompts, completions = f"bench_prompts_{run_id}", f"bench_completions_{run_id}"
    topics = [prompts, completions, f"bench_dlq_{run_id}", f"bench_chunks_{run_id}"]
    _create_topics(stack, topics, load.partitions)
    if system != "baseline":
        profiles = _register_model(stack, run, load)
    env = _env(stack, run_id, load, extra_env or {})
    reader = _completion_reader(stack, run_id, completions, load.partitions)
    sample = Sample(system, load.latency_ms, load.count)
    stop = threading.Event()
    proc = run.proc = _start(run, load, env)
    try:
        sent = array("d", bytes(8 * load.count))
        spy = _py_spy(run, load, proc.pid)
        cpu0 = cpu_s(proc.pid)
        pub = threading.Thread(
            target=_publish, args=(stack, prompts, run, load, sent, stop), daemon=True
        )
        sample.start = time.time()
        pub.start()
        progress.start(load.count, f"{system} {load.latency_ms:g} ms")
        _watch(run, load, proc, reader, sent, sample, progress)
        sample.cpu_s = cpu_s(proc.pid) - cpu0
        sample.peak_rss_mb = mem_mb(proc.pid, "VmHWM")
        sample.provider_calls = _requests(stack, profiles)
        port = env.get("LLM_WORKER_HTTP_PORT")
        if load.scrape_metrics and port:
            run.metrics_text = _scrape(int(port))
        progress.finish()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    finally:
        stop.set()
        reader.close()
        _end(proc)
    return sample, run
