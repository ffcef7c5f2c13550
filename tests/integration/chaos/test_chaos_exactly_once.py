"""Exactly-once mode under fire: a `read_committed` consumer of the completions sees each id
once, across five SIGKILLs of the worker, and across a rebalance in which one of two replicas
is killed and the other takes over its partitions."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh
from tests.integration.chaos.harness import FakeProcess, Progress, WorkerProcess, prompts, verdict
from tests.integration.conftest import HIDES_ABORTED, ON_TANSU
from tests.integration.test_exactly_once import read_committed

# alone, after the parallel pass: several worker processes under a fixed-rate or 20,000-prompt
# load need the machine to themselves (beside three other xdist processes a Tansu CI run
# answered 2,137 of 6,005 replica prompts within the wait)
pytestmark = [pytest.mark.integration, pytest.mark.serial]

PROMPTS = 5000
"""Smaller than the at-least-once run: transactions make the run slower, and the point here
is the duplicates, which a smaller run shows as well."""

EOS = {
    "LLM_WORKER_PROCESSING_GUARANTEE": "exactly_once",
    # a killed replica's open transaction holds back read_committed readers (the last stable
    # offset) until the broker aborts it: keep that short
    "LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS": "30000",
}


def _setup(env: dict[str, str], dsn: str, fake: FakeProcess, partitions: int) -> set[str]:
    upsert_row(
        dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
    )
    bs = env["KAFKA_BOOTSTRAP_SERVERS"]
    kh.create_topic(bs, env["LLM_WORKER_PROMPTS_TOPIC"], partitions)
    kh.create_topic(bs, env["LLM_WORKER_COMPLETIONS_TOPIC"], partitions)
    sent = prompts(PROMPTS, "m1")
    kh.produce_prompts(bs, env["LLM_WORKER_PROMPTS_TOPIC"], sent)
    return {p["id"] for p in sent}


def test_exactly_once_across_five_sigkills(
    worker_env: dict[str, str],
    pg_dsn: str,
    fake_process: FakeProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    env = {**worker_env, **EOS, "LLM_WORKER_TRANSACTIONAL_ID": f"eos-{uuid.uuid4().hex[:8]}"}
    ids = _setup(env, pg_dsn, fake_process, 4)
    bs, out_topic = env["KAFKA_BOOTSTRAP_SERVERS"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    progress = Progress(bs, out_topic)  # read_uncommitted would count aborted ones: it is
    try:  # read_committed by default in librdkafka, so it measures committed progress
        for k in range(5):
            worker = WorkerProcess(env, tmp_path, f"worker-{k}")
            target = (k + 1) * PROMPTS // 7
            reached = progress.wait(target, timeout=120)
            assert reached >= target, f"life {k} stalled at {reached}; see {worker.log}"
            worker.kill()
        assert len(progress.ids) < PROMPTS, "the run finished before the last kill"
    finally:
        progress.close()
    last = WorkerProcess(env, tmp_path, "worker-last")
    try:
        docs = read_committed(bs, out_topic, ids, timeout=240)
    finally:
        assert last.stop() == 0
    v = verdict("exactly-once-sigkill-x5", ids, docs, started, capsys)
    assert not v.lost and not v.errors, v
    if not HIDES_ABORTED:
        pytest.skip(
            "this broker shows aborted transactions to read_committed consumers (Tansu 0.6): "
            f"{v.duplicates} duplicates read; nothing lost. The no-duplicate check runs on "
            "Apache Kafka"
        )
    assert v.duplicates == 0


@pytest.mark.xfail(
    ON_TANSU,
    reason="Tansu 0.6 never ends the killed replica's open transaction: 75 s after the kill "
    "(transaction.timeout.ms 30 s) a read_committed reader still stops at its first record on "
    "the partitions it wrote (3615 of 5000 ids; read_uncommitted: all 5000), although the "
    "survivor committed every offset. Passes when the kill finds no open transaction",
    strict=False,
)
def test_exactly_once_across_a_rebalance_with_a_replica_killed(
    worker_env: dict[str, str],
    pg_dsn: str,
    fake_process: FakeProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    env = {
        **worker_env,
        **EOS,
        "LLM_WORKER_LOG_LEVEL": "INFO",
    }  # each replica's transactional.id: <group>-<host>-<slot> (one slot per live process)
    ids = _setup(env, pg_dsn, fake_process, 4)
    bs, out_topic = env["KAFKA_BOOTSTRAP_SERVERS"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    replicas = [WorkerProcess(env, tmp_path, f"replica-{n}") for n in range(2)]
    progress = Progress(bs, out_topic)
    try:
        for r in replicas:
            r.wait_ready()
        reached = progress.wait(PROMPTS // 4, timeout=120)
        assert reached >= PROMPTS // 4, "the replicas answered nothing"
        replicas[0].kill()  # the survivor takes its partitions, from their committed offsets
        assert len(progress.ids) < PROMPTS, "the run finished before the kill"
        # Tansu: the known failure (xfail) need not take the whole suite's time
        docs = read_committed(bs, out_topic, ids, timeout=60 if ON_TANSU else 120)
    finally:
        progress.close()
        assert replicas[1].stop() == 0
    v = verdict("exactly-once-rebalance", ids, docs, started, capsys)
    assert not v.lost and not v.errors, v
    if not HIDES_ABORTED:
        pytest.skip(
            "this broker shows aborted transactions to read_committed consumers (Tansu 0.6): "
            f"{v.duplicates} duplicates read (the killed replica's open transaction); nothing "
            "lost. The no-duplicate check runs on Apache Kafka"
        )
    assert v.duplicates == 0
