"""What `bench` prints: the scenario banner's count is `-n`'s, the summary table's headers carry
units, and `--plot` on a scenario that cannot plot is refused before anything runs."""

from __future__ import annotations

from llm_worker.devkit.bench.scenarios import Options, describe
from llm_worker.devkit.bench.stats import table
from llm_worker.devkit.bench.suite import check_names


def test_sweep_banner_uses_the_count_given() -> None:
    assert "10,000-20,000 prompts" in describe("latency-sweep", Options())
    text = describe("latency-sweep", Options(count=500))
    assert text.startswith("500 prompts") and "10,000" not in text
    assert describe("throughput", Options(count=1_234)).startswith("1,234 prompts")
    assert "2,000 prompts per run" in describe("failover", Options(count=2_000))


def test_table_headers_carry_units() -> None:
    header = table([]).splitlines()[0]
    for unit in ("lat ms", "compl/s", "e2e p50/p99 ms", "ovh p50/p99 ms", "RSS MB", "CPU s/1k"):
        assert unit in header


def test_table_shows_dedup_as_percent() -> None:
    run = {
        "system": "worker",
        "provider_latency_ms": 20.0,
        "completions": 10,
        "count": 10,
        "throughput_per_s": 5000.0,
        "e2e_ms": {"p50": 30.0, "p99": 80.0},
        "overhead_ms": {"p50": 2.0, "p99": 9.0},
        "provider_calls": 3,
        "dedup_ratio": 0.7,
        "peak_rss_mb": 80.0,
        "cpu_s_per_1k": 0.5,
    }
    row = table([("duplicates", run)]).splitlines()[1]
    assert " 70 " in f" {row} ".replace("  ", " ")


def test_plot_on_a_scenario_that_cannot_plot_names_those_that_can() -> None:
    why = check_names(["throughput"], "out.png") or ""
    assert "latency-sweep or soak" in why and "given: throughput" in why


def test_a_long_variant_name_widens_its_column_instead_of_running_into_the_next() -> None:
    from llm_worker.devkit.bench.stats import table

    m = {
        "system": "worker+json_schema",
        "provider_latency_ms": 20.0,
        "completions": 10,
        "count": 10,
        "throughput_per_s": 2038.0,
        "e2e_ms": {"p50": 1.0, "p99": 2.0},
        "overhead_ms": {"p50": 1.0, "p99": 2.0},
        "provider_calls": 10,
        "dedup_ratio": None,
        "peak_rss_mb": 90.5,
        "cpu_s_per_1k": 0.25,
    }
    header, long, short = table([("structured", m), ("structured", {**m, "system": "w"})]).split(
        "\n"
    )
    assert "worker+json_schema 20" in long
    assert header.index("lat ms") == long.index("20 ") == short.index("20 ")
