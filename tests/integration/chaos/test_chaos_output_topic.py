"""The output topic disappears mid-run (deleted; to the producer, unwritable): the worker does
not commit what it cannot deliver, says why (a log line, `llm_worker_delivery_failing`,
`/readyz`), loses nothing, and resumes by itself when the topic is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import FakeProcess, WorkerProcess, prompts, verdict
from tests.integration.conftest import ON_TANSU

pytestmark = pytest.mark.integration

PARTITIONS = 2


def _delete_topic(bs: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bs})
    for fut in admin.delete_topics([topic], operation_timeout=30).values():
        fut.result()
    deadline = time.monotonic() + 30
    while topic in kh.topics(bs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert topic not in kh.topics(bs)


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.skipif(
    ON_TANSU,
    reason="Tansu creates a topic on the first produce to it (a deleted one too, from offset 0): "
    "its output topic cannot go missing",
)
def test_output_topic_missing_holds_commits_says_why_and_resumes(
    worker_env: dict[str, str],
    pg_dsn: str,
    fake_process: FakeProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1", provider="fake", endpoint=fake_process.endpoint(), upstream_model="u"
        ),
    )
    env = {
        **worker_env,
        "LLM_WORKER_LOG_LEVEL": "INFO",
        "LLM_WORKER_CREATE_TOPICS": "false",
        # librdkafka notices a deleted topic at its next metadata refresh (default 5 min)
        "LLM_WORKER_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS": "2000",
    }
    bs = env["KAFKA_BOOTSTRAP_SERVERS"]
    in_topic, out_topic = env["LLM_WORKER_PROMPTS_TOPIC"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    kh.create_topic(bs, in_topic, PARTITIONS)
    kh.create_topic(bs, out_topic, PARTITIONS)
    kh.create_topic(bs, env["LLM_WORKER_DLQ_TOPIC"], 1)
    first, second = prompts(200, "m1", "before"), prompts(200, "m1", "during")
    worker = WorkerProcess(env, tmp_path, "worker")
    try:
        worker.wait_ready()
        kh.produce_prompts(bs, in_topic, first)
        kh.consume_until_ids(bs, out_topic, {p["id"] for p in first}, timeout=60)
        group, topic = env["LLM_WORKER_GROUP_ID"], in_topic

        def committed_total() -> int:
            return sum(max(o, 0) for o in kh.committed(bs, group, topic, PARTITIONS).values())

        _wait(lambda: committed_total() == len(first), 30, "the first batch was not committed")
        _delete_topic(bs, out_topic)
        kh.produce_prompts(bs, in_topic, second)
        _wait(
            lambda: worker.metric("llm_worker_delivery_failing") > 0,
            90,
            f"llm_worker_delivery_failing never rose; see {worker.log}",
        )
        ready = worker.readyz()
        time.sleep(2.0)  # more retries, and commit intervals, pass while the topic is gone
        held_commits = committed_total()
        assert ready["status"] == 503 and ready["worker"]["delivery_failing"] > 0, ready
        assert out_topic in ready["worker"]["delivery_error"], ready
        assert "is failing" in worker.text()  # the log says why
        kh.create_topic(bs, out_topic, PARTITIONS)  # the topic is back: the worker resumes
        ids = {p["id"] for p in first + second}
        kh.consume_until_ids(bs, out_topic, {p["id"] for p in second}, timeout=120)
        _wait(lambda: worker.metric("llm_worker_delivery_failing") == 0, 30, "still failing")
        _wait(lambda: worker.readyz().get("ready") is True, 30, "not ready again")
        _wait(lambda: committed_total() == len(ids), 30, "the second batch was not committed")
        assert "works again" in worker.text()
    finally:
        assert worker.stop() == 0
    docs = [r.json() for r in kh.read_all(bs, out_topic)]
    v = verdict("output-topic-missing", [p["id"] for p in second], docs, started, capsys)
    assert held_commits < len(ids)  # nothing was committed that had not been delivered
    assert not v.lost and not v.errors, v
