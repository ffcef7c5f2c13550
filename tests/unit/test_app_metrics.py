from prometheus_client import generate_latest

from llm_worker.worker.app import App
from llm_worker.worker.config import load_settings


def test_app_builds_without_io_and_exports_component_metrics() -> None:
    # nothing listens on these addresses: constructing must not touch them
    app = App(
        load_settings(
            {
                "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/x",
            }
        ),
        http=False,
    )
    app.breakers.record("m/primary", True, 0.02)
    text = generate_latest(app.metrics.registry).decode()
    for name in (
        "llm_worker_dedup_entries",
        "llm_worker_ratelimit_waiting",
        'llm_worker_circuit_state{endpoint="m/primary",state="closed"} 1.0',
        "llm_worker_in_flight 0.0",
        "llm_worker_completions_total",
    ):
        assert name in text, name
    ok, detail = app.ready()
    assert not ok and detail["registry_loaded"] is False  # not started: not ready


def test_held_requests_and_demotions_are_exported_and_pause_intake() -> None:
    app = App(load_settings({}), http=False)
    assert app.caller.wait_when_open  # the default: hold work while every breaker is open
    for _ in range(60):
        app.breakers.record("m/primary", True, 0.02)
    app.breakers.get("m/primary").latency._fresh_at -= 60  # as if a minute old
    for _ in range(5):
        app.breakers.record("m/primary", True, 2.0)
    with app.caller.holds.wait("circuit_open"), app.caller.holds.wait("retry_backoff"):
        app.limiter.waiting += 1  # a request waiting for rate-limit capacity
        text = generate_latest(app.metrics.registry).decode()
        assert app.caller.held == 3  # what the consume loop pauses partitions on
        app.limiter.waiting -= 1
    for name in (
        'llm_worker_held_requests{reason="circuit_open"} 1.0',
        'llm_worker_held_requests{reason="retry_backoff"} 1.0',
        'llm_worker_held_requests{reason="rate_limit"} 1.0',
        'llm_worker_held_seconds_total{reason="circuit_open"}',
        "llm_worker_ratelimit_waiting 1.0",
        "llm_worker_circuit_waiting 1.0",
        'llm_worker_endpoint_demoted{endpoint="m/primary"} 1.0',
        'llm_worker_circuit_state{endpoint="m/primary",state="closed"} 1.0',
    ):
        assert name in text, name
    assert app.caller.held == 0


def test_dedup_can_be_switched_off() -> None:
    app = App(load_settings({"LLM_WORKER_DEDUP_ENABLED": "false"}), http=False)
    assert app.dedup is None
    assert "llm_worker_dedup_entries" not in generate_latest(app.metrics.registry).decode()


def test_adapter_bench_parses_every_provider(capsys) -> None:  # type: ignore[no-untyped-def]
    from llm_worker.devkit.bench.adapters import run_adapter_bench

    assert run_adapter_bench(calls=10) == 0
    out = capsys.readouterr().out
    for name in ("openai", "azure_openai", "anthropic", "huggingface_generate", "gemini"):
        assert name in out
