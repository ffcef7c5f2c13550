"""What acknowledged outcomes leave behind (metrics, log lines) and what librdkafka reports
(statistics, logs), without a broker."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from llm_worker.worker.app import App
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import Completion, ErrorInfo, Usage, encode
from llm_worker.worker.ops.logs import JsonFormatter, configure_logging
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream.kafka_conf import client_config


def _rec(i: int) -> InputRecord:
    return InputRecord(topic="p", partition=0, offset=i, value=b"{}", timestamp_ms=None)


def _done(comp: Completion, *, started: float, model_label: str = "m") -> Outcome:
    return Outcome(
        topic="c",
        value=encode(comp),
        key=None,
        headers=None,
        completion=comp,
        model_label=model_label,
        started=started,
    )


def _ok(i: int, *, tokens: tuple[int, int], cost: float, dedup: bool = False) -> Completion:
    return Completion(
        id=f"r{i}",
        model="m",
        status="ok",
        text="t",
        provider="openai",
        endpoint_name="m/primary",
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1], cost_usd=cost),
        latency_ms=400.0,
        deduplicated=dedup,
        attempts=0 if dedup else 1,
    )


def _batch(now: float) -> list[tuple[InputRecord, Outcome, Any]]:
    error = Completion(
        id="r3",
        model="nope",
        status="error",
        error=ErrorInfo(type="unknown_model", message="no such model_id"),
    )
    dead = Outcome(topic="dlq", value=b"x", key=None, headers=None, dlq_reason="invalid_json")
    outs = [
        _done(_ok(1, tokens=(10, 20), cost=0.5), started=now - 1.0),
        _done(_ok(2, tokens=(10, 20), cost=0.0, dedup=True), started=now - 0.2),
        _done(error, started=now - 0.1, model_label="unknown"),
        dead,
    ]
    return [(_rec(i), o, None) for i, o in enumerate(outs)]


def test_tokens_cost_and_times_count_what_was_answered() -> None:
    metrics = Metrics()
    now = 1000.0
    OutcomeRecorder(metrics, clock=lambda: now).record(_batch(now))

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    # the deduplicated answer was paid for by the request that called: counted once
    assert value("llm_worker_tokens_total", model="m", provider="openai", direction="input") == 10
    assert value("llm_worker_tokens_total", model="m", provider="openai", direction="output") == 20
    assert value("llm_worker_cost_usd_total", model="m", provider="openai") == 0.5
    assert value("llm_worker_time_to_answer_seconds_count") == 3  # every completion
    assert value("llm_worker_time_to_answer_seconds_sum") == pytest.approx(1.3)
    # overhead: only for the answer of a provider call, 1.0 s minus its 0.4 s
    assert value("llm_worker_overhead_seconds_count") == 1
    assert value("llm_worker_overhead_seconds_sum") == pytest.approx(0.6)
    assert value("llm_worker_completions_total", model="unknown", status="error") == 1
    assert value("llm_worker_dlq_records_total", reason="invalid_json") == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("all", ["r0", "r1", "r3", "dlq"]), ("errors", ["r3", "dlq"]), ("none", [])],
)
def test_log_outcomes_picks_the_lines(
    policy: str, expected: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_worker.outcome")
    now = time.monotonic()
    batch = _batch(now)
    batch[0][1].completion = _ok(0, tokens=(1, 1), cost=0.1)  # ids r0, r1 (dedup), r3, dlq
    batch[1][1].completion = _ok(1, tokens=(1, 1), cost=0.0, dedup=True)
    OutcomeRecorder(Metrics(), log_outcomes=policy).record(batch)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert [line.get("request_id", "dlq") for line in lines] == expected
    if lines and lines[0].get("request_id") == "r0":
        first = lines[0]
        for field in ("model", "provider", "endpoint", "status", "error_type", "latency_ms"):
            assert field in first
        assert first["queue_ms"] is None and first["attempts"] == 1
        assert first["deduplicated"] is False and first["fallback_used"] is False


CONSUMER_STATS = {
    "type": "consumer",
    "brokers": {
        "127.0.0.1:9092/1": {"state": "UP", "source": "learned", "nodeid": 1},
        ":0/internal": {"state": "UP", "source": "internal", "nodeid": -1},
        "GroupCoordinator": {"state": "UP", "source": "logical", "nodeid": 1},
    },
    "topics": {
        "prompts": {
            "partitions": {
                "0": {"consumer_lag": 7},
                "1": {"consumer_lag": 0},
                "2": {"consumer_lag": -1},  # not known
                "-1": {"consumer_lag": -1},  # librdkafka's unassigned-partition bucket
            }
        },
        "other": {"partitions": {"0": {"consumer_lag": 99}}},
    },
}


def test_librdkafka_statistics_become_lag_and_queue_gauges() -> None:
    app = App(load_settings({}), http=False)
    app.kafka_stats.update(json.dumps(CONSUMER_STATS))
    app.kafka_stats.update(json.dumps({"type": "producer", "msg_cnt": 12, "brokers": {}}))
    app.kafka_stats.update("not json")  # ignored
    assert app.kafka_stats.brokers_up == 1
    app.bridge._assignment = frozenset(  # type: ignore[attr-defined]
        {("prompts", 0), ("prompts", 1), ("prompts", 2)}
    )
    reg = app.metrics.registry
    lag = {
        p: reg.get_sample_value("llm_worker_consumer_lag", {"topic": "prompts", "partition": p})
        for p in ("0", "1", "2")
    }
    assert lag == {"0": 7, "1": 0, "2": None}
    # a partition this worker does not own is not its lag to report
    assert (
        reg.get_sample_value("llm_worker_consumer_lag", {"topic": "other", "partition": "0"})
        is None
    )
    assert reg.get_sample_value("llm_worker_producer_queue_messages") == 12


def test_librdkafka_logs_land_as_json_lines() -> None:
    lines: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", "json")  # what `llm-worker run` does
    capture = Capture()
    root.addHandler(capture)
    try:
        conf = client_config(load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}), "producer")
        producer = Producer(conf)  # nothing listens there: librdkafka logs the refusal
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not lines:
            producer.poll(0.1)  # logs are served by poll
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    kafka = [line for line in lines if line["logger"] == "llm_worker.librdkafka"]
    assert kafka, lines
    line = kafka[0]
    assert line["facility"] == "FAIL" and line["client"].startswith("rdkafka#producer")
    assert "Connection refused" in line["msg"] and not line["msg"].startswith("FAIL")
