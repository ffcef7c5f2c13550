"""Exactly-once mode on a real broker: a read_committed consumer of the completions sees every
id exactly once, across SIGKILLs of the worker (on a broker that hides aborted transactions
from such a consumer: Apache Kafka does, Tansu 0.6 does not); duplicates in the input's dedup
window are in the same transactions. The at-least-once run of the same script is the control:
it shows the duplicates that the mode removes."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llm_worker.devkit.devstack import free_port, spawn_fake_provider
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh
from tests.integration.conftest import HIDES_ABORTED, ON_TANSU
from tests.integration.test_worker_process import _start

# alone, after the parallel pass: several worker processes under a fixed-rate or 20,000-prompt
# load need the machine to themselves (beside three other xdist processes a Tansu CI run
# answered 2,137 of 6,005 replica prompts within the wait)
pytestmark = [pytest.mark.integration, pytest.mark.serial]


@pytest.fixture
def fake_url() -> Iterator[str]:
    port = free_port()
    proc = spawn_fake_provider(port, "--latency-ms", "20")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def read_committed(bs: str, topic: str, want: set[str], timeout: float) -> list[dict[str, object]]:
    """Every committed record of `topic`, from the start, until every id in `want` was seen
    and nothing new came for 3 s (so late duplicates are counted too)."""
    c = Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": f"eos-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[dict[str, object]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(500, 0.2)
            for m in msgs:
                if m.error() is None:
                    doc = json.loads(m.value())
                    out.append(doc)
                    seen.add(str(doc["id"]))
            if msgs:
                last_new = time.monotonic()
            if want <= seen and time.monotonic() - last_new > 3:
                break
    finally:
        c.close()
    return out


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigkills_leave_no_duplicate_for_a_read_committed_consumer(
    worker_env: dict[str, str],
    pg_dsn: str,
    fake_url: str,
    guarantee: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n, kills = 3000, 3
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=f"{fake_url}/v1", upstream_model="u"),
    )
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    prompts_topic = worker_env["LLM_WORKER_PROMPTS_TOPIC"]
    out_topic = worker_env["LLM_WORKER_COMPLETIONS_TOPIC"]
    kh.create_topic(bs, prompts_topic, 4)
    kh.create_topic(bs, out_topic, 4)
    # every tenth prompt repeats an earlier one: dedup followers live in the transactions too
    prompts = [
        {"id": f"r-{i}", "model": "m1", "prompt": f"q{i - i % 10 if i % 10 == 9 else i}"}
        for i in range(n)
    ]
    kh.produce_prompts(bs, prompts_topic, prompts)
    ids = {p["id"] for p in prompts}
    env = {
        **worker_env,
        "LLM_WORKER_PROCESSING_GUARANTEE": guarantee,
        "LLM_WORKER_MAX_IN_FLIGHT": "64",  # slow enough to be killed mid-way
        "LLM_WORKER_TRANSACTIONAL_ID": f"eos-test-{uuid.uuid4().hex[:8]}",
    }
    for k in range(kills):
        proc = _start(env)
        try:
            time.sleep(4 + k)  # joins the group, commits a few transactions
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    last = _start(env)
    try:
        docs = read_committed(bs, out_topic, ids, timeout=180)
    finally:
        last.terminate()
        last.wait(30)
    counts = Counter(str(d["id"]) for d in docs)
    dups = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(
            f"\n[{guarantee}] {len(counts)} ids answered, {len(docs)} completions, "
            f"{dups} duplicates after {kills} SIGKILLs"
        )
    assert set(counts) == ids  # nothing lost
    assert all(d["status"] == "ok" for d in docs)
    assert any(d["deduplicated"] for d in docs)
    if guarantee == "exactly_once":
        if not HIDES_ABORTED:
            pytest.skip(
                "this broker does not promise to hide aborted transactions from read_committed "
                "consumers (Tansu 0.6 shows them in some runs), "
                f"so aborted or fenced outcomes are read ({dups} duplicates in this run); "
                "the no-duplicate check runs on Apache Kafka (make test-kafka)"
            )
        assert dups == 0


def _marks(
    readers: tuple[Consumer, Consumer], topic: str, parts: list[int]
) -> dict[int, tuple[int, int]]:
    """Each partition's (last stable offset, end): a read_committed reader reads up to the
    first; a transaction left open holds it below the second."""
    out = {}
    for p in parts:
        tp = TopicPartition(topic, p)
        stable, end = (r.get_watermark_offsets(tp, timeout=10, cached=False) for r in readers)
        assert stable is not None and end is not None
        out[p] = (stable[1], end[1])
    return out


def test_after_a_sigkill_read_committed_readers_move_on_within_seconds(
    worker_env: dict[str, str], pg_dsn: str, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The killed worker's open transaction holds back the last stable offset of the partitions
    it wrote to until it ends: read_committed readers see nothing newer there. Its successor on
    the same host takes the same default `transactional.id` and fences it at once (else the
    broker ends it after `transaction.timeout.ms`, 15 s by default). With the process id in the
    id and librdkafka's 60 s timeout, readers waited 68 s."""
    if ON_TANSU:
        pytest.skip("Tansu 0.6 never ends a killed producer's open transaction (README)")
    upsert_row(
        pg_dsn,
        ModelRow(model_id="m1", provider="fake", endpoint=f"{fake_url}/v1", upstream_model="u"),
    )
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    out_topic = worker_env["LLM_WORKER_COMPLETIONS_TOPIC"]
    kh.create_topic(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], 4)
    kh.create_topic(bs, out_topic, 4)
    prompts = [{"id": f"k-{i}", "model": "m1", "prompt": f"q{i}"} for i in range(20_000)]
    kh.produce_prompts(bs, worker_env["LLM_WORKER_PROMPTS_TOPIC"], prompts)
    env = {  # no LLM_WORKER_TRANSACTIONAL_ID: the default is under test
        **worker_env,
        "LLM_WORKER_PROCESSING_GUARANTEE": "exactly_once",
        "LLM_WORKER_MAX_IN_FLIGHT": "32",  # a steady stream, still flowing at the kill
    }
    readers = (
        Consumer({"bootstrap.servers": bs, "group.id": "-", "isolation.level": "read_committed"}),
        Consumer({"bootstrap.servers": bs, "group.id": "-", "isolation.level": "read_uncommitted"}),
    )
    parts = list(readers[0].list_topics(out_topic, timeout=10).topics[out_topic].partitions)
    try:
        first = _start(env)
        try:
            deadline = time.monotonic() + 60
            while True:  # kill it once it has committed and has records in an open transaction
                marks = _marks(readers, out_topic, parts)
                if sum(s for s, _ in marks.values()) > 300 and any(
                    s < e for s, e in marks.values()
                ):
                    break
                assert time.monotonic() < deadline, f"the first worker did too little: {marks}"
                time.sleep(0.1)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        held = {
            p: end for p, (stable, end) in _marks(readers, out_topic, parts).items() if stable < end
        }
        assert held, "no transaction was left open at the kill: nothing to measure"
        second = _start(env)
        try:
            started = time.monotonic()
            while time.monotonic() - started < 40:
                marks = _marks(readers, out_topic, parts)
                if all(marks[p][0] >= end for p, end in held.items()):
                    break
                time.sleep(0.2)
            waited = time.monotonic() - started
        finally:
            second.terminate()
            second.wait(30)
    finally:
        for r in readers:
            r.close()
    with capsys.disabled():
        print(
            f"\n[eos sigkill] partitions {sorted(held)} held by the killed worker's "
            f"transaction; readable past it {waited:.1f} s after the restart"
        )
    assert waited < 20, f"read_committed readers were held for {waited:.1f} s: {marks}"
