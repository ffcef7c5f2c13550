"""The benchmark suite's logic: statistics, the soak's slope, the scenario registry, the shape of
its JSON line, the progress bar, and the command line that reaches it."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_worker.devkit.bench.harness import (
    WORKER_COMMAND,
    Record,
    Stack,
    prompt_text,
    provider_batches,
)
from llm_worker.devkit.bench.plot import plot_soak, series
from llm_worker.devkit.bench.progress import Progress, bar
from llm_worker.devkit.bench.scenarios import (
    SCENARIOS,
    STREAM_PAUSES,
    SWEEP_MS,
    Options,
    batch_figures,
    compare,
    describe,
    medians,
    paired_cpu_ratio,
    rotation,
    soak_summary,
)
from llm_worker.devkit.bench.stats import (
    METRIC_KEYS,
    Sample,
    after_warmup,
    metrics,
    percentile,
    slope,
    steady,
    table,
)
from llm_worker.devkit.bench.streaming import (
    chunk_figures,
    hist_quantile,
    prompt_times,
    scraped,
)
from llm_worker.devkit.bench.suite import (
    check_names,
    cpu_regressions,
    options_from,
    parse_variant,
    scenario_line,
)
from llm_worker.devkit.fake_server import start_fake_server
from llm_worker.worker.chunks import ChunkBody, chunk_record
from llm_worker.worker.cli.client import wait_until
from llm_worker.worker.cli.main import build_parser
from llm_worker.worker.ops.metrics import Metrics


def test_percentile_is_nearest_rank_and_nan_when_empty() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(list(reversed(values)), 0) == 1.0
    assert math.isnan(percentile([], 50))


def test_slope_of_a_line_a_flat_series_and_too_few_points() -> None:
    assert slope([(x, 2 * x + 1) for x in range(10)]) == pytest.approx(2.0)
    assert slope([(x, 5.0) for x in range(10)]) == 0.0
    assert slope([(1.0, 3.0)]) == 0.0
    assert slope([(1.0, 3.0), (1.0, 9.0)]) == 0.0  # no spread in x


def test_the_soak_slope_leaves_the_warm_up_out() -> None:
    # a start-up climb of 100 MB in the first 60 s, then 1 MB per minute
    rss = [(float(t), 50.0 + t * 100 / 60) for t in range(0, 60, 10)]
    rss += [(float(t), 150.0 + (t - 60) / 60) for t in range(60, 601, 10)]
    assert after_warmup(rss, 120.0)[0] == (120.0, 151.0)
    out = soak_summary(rss, 600.0)
    assert out["warmup_s"] == 120.0
    assert out["rss_mb_first_last"] == [151.0, 159.0]
    assert out["rss_slope_mb_per_h"] == pytest.approx(60.0)
    assert len(out["rss_mb"]) == len(rss) and out["rss_mb"][-1] == 159.0
    assert soak_summary(rss[:1], 600.0)["rss_slope_mb_per_h"] is None
    assert out["rss_slope_second_half_mb_per_h"] == pytest.approx(60.0)  # still growing


def test_the_soak_tells_a_level_reached_from_a_leak() -> None:
    # climbs in steps for 10 minutes (windows and caches filling), then stays
    rss = [(float(t), 100.0 + min(t, 600) / 20) for t in range(0, 1801, 10)]
    out = soak_summary(rss, 1800.0)
    assert out["rss_slope_mb_per_h"] > 10  # the whole steady part says "grows"...
    assert out["rss_slope_second_half_mb_per_h"] == 0.0  # ...the second half says it stopped


def _completion(i: int, **fields: object) -> dict[str, object]:
    return {"id": f"r-{i}", "status": "ok", "queue_ms": 30.0, "latency_ms": 20.0, **fields}


def test_metrics_of_a_run_have_the_fixed_keys_and_figures() -> None:
    s = Sample("worker", 20.0, count=4)
    s.start = 100.0
    s.add(_completion(0), 101.0, 100.0)
    s.add(_completion(1, queue_ms=22.5), 101.5, 100.5)
    s.add(_completion(2, deduplicated=True, queue_ms=500.0), 102.0, 101.0)  # no own call
    s.add({"id": "r-3", "status": "error", "error": {"type": "timeout"}}, 102.0, None)
    s.cpu_s, s.peak_rss_mb, s.provider_calls = 0.8, 70.04, 2
    m = metrics(s)
    assert tuple(m) == METRIC_KEYS
    assert m["completions"] == 4 and m["ok"] == 3
    assert m["errors"] == {"timeout": 1}
    assert m["throughput_per_s"] == 2.0  # 4 completions in the 2 s from the first publish
    assert m["e2e_ms"]["p50"] == 1000.0
    # the follower waited on its leader, not on a provider: not in the overhead
    assert m["overhead_ms"] == {"p50": 2.5, "p99": 10.0}
    assert m["dedup_ratio"] == 0.25
    assert m["cpu_s_per_1k"] == 200.0  # 0.8 s over 4 completions
    assert m["peak_rss_mb"] == 70.0
    json.dumps(m, allow_nan=False)  # no NaN reaches the JSON line


def test_metrics_of_a_run_that_got_nothing_are_nulls_not_nan() -> None:
    m = metrics(Sample("baseline", 5.0, count=10))
    assert m["completions"] == 0
    assert m["throughput_per_s"] is None and m["cpu_s_per_1k"] is None
    assert m["e2e_ms"] == {"p50": None, "p95": None, "p99": None}
    json.dumps(m, allow_nan=False)
    assert "baseline" in table([("throughput", m)])


def test_the_registry_has_the_scenarios_each_with_help() -> None:
    assert list(SCENARIOS) == [
        "throughput",
        "latency-sweep",
        "duplicates",
        "structured",
        "half-load",
        "ordering",
        "streaming",
        "failover",
        "slow-provider",
        "soak",
        "priority",
        "batch",
    ]
    assert all(s.help and callable(s.run) for s in SCENARIOS.values())
    assert SWEEP_MS == (5.0, 20.0, 100.0, 500.0, 2000.0)


def test_unknown_scenarios_and_a_plot_without_the_sweep_are_refused() -> None:
    assert check_names(["throughput", "soak"], None) is None
    assert "unknown scenario thruput" in (check_names(["thruput"], None) or "")
    assert "latency-sweep or soak" in (check_names(["throughput"], "out.png") or "")
    assert "latency-sweep or soak" in (check_names(["latency-sweep", "soak"], "o.png") or "")
    assert check_names(["latency-sweep"], "out.png") is None
    assert check_names(["throughput", "soak"], "out.png") is None


def test_the_soak_plot_is_drawn_from_its_json_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rss = [(float(t), 100.0 + min(t, 600) / 20) for t in range(0, 1801, 10)]
    line = {"duration_s": 1800.0, "rate": 500.0, "rss_every_s": 10.0, **soak_summary(rss, 1800)}
    out = tmp_path / "soak.png"
    plot_soak(line, str(out), "soak")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scenario_line_names_itself_first_and_compares_with_the_baseline() -> None:
    w = metrics(Sample("worker", 20.0, 1))
    w.update(throughput_per_s=3000.0, sustained_per_s=3300.0, cpu_s_per_1k=0.15)
    b = dict(w, system="baseline", throughput_per_s=2000.0, sustained_per_s=None)
    b["cpu_s_per_1k"] = 0.2
    line = scenario_line("throughput", "kafka", {"runs": [w, b], "vs_baseline": compare(w, b)})
    assert list(line)[:3] == ["scenario", "broker", "runs"]
    assert line["vs_baseline"] == {
        "throughput_ratio": 1.5,
        "sustained_ratio": None,
        "cpu_per_completion_ratio": 0.75,
    }
    assert json.loads(json.dumps(line)) == line


def test_the_cpu_regression_check_names_each_system_over_the_ratio() -> None:
    result = {
        "runs": [],
        "vs_baseline": {"cpu_per_completion_ratio": 2.4},
        "logs-none_vs_baseline": {"cpu_per_completion_ratio": 1.9},
        "nolog_vs_baseline": {"cpu_per_completion_ratio": None},
    }
    assert cpu_regressions("throughput", result, 2.0) == [
        "throughput: worker's CPU per completion is 2.4x the plain loop's (--max-cpu-ratio 2)"
    ]
    assert cpu_regressions("throughput", result, 2.5) == []
    assert cpu_regressions("throughput", result, None) == []  # no check asked


def test_rounds_compare_each_systems_median() -> None:
    runs = [
        {"system": "worker", "throughput_per_s": t, "sustained_per_s": None, "cpu_s_per_1k": c}
        for t, c in ((3000.0, 0.30), (2000.0, 0.25), (3100.0, 0.40))
    ]
    med = medians(runs)
    assert med["rounds"] == 3 and med["throughput_per_s"] == 3000.0
    assert med["cpu_s_per_1k"] == 0.30 and med["cpu_s_per_1k_range"] == [0.25, 0.40]
    assert "sustained_per_s" not in med


def test_a_bench_worker_finds_its_code_as_the_bench_does_not_in_its_directory(
    tmp_path: Path,
) -> None:
    """A `--variant before:PYTHONPATH=<older checkout>` run from inside a checkout must run
    the older code: the working directory must not come first on the worker's import path."""
    shadow = tmp_path / "llm_worker"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("SHADOW = True\n")
    python, *flags = WORKER_COMMAND[: WORKER_COMMAND.index("-m")]
    probe = "import llm_worker; print(getattr(llm_worker, 'SHADOW', False))"
    run = subprocess.run([python, *flags, "-c", probe], cwd=tmp_path, capture_output=True)
    assert run.stdout.decode().strip() == "False", run.stderr.decode()


def test_rounds_rotate_so_each_system_runs_in_each_place() -> None:
    order = rotation(["worker", "before", "baseline"], 3)
    assert order == [
        "worker", "before", "baseline",
        "before", "baseline", "worker",
        "baseline", "worker", "before",
    ]  # fmt: skip
    for place in range(3):  # first, second, third: each system once over three rounds
        assert sorted(order[place::3]) == ["baseline", "before", "worker"]
    assert rotation(["worker"], 0) == ["worker"]


def test_the_paired_ratio_is_the_median_of_each_rounds_own() -> None:
    def run(system: str, cpu: float | None) -> dict[str, object]:
        return {"system": system, "cpu_s_per_1k": cpu}

    runs = [
        run("worker", 0.30), run("baseline", 0.20),  # 1.5 (a slow round for both)
        run("baseline", 0.10), run("worker", 0.11),  # 1.1
        run("worker", 0.12), run("baseline", 0.12),  # 1.0
    ]  # fmt: skip
    # the medians apart (0.12 / 0.12 = 1.0) hide the round where both were slow; paired: 1.1
    assert paired_cpu_ratio(runs, "worker", 2) == 1.1
    assert paired_cpu_ratio([run("worker", 0.1), run("baseline", None)], "worker", 2) is None


def test_the_plot_series_is_per_system_and_ordered_by_latency() -> None:
    runs = [
        {"system": "worker", "provider_latency_ms": 500.0, "throughput_per_s": 1500.0,
         "e2e_ms": {"p99": 3000.0}},
        {"system": "worker", "provider_latency_ms": 5.0, "throughput_per_s": 4000.0,
         "e2e_ms": {"p99": 900.0}},
        {"system": "baseline", "provider_latency_ms": 5.0, "throughput_per_s": None,
         "e2e_ms": {"p99": None}},
    ]  # fmt: skip
    assert series(runs) == {"worker": [(5.0, 4000.0, 900.0), (500.0, 1500.0, 3000.0)]}


def test_the_progress_bar() -> None:
    line = bar(500, 1000, 2.0, "worker 20 ms")
    assert line.startswith("worker 20 ms       [###############...............]")
    assert line.split("]")[1].split() == ["500/1,000", "250/s", "2.0", "s"]
    out = io.StringIO()
    p = Progress(out)
    p.start(10, "x")
    p.update(3)  # not a terminal: no line before 10 s
    p.finish()
    assert out.getvalue().count("\n") == 1 and "10" in out.getvalue()


def test_the_command_line_keeps_the_single_load_and_takes_scenarios() -> None:
    parser = build_parser()
    old = parser.parse_args(["bench", "-n", "500", "--rate", "100"])
    assert old.scenario == [] and old.count == 500 and old.rate == 100.0
    new = parser.parse_args(
        ["bench", "soak", "throughput", "--duration", "60", "--broker", "kafka", "--no-baseline"]
    )
    assert new.scenario == ["soak", "throughput"] and new.broker == "kafka"
    opts = options_from(new)
    assert opts.duration_s == 60.0 and opts.baseline is False and opts.count is None


def test_a_variant_is_a_named_set_of_environment_variables() -> None:
    assert parse_variant("big:LLM_WORKER_MAX_IN_FLIGHT=512,LLM_WORKER_LOG_LEVEL=INFO") == (
        "big",
        (("LLM_WORKER_MAX_IN_FLIGHT", "512"), ("LLM_WORKER_LOG_LEVEL", "INFO")),
    )
    for bad in ("big", "big:", ":A=1", "big:A", "baseline:A=1"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)
    args = build_parser().parse_args(["bench", "throughput", "--variant", "v:A=1"])
    assert options_from(args).variants == (("v", (("A", "1"),)),)


def _chunk(rid: str, seq: int, ts: int, text: str = "w", finish: str | None = None) -> Record:
    body = ChunkBody(delta=text, finish_reason=finish).encode()
    return Record(rid.encode(), chunk_record(rid, seq, body), ts)


def test_chunk_figures_count_records_per_answer_and_the_time_to_the_first() -> None:
    prompts = [
        Record(b"0", b'{"id":"r-0","stream":true}', 1000),
        Record(b"1", b'{"id":"r-1"}', 1010),
    ]
    sent = prompt_times(prompts)
    assert sent == {"r-0": 1000, "r-1": 1010}
    chunks = [
        _chunk("r-0", 0, 1050),  # 50 ms after its prompt, 40 the provider's: 10 worker-added
        _chunk("r-0", 1, 1070),
        _chunk("r-0", 2, 1090, "", "stop"),
        _chunk("r-1", 0, 1080),  # 70 ms after its prompt: 30 worker-added
        _chunk("r-1", 2, 1120, "", "stop"),  # seq 1 missing: a broken sequence
    ]
    out = chunk_figures(chunks, sent, first_word_ms=40.0)
    assert out["chunk_records"] == 5 and out["answers_with_chunks"] == 2
    assert out["chunks_per_answer"] == 2.5
    assert out["bytes_per_chunk"] == round(sum(len(c.value) for c in chunks) / 5, 1)
    assert out["broken_sequences"] == 1
    assert out["first_chunk_overhead_ms"] == {"p50": 10.0, "p99": 30.0}
    empty = chunk_figures([], sent, 40.0)
    assert empty["chunks_per_answer"] is None and empty["first_chunk_overhead_ms"]["p50"] is None


def test_a_histogram_quantile_interpolates_within_its_bucket() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert hist_quantile(buckets, 0.5) == pytest.approx(0.01)
    assert hist_quantile(buckets, 0.25) == pytest.approx(0.005)  # from 0 in the first bucket
    assert hist_quantile(buckets, 0.7) == pytest.approx(0.055)
    assert hist_quantile(buckets, 0.99) == pytest.approx(0.91)
    assert hist_quantile([(0.1, 9.0), (math.inf, 10.0)], 0.99) == 0.1  # in +Inf: the last bound
    assert math.isnan(hist_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5))


def test_the_worker_s_chunk_metrics_are_read_from_its_metrics_text() -> None:
    from prometheus_client import generate_latest

    m = Metrics()
    assert scraped(generate_latest(m.registry).decode())["chunks_total"] == 0
    for size in (100, 120, 140):
        m.chunks.inc()
        m.chunk_bytes.inc(size)
    for seconds in (0.002, 0.003, 0.004, 0.02):
        m.first_chunk.observe(seconds)
    out = scraped(generate_latest(m.registry).decode())
    assert out["chunks_total"] == 3 and out["bytes_per_chunk"] == 120.0
    first = out["first_chunk_ms"]
    assert first["count"] == 4
    assert 2.5 <= first["p50"] <= 5.0  # in the 2.5-5 ms bucket
    assert 10.0 <= first["p99"] <= 25.0


async def test_the_fake_streams_a_bench_prompt_s_answer_with_the_pauses_the_scenario_counts() -> (
    None
):
    """`streaming` gives its unstreamed runs the streamed call's length: the fake's latency
    plus STREAM_PAUSES token delays, one before each event after the first."""
    body = {
        "model": "fake-bench",  # the bench's upstream model: its name is a word of the answer
        "messages": [{"role": "user", "content": prompt_text(1234)}],
        "max_tokens": 32,
        "stream": True,
        "stream_options": {"include_usage": True},  # as the worker asks
    }
    async with await start_fake_server(shutdown_timeout=0.2) as server:
        url = server.endpoint("bench") + "/chat/completions"
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    assert len(events) - 1 == STREAM_PAUSES


def test_the_batch_scenario_sums_each_run_s_cost_and_counts_its_jobs() -> None:
    def usage(cost: float | None) -> dict[str, float | None]:
        return {"input_tokens": 10, "output_tokens": 8, "cost_usd": cost}

    online = [{"id": f"run1-{i}", "lane": "online", "usage": usage(0.00004)} for i in range(4)]
    batch = [
        {"id": f"run2-{i}", "lane": "batch", "usage": usage(0.00002), "batch_id": f"b{i % 2}"}
        for i in range(4)
    ]
    batch.append(dict(batch[0]))  # delivered twice (a crash between produce and done): once
    batch += [{"id": "run1-0", "usage": usage(1.0)}, {"id": "run2-x", "usage": usage(1.0)}]
    figures = batch_figures(batch, "run2")
    assert figures == {
        "completions": 4,
        "lanes": {"batch": 4},
        "cost_usd": 0.00008,
        "batch_jobs": 2,
    }
    assert batch_figures(online, "run1")["cost_usd"] == 0.00016
    assert batch_figures(online, "run1")["batch_jobs"] == 0
    error = {"id": "run1-0", "status": "error", "usage": None}  # no lane, no usage
    assert batch_figures([error], "run1") == {
        "completions": 1,
        "lanes": {"online": 1},
        "cost_usd": 0.0,
        "batch_jobs": 0,
    }
    assert describe("batch", Options(count=2000)).startswith("2,000 prompts at 20 ms online")


async def test_the_bench_reads_the_batch_jobs_of_its_own_profile_from_the_fake() -> None:
    body = {"model": "fake-bench", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    async with (
        await start_fake_server(shutdown_timeout=0.2) as server,
        aiohttp.ClientSession(server.url) as session,
    ):
        for prefix in ("/rmine", "/rmine", "/rother"):
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", json.dumps(line).encode() + b"\n", filename="in.jsonl")
            async with session.post(f"{prefix}/v1/files", data=form) as r:
                file_id = (await r.json())["id"]
            job = {
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            async with session.post(f"{prefix}/v1/batches", json=job) as r:
                assert r.status == 200, await r.text()
        stack = Stack("tansu", "", "", server.url)
        mine = await asyncio.to_thread(provider_batches, stack, "rmine")
    assert [(b["profile"], b["requests"]) for b in mine] == [("rmine", 1), ("rmine", 1)]


class _MsPoll:
    """librdkafka's poll as confluent-kafka calls it: the timeout in whole milliseconds."""

    def __init__(self) -> None:
        self.calls = 0

    def poll(self, timeout: float) -> int:
        self.calls += 1
        time.sleep(int(timeout * 1000) / 1000)
        return 0


def test_a_paced_wait_shorter_than_a_millisecond_sleeps_instead_of_spinning() -> None:
    producer = _MsPoll()
    cpu0, t0 = time.process_time(), time.monotonic()
    for n in range(1, 201):  # 200 prompts at 2,000/s: 0.5 ms apart
        wait_until(producer, t0 + n / 2000)  # type: ignore[arg-type]
    assert time.monotonic() - t0 >= 0.1
    assert producer.calls == 0  # every wait was under 2 ms: slept, never polled in a loop
    assert time.process_time() - cpu0 < 0.05  # a spinning wait burns the whole 0.1 s


def test_a_long_paced_wait_polls_for_delivery_reports() -> None:
    producer = _MsPoll()
    t0 = time.monotonic()
    wait_until(producer, t0 + 0.02)  # type: ignore[arg-type]
    assert producer.calls >= 1 and time.monotonic() - t0 >= 0.02


def test_py_spy_is_refused_with_a_line_when_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench --py-spy` without py-spy installed (or without a scenario) exits 2 with a line
    naming what is missing, before any broker starts (it used to end in a traceback)."""
    from llm_worker.devkit.bench import harness
    from llm_worker.worker.cli.main import main

    monkeypatch.setattr(harness, "py_spy_path", lambda: None)
    assert main(["bench", "throughput", "--py-spy", "/tmp/x"]) == 2
    assert "py-spy (pip install py-spy)" in capsys.readouterr().err
    monkeypatch.setattr(harness, "py_spy_path", lambda: "/usr/bin/py-spy")
    assert main(["bench", "--py-spy", "/tmp/x"]) == 2
    assert "needs a suite scenario" in capsys.readouterr().err


def test_steady_figures_leave_out_the_prompts_sent_during_the_warm_up() -> None:
    """`half-load`'s steady state: only prompts sent `warmup_s` after publishing began count;
    a slow start (a just-started broker) shows in the whole run's figures, not in these."""
    s = Sample(system="worker", provider_latency_ms=20.0, count=200, start=1000.0)
    for i in range(200):
        sent = 1000.0 + i * 0.1  # 20 s of publishing; the first 10 s answered 500 ms late
        slow = i < 100
        comp = {"status": "ok", "queue_ms": 520.0 if slow else 22.0, "latency_ms": 20.0}
        s.add(comp, sent + (0.52 if slow else 0.022), sent)
    whole = metrics(s)["overhead_ms"]
    calm = steady(s, 10.0)
    assert whole["p99"] == 500.0
    assert calm["completions"] == 100
    assert calm["overhead_ms"] == {"p50": 2.0, "p99": 2.0}
    assert calm["e2e_ms"]["p99"] == pytest.approx(22.0)


def test_half_load_paces_the_plain_loop_at_the_worker_s_rate_and_reports_both_ratios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`half-load` with the plain loop: the worker's burst sets the rate; after the worker's
    paced run (and the broker's warm-up) the loop runs the same burst and is paced at that same
    rate; each system's paced CPU is set against its own burst."""
    from llm_worker.devkit.bench import scenarios
    from llm_worker.devkit.bench.harness import Load, Stack

    cpu_per_1k = {("worker", None): 0.15, ("worker", 2000.0): 0.30}
    cpu_per_1k |= {("baseline", None): 0.13, ("baseline", 2000.0): 0.16}
    calls: list[tuple[str, int, float | None]] = []

    def run_load(stack: Stack, system: str, load: Load, progress: Progress) -> tuple[Sample, None]:
        calls.append((system, load.count, load.rate))
        s = Sample(system, load.latency_ms, load.count, start=100.0)
        span = load.count / (load.rate or 4000.0)  # a burst at 4,000/s
        step = span / load.count
        for i in range(load.count):  # each read one step after it was sent
            sent = 100.0 + i * step
            s.add({"status": "ok", "queue_ms": 22.0, "latency_ms": 20.0}, sent + step, sent)
        s.cpu_s = cpu_per_1k.get((system, load.rate), 0.0) * load.count / 1000
        return s, None

    monkeypatch.setattr(scenarios, "run_load", run_load)
    stack = Stack("tansu", "127.0.0.1:9092", "postgresql://x", "http://127.0.0.1:1")
    opts = Options(count=4000, duration_s=5.0)
    out = SCENARIOS["half-load"].run(stack, opts, Progress(io.StringIO()))
    paced = 2000 * (15 + 5)
    assert calls == [
        ("worker", 4000, None),
        ("worker", paced, 2000.0),
        ("baseline", 4000, None),
        ("baseline", paced, 2000.0),
    ]
    assert out["rate"] == 2000
    assert out["paced_vs_burst_cpu"] == {"worker": 2.0, "baseline": 1.23}
    assert out["paced_vs_baseline"]["cpu_per_completion_ratio"] == pytest.approx(1.88, abs=0.01)
    assert out["baseline_steady"]["completions"] == (2000 * 5)
    worker_line, loop_line = out["summary"]
    assert worker_line.startswith("worker paced at 2000/s") and "2.0x the burst's" in worker_line
    assert loop_line.startswith("plain loop paced at 2000/s") and "1.23x" in loop_line
    # without the plain loop, the worker's two runs only
    calls.clear()
    alone = SCENARIOS["half-load"].run(
        stack, replace(opts, baseline=False), Progress(io.StringIO())
    )
    assert [c[0] for c in calls] == ["worker", "worker"]
    assert alone["paced_vs_burst_cpu"] == {"worker": 2.0} and len(alone["summary"]) == 1


def test_bench_telemetry_runs_more_sampling_ratios_each_against_tracing_off() -> None:
    """`bench-telemetry --also-sample 0 1`: an `on@R` mode per ratio next to `off` and `on`,
    each reported against `off` as the medians' change and the median of the rounds' own."""
    from types import SimpleNamespace

    from llm_worker.devkit.bench.telemetry import _against_off, _modes

    args = build_parser().parse_args(["bench-telemetry", "--also-sample", "0", "1"])
    assert args.sample == 0.1 and args.also_sample == [0.0, 1.0]
    sink: Any = SimpleNamespace(url="http://127.0.0.1:4318")
    modes = dict(_modes(sink, args.sample, args.also_sample))
    assert list(modes) == ["off", "on", "on@0", "on@1"]
    assert modes["off"] == {}
    assert modes["on"]["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert modes["on@1"]["OTEL_TRACES_SAMPLER_ARG"] == "1.0"
    assert all(m["OTEL_EXPORTER_OTLP_ENDPOINT"] == sink.url for n, m in modes.items() if n != "off")
    off = [{"cpu_us_per_message": v} for v in (100.0, 120.0, 110.0)]
    on = [{"cpu_us_per_message": v} for v in (110.0, 126.0, 143.0)]  # +10%, +5%, +30%
    assert _against_off(on, off) == {
        "cpu_us_per_message": 126.0,
        "cpu_per_message_change_pct": 14.55,
        "paired_cpu_change_pct": 10.0,
    }
