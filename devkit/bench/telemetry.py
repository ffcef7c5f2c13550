"""`llm-worker bench-telemetry`: what tracing costs, side by side in one run.

One stack (local broker, Postgres, a fake provider process, an OTLP receiver in this process
that decodes and counts the spans it gets) and, per round, one worker process per mode, each
round starting one mode later: `off` (no OTLP endpoint: tracing off, metrics on as always) and
`on` (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=--sample`,
exporting over OTLP/HTTP), and with `--also-sample R...` an `on@R` mode per ratio (`also_sampled`
in the report: what tracing costs as a message's fixed part and its sampled part). Each run
publishes N distinct prompts at once and waits for every completion; it measures the worker
process's CPU time (utime + stime from /proc) from the moment it owns its partitions to the
last completion, and the throughput.

The worker is CPU-bound at full load, so CPU per message is what decides its throughput, and
it is much less disturbed than wall-clock throughput by whatever else runs on the machine.
The report gives the median of each mode and the difference. It also measures, in this
process and free of the machine's noise, what `OutcomeRecorder.record` costs per outcome (all
metrics of a completion), and what the tracing calls of one message cost at the sampling ratio
(`tracing_cost_us`): the spans alone, and with their OTLP protobuf encoding, which the
exporter's thread does in the same process (the worker's encoder, and the SDK's to compare),
through the SDK's synchronous processor; and (`worker_tracing_cost_us`) tracing as the worker
runs it: `Tracing.from_settings`, its span queue and that queue's thread, the encoding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_worker.devkit.bench.harness import WORKER_COMMAND
from llm_worker.devkit.bench.replicas import readyz, wait_ready
from llm_worker.devkit.bench.scenarios import rotation
from llm_worker.devkit.devstack import free_port, local_stack, spawn_fake_provider, wait_port
from llm_worker.registry.migrate import migrate
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.cli.client import CompletionWaiter, publish
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import Completion, Usage, encode
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.records import InputRecord, Outcome

__all__ = [
    "recorder_cost_us",
    "run_telemetry_bench",
    "tracing_cost_us",
    "worker_tracing_cost_us",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


class _Sink:
    """An OTLP/HTTP trace receiver that counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps the connection, as a collector does

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest.FromString(body)
                n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                with sink._lock:
                    sink.spans += n
                    sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> int:
        with self._lock:
            n, self.spans = self.spans, 0
        return n


def _wait_assigned(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if readyz(port).get("assigned_partitions", 0) > 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker on :{port} got no partitions after {timeout:.0f} s")


def _one_run(
    base_env: dict[str, str], mode: dict[str, str], n: int, timeout: float
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    port = free_port()
    env = {
        **base_env,
        **mode,
        "LLM_WORKER_PROMPTS_TOPIC": f"tbench_prompts_{run}",
        "LLM_WORKER_COMPLETIONS_TOPIC": f"tbench_completions_{run}",
        "LLM_WORKER_DLQ_TOPIC": f"tbench_dlq_{run}",
        "LLM_WORKER_GROUP_ID": f"tbench-{run}",
        "LLM_WORKER_HTTP_PORT": str(port),
    }
    proc = subprocess.Popen(list(WORKER_COMMAND), env=env, stdin=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 60)
        wait_ready(port, proc, 60)
        _wait_assigned(port, 60)
        settings = load_settings(env)
        prompts: list[dict[str, Any]] = [
            {
                "id": f"{run}-{i}",
                "model": "bench",
                "prompt": f"benchmark prompt number {i} about stream processing",
                "max_tokens": 32,
            }
            for i in range(n)
        ]
        with CompletionWaiter(settings) as waiter:
            cpu0, t0 = _cpu_s(proc.pid), time.time()
            pub = threading.Thread(target=publish, args=(settings, prompts))
            pub.start()
            last = [t0]

            def seen(_c: dict[str, Any]) -> None:
                last[0] = time.time()

            got = waiter.wait([p["id"] for p in prompts], timeout=timeout, on_completion=seen)
            cpu1 = _cpu_s(proc.pid)
            pub.join()
        elapsed = last[0] - t0
        return {
            "completions": len(got),
            "completions_per_s": len(got) / elapsed if elapsed > 0 else 0.0,
            "cpu_us_per_message": (cpu1 - cpu0) / max(len(got), 1) * 1e6,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def recorder_cost_us(batches: int = 200, size: int = 500) -> float:
    """CPU µs per outcome of `OutcomeRecorder.record`: completions with usage and timings."""
    recorder = OutcomeRecorder(Metrics(), log_outcomes="none")
    now = time.monotonic()
    batch = []
    for i in range(size):
        comp = Completion(
            id=f"r{i}",
            model="bench",
            status="ok",
            text="answer",
            provider="fake",
            endpoint_name="bench/primary",
            usage=Usage(input_tokens=12, output_tokens=30, cost_usd=0.0004),
            latency_ms=21.5,
            attempts=1,
        )
        out = Outcome(
            topic="c", value=encode(comp), key=None, headers=None, completion=comp,
            model_label="bench", started=now - 0.05,
        )  # fmt: skip
        batch.append((InputRecord(topic="p", partition=0, offset=i, value=b"{}"), out, None))
    t0 = time.process_time()
    for _ in range(batches):
        recorder.record(batch)
    return (time.process_time() - t0) / (batches * size) * 1e6


ENCODERS = ("worker", "sdk")
"""OTLP protobuf encoders `tracing_cost_us` measures: the worker's (`ops.otlp_export`, what it
exports with) and the SDK's (`OTLPSpanExporter`'s protobuf objects)."""


def _encoder(name: str) -> Any:
    if name == "sdk":
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        return lambda spans: encode_spans(spans).SerializeToString()
    if name == "worker":
        from llm_worker.worker.ops.otlp_export import encode_request

        return encode_request
    raise ValueError(f"encoder {name!r}: one of {', '.join(ENCODERS)}")


def _span_exporter(otlp: bool, encoder: str = "worker") -> Any:
    """A span exporter that encodes in batches of 512, as the batch processor exports, on the
    calling thread (so its CPU is counted), with `encoder` (`ENCODERS`); with `otlp` False it
    drops the spans."""
    encode = _encoder(encoder)
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult as Result

    class Encoding(SpanExporter):
        def __init__(self) -> None:
            self.batch: list[ReadableSpan] = []

        def export(self, spans: Sequence[ReadableSpan]) -> Result:
            if otlp:
                self.batch.extend(spans)
                if len(self.batch) >= 512:
                    self.flush()
            return Result.SUCCESS

        def flush(self) -> None:
            if self.batch:
                encode(self.batch)
                self.batch = []

    return Encoding()


def _one_call() -> tuple[Any, Any, Any, Any, Completion]:
    """What one message's spans describe: (candidate, target, request, result, completion)."""
    from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
    from llm_worker.registry.resolve import resolve

    endpoint = "http://127.0.0.1:9/v1"
    row = ModelRow(model_id="m", provider="fake", endpoint=endpoint, upstream_model="up")
    (cand,) = resolve({"m": row}, "m")
    target = Target(
        provider="fake", endpoint=endpoint, model="up", endpoint_name="m/primary",
        api_key=None, timeout_ms=10_000, max_tokens=64,
    )  # fmt: skip
    request = ProviderRequest(messages=None, prompt="a question", max_tokens=32)
    result = ProviderResult(
        text="an answer", finish_reason="stop", input_tokens=3, output_tokens=5,
        response_id="chatcmpl-1", response_model="up",
    )  # fmt: skip
    comp = Completion(id="r", model="m", status="ok", text="an answer", attempts=1)
    return cand, target, request, result, comp


def _drive(tracing: Any, n: int, finish: Any) -> float:
    """CPU seconds (every thread of this process) of `n` messages' tracing calls: the CONSUMER
    span, one chat attempt, the PRODUCER span, delivery; then `finish()` (what is still queued
    is exported, and counted)."""
    from llm_worker.worker.ops.tracing import Tracing

    cand, target, request, result, comp = _one_call()
    value = encode(comp)
    t0 = time.process_time()
    for i in range(n):
        rec = InputRecord(topic="p", partition=0, offset=i, value=b"{}", key=b"k")
        mt = tracing.start_message(rec)
        with tracing.activate(mt):
            span = tracing.attempt_started(cand, target, request, 1, None)
            if span is not None:
                tracing.attempt_finished(span, target, result, None)
        draft = Outcome(topic="c", value=value, key=b"k", headers=None, completion=comp)
        traced, headers = tracing.finish_message(mt, draft)
        # the record as the pipeline seals it: delivery ends its PRODUCER span
        out = Outcome(
            topic="c", value=value, key=b"k", headers=headers, completion=comp, trace=traced
        )
        Tracing.delivered(out)
    finish()
    return time.process_time() - t0


def tracing_cost_us(ratio: float, *, otlp: bool, n: int = 20_000, encoder: str = "worker") -> float:
    """CPU µs per message of the tracing calls of one message (its CONSUMER span, one chat
    attempt, the PRODUCER span, delivery) at sampling `ratio`, through the SDK's synchronous
    processor; with `otlp`, the spans are also encoded as OTLP protobuf by `encoder` (what the
    exporter does before sending). `worker_tracing_cost_us` measures the worker's own path."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from llm_worker.worker.ops.sampling import HeadSampler
    from llm_worker.worker.ops.tracing import Tracing

    provider = TracerProvider(sampler=ALWAYS_ON)
    exporter = _span_exporter(otlp, encoder)
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # on this thread: counted
    tracing = Tracing(
        provider, group_id="bench", sampler=HeadSampler("parentbased_traceidratio", ratio)
    )
    cost = _drive(tracing, n, exporter.flush) / n * 1e6
    provider.shutdown()
    return cost


def worker_tracing_cost_us(
    ratio: float, *, n: int = 20_000, protocol: str = "http/protobuf"
) -> float:
    """CPU µs per message of tracing as the worker runs it at sampling `ratio`:
    `Tracing.from_settings` (its spans, its span processor and that processor's thread, the
    exporter's encoding in `protocol`), every thread of the process counted, the exporter's
    HTTP POST left out (it goes nowhere)."""
    from unittest import mock

    from llm_worker.worker.ops.otlp_export import OtlpHttpExporter
    from llm_worker.worker.ops.tracing import Tracing

    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }
    with mock.patch.object(OtlpHttpExporter, "_send", return_value=None):
        tracing = Tracing.from_settings(load_settings(env))
        assert tracing is not None
        return _drive(tracing, n, lambda: tracing.close(60.0)) / n * 1e6


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def _on(sink: _Sink, sample: float) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(sample),
    }


def _modes(
    sink: _Sink, sample: float, also: Sequence[float] = ()
) -> Iterator[tuple[str, dict[str, str]]]:
    """`off`, `on` (at `sample`), and `on@R` for each other ratio R of `also`."""
    yield "off", {}
    yield "on", _on(sink, sample)
    for ratio in also:
        yield f"on@{ratio:g}", _on(sink, ratio)


def _bench_env(
    stack: contextlib.ExitStack, args: argparse.Namespace, procs: list[subprocess.Popen[bytes]]
) -> dict[str, str]:
    """The local stack, a fake provider and the bench row; the workers' environment."""
    bootstrap, dsn = stack.enter_context(local_stack())
    migrate(dsn)
    fport = free_port()
    procs.append(spawn_fake_provider(fport, "--latency-ms", str(args.latency_ms), quiet=True))
    upsert_row(
        dsn,
        ModelRow(
            model_id="bench",
            provider="fake",
            endpoint=f"http://127.0.0.1:{fport}/v1",
            upstream_model="fake-bench",
            max_tokens=64,
            timeout_ms=10_000,
            input_cost_per_1k=0.001,
            output_cost_per_1k=0.002,
        ),
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "LLM_WORKER_LOG_LEVEL": "WARNING",
        "LLM_WORKER_KAFKA_SESSION_TIMEOUT_MS": "6000",
    }


def _report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Tracing off against on: medians over the rounds, each round's pair compared."""
    off, on = results["off"], results["on"]
    cpu_off = _median(off, "cpu_us_per_message")
    rate_off, rate_on = _median(off, "completions_per_s"), _median(on, "completions_per_s")
    main = _against_off(on, off)
    return {
        "count": args.count,
        "rounds": args.rounds,
        "sample": args.sample,
        "provider_latency_ms": args.latency_ms,
        "off": {"cpu_us_per_message": round(cpu_off, 1), "completions_per_s": round(rate_off)},
        "on": {
            "cpu_us_per_message": main["cpu_us_per_message"],
            "completions_per_s": round(rate_on),
        },
        "cpu_per_message_change_pct": main["cpu_per_message_change_pct"],
        "paired_cpu_change_pct": main["paired_cpu_change_pct"],
        "throughput_change_pct": round((rate_on / rate_off - 1) * 100, 2),
        "spans_per_message_on": round(_median(on, "spans_exported") / args.count, 3),
        "recorder_us_per_outcome": round(recorder_cost_us(), 2),
        "tracing_us_per_message": {
            "spans": round(tracing_cost_us(args.sample, otlp=False), 2),
            "spans_and_otlp_encoding": round(tracing_cost_us(args.sample, otlp=True), 2),
            "spans_and_sdk_otlp_encoding": round(
                tracing_cost_us(args.sample, otlp=True, encoder="sdk"), 2
            ),
            "not_sampled": round(tracing_cost_us(0.0, otlp=False), 2),
            # the worker's own path: its spans, span processor, thread and encoder
            "worker_path": round(worker_tracing_cost_us(args.sample), 2),
            "worker_path_not_sampled": round(worker_tracing_cost_us(0.0), 2),
        },
        "also_sampled": {
            name.removeprefix("on@"): _against_off(runs, off)
            for name, runs in results.items()
            if name.startswith("on@")
        },
        "runs": results,
    }


def _against_off(runs: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, Any]:
    """A mode's CPU per message against tracing off: the medians' change, and the median of
    the rounds' own changes (each round ran every mode back to back)."""
    cpu, cpu_off = _median(runs, "cpu_us_per_message"), _median(off, "cpu_us_per_message")
    return {
        "cpu_us_per_message": round(cpu, 1),
        "cpu_per_message_change_pct": round((cpu / cpu_off - 1) * 100, 2),
        "paired_cpu_change_pct": round(
            statistics.median(
                (a["cpu_us_per_message"] / b["cpu_us_per_message"] - 1) * 100
                for a, b in zip(runs, off, strict=True)
            ),
            2,
        ),
    }


def run_telemetry_bench(args: argparse.Namespace) -> int:
    sink = _Sink()
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        base_env = _bench_env(stack, args, procs)
        modes = list(_modes(sink, args.sample, args.also_sample or ()))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in modes}
        try:
            for i, (name, mode) in enumerate(rotation(modes, args.rounds)):
                sink.take()
                res = _one_run(base_env, mode, args.count, args.timeout)
                time.sleep(1.0)  # the last batch of spans, exported at shutdown
                res["spans_exported"] = sink.take()
                results[name].append(res)
                r = i // len(modes) + 1
                print(f"round {r} {name}: {json.dumps(res)}", file=sys.stderr)
        finally:
            for proc in procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
    print(json.dumps(_report(args, results)))
    ok = all(r["completions"] == args.count for rs in results.values() for r in rs)
    return 0 if ok else 1
