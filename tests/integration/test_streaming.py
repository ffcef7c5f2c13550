"""Streaming through the real broker and Postgres, against the fake provider streaming in
OpenAI's shape (a per-token delay): chunks arrive on the chunk topic while the provider is still
answering and join to the completion's text; 100 identical streaming prompts cost one provider
call and give 100 whole chunk sequences; a stream cut mid-answer is not retried and ends with an
"error" chunk and an error completion keeping the partial text; after a SIGKILL mid-stream the
prompt is answered again, with a second chunk sequence for its id."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.conftest import ON_TANSU
from tests.integration.test_failover import wait_for
from tests.integration.test_features import Completions, _send, _topics
from tests.integration.test_worker_process import _start

pytestmark = pytest.mark.integration

WORDS = "one two three four five six seven eight nine ten"


def read_committed(bs: str, topic: str, count: int) -> list[dict[str, Any]]:
    """Every committed record of `topic` once at least `count` are there and it is quiet."""
    c = Consumer(
        {
            "bootstrap.servers": bs,
            "group.id": "unused",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    out: list[dict[str, Any]] = []
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        deadline, quiet = time.monotonic() + 60, time.monotonic()
        while time.monotonic() < deadline:
            msgs = [m for m in c.consume(500, 0.2) if m.error() is None]
            out += [json.loads(m.value()) for m in msgs]
            if msgs:
                quiet = time.monotonic()
            elif len(out) >= count and time.monotonic() - quiet > 2:
                break
    finally:
        c.close()
    return out


class Chunks:
    """Reads a chunk topic from its beginning in a thread (committed records only), stamping
    each record with the monotonic time it was read (the fake provider's log uses the same
    clock)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Chunks:
        self._thread.start()
        self._ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "unused",
                "isolation.level": "read_committed",  # as a user of exactly-once mode reads
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "topic.metadata.refresh.interval.ms": 500,
            }
        )
        try:
            deadline = time.monotonic() + 20
            while True:  # the worker creates the topic at its start
                meta = c.list_topics(self.topic, timeout=5).topics.get(self.topic)
                if meta is not None and meta.error is None and meta.partitions:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no topic {self.topic}")
                time.sleep(0.1)
            c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            self._ready.set()
            while not self._stop.is_set():
                for m in c.consume(500, 0.05):
                    if m.error() is None:
                        self.seen.append((time.monotonic(), json.loads(m.value())))
        finally:
            self._ready.set()
            c.close()

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [d for _, d in list(self.seen) if d["id"] == request_id]

    def first_at(self, request_id: str) -> float:
        return min(t for t, d in list(self.seen) if d["id"] == request_id)

    def finished(self, request_id: str) -> bool:
        return any(d.get("finish_reason") for d in self.of(request_id))


def sequences(chunks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A request's chunks as its sequences (each starts again at seq 0), in the order read."""
    out: list[list[dict[str, Any]]] = []
    for d in chunks:
        if d["seq"] == 0 or not out:
            out.append([])
        out[-1].append(d)
    return out


def whole(seq: list[dict[str, Any]]) -> str:
    """A gap-free sequence ending with a finish reason, joined; AssertionError otherwise."""
    assert [d["seq"] for d in seq] == list(range(len(seq))), [d["seq"] for d in seq]
    assert seq[-1].get("finish_reason"), seq[-1]
    assert not any(d.get("finish_reason") for d in seq[:-1])
    return "".join(d["delta"] for d in seq)


def s_uid() -> str:
    return uuid.uuid4().hex[:8]


def _row(fake: FakeServer, profile: str, **kw: Any) -> ModelRow:
    return ModelRow(
        model_id="m",
        provider="fake",
        endpoint=fake.endpoint(profile),
        upstream_model="up-m",
        timeout_ms=5000,
        **kw,
    )


async def test_chunks_arrive_while_the_provider_answers_and_join_to_the_completion(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    fake.set_profile("tokens", latency_ms=20, token_delay_ms=150)
    upsert_row(pg_dsn, _row(fake, "tokens"))
    await _topics(s)
    async with App(s, http=False).running(), Completions(s) as comps:
        with Chunks(s.kafka_bootstrap_servers, s.chunks_topic) as chunks:
            await _send(s, [{"id": "s-1", "model": "m", "prompt": WORDS, "stream": True}])
            done = (await comps.wait(["s-1"]))["s-1"]
            await wait_for(lambda: chunks.finished("s-1"))
    (call,) = fake.calls("tokens")
    assert call.streamed and call.answered is not None
    assert chunks.first_at("s-1") < call.answered - 0.5, "the first chunk waited for the answer"
    (seq,) = sequences(chunks.of("s-1"))
    assert len(seq) >= 4  # ~12 words over ~1.7 s, in chunks lingering a few ms
    assert done["status"] == "ok" and whole(seq) == done["text"]
    assert done["text"] == f"[fake:up-m] {WORDS}"
    assert seq[-1]["finish_reason"] == done["finish_reason"] == "stop"
    assert seq[-1]["usage"]["output_tokens"] == done["usage"]["output_tokens"] > 0


async def test_a_hundred_identical_streaming_prompts_make_one_call(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    fake.set_profile("shared", latency_ms=50, token_delay_ms=100)
    upsert_row(pg_dsn, _row(fake, "shared"))
    await _topics(s)
    ids = [f"same-{i}" for i in range(100)]
    prompts = [{"id": i, "model": "m", "prompt": WORDS, "stream": True} for i in ids]
    async with App(s, http=False).running(), Completions(s) as comps:
        with Chunks(s.kafka_bootstrap_servers, s.chunks_topic) as chunks:
            await _send(s, prompts)
            done = await comps.wait(ids)
            await wait_for(lambda: all(chunks.finished(i) for i in ids))
    assert fake.counters("shared")["requests"] == 1
    for i in ids:
        (seq,) = sequences(chunks.of(i))
        assert done[i]["status"] == "ok" and whole(seq) == done[i]["text"], i
    assert sum(d["deduplicated"] for d in done.values()) == 99
    followed = sum(len(sequences(chunks.of(i))[0]) > 2 for i in ids)
    assert followed > 1, "no request joined the running stream: each had the answer whole"


async def test_a_stream_cut_mid_answer_is_not_retried(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    fake.set_profile("cut", token_delay_ms=20, stream_break_after=5)
    fake.set_profile("spare")
    upsert_row(
        pg_dsn,
        _row(fake, "cut", fallback_provider="fake", fallback_endpoint=fake.endpoint("spare")),
    )
    await _topics(s)
    async with App(s, http=False).running(), Completions(s) as comps:
        with Chunks(s.kafka_bootstrap_servers, s.chunks_topic) as chunks:
            await _send(s, [{"id": "cut-1", "model": "m", "prompt": WORDS, "stream": True}])
            done = (await comps.wait(["cut-1"]))["cut-1"]
            await wait_for(lambda: chunks.finished("cut-1"))
    assert fake.counters("cut")["requests"] == 1 and fake.counters("spare")["requests"] == 0
    (seq,) = sequences(chunks.of("cut-1"))
    partial = whole(seq)
    assert seq[-1]["finish_reason"] == "error"
    assert done["status"] == "error" and done["error"]["type"] == "connection_error"
    assert partial and done["text"] == partial and f"[fake:up-m] {WORDS}".startswith(partial)
    assert done["attempts"] == 1


async def test_exactly_once_puts_the_chunks_in_the_transactions(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings(processing_guarantee="exactly_once", transactional_id=f"stream-{s_uid()}")
    fake.set_profile("eos", token_delay_ms=30)
    upsert_row(pg_dsn, _row(fake, "eos"))
    await _topics(s)
    ids = [f"eos-{i}" for i in range(5)]
    prompts = [{"id": i, "model": "m", "prompt": f"{WORDS} {i}", "stream": True} for i in ids]
    async with App(s, http=False).running(), Completions(s) as comps:
        await _send(s, prompts)
        await comps.wait(ids)
    bs = s.kafka_bootstrap_servers
    done = await asyncio.to_thread(read_committed, bs, s.completions_topic, len(ids))
    chunks = await asyncio.to_thread(read_committed, bs, s.chunks_topic, 5 * len(ids))
    assert sorted(d["id"] for d in done) == ids  # each once
    for d in done:
        (seq,) = sequences([c for c in chunks if c["id"] == d["id"]])
        assert whole(seq) == d["text"]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_sigkill_mid_stream_answers_the_prompt_again(
    worker_env: dict[str, str], pg_dsn: str, fake: FakeServer, guarantee: str
) -> None:
    if guarantee == "exactly_once" and ON_TANSU:
        pytest.skip("Tansu 0.6 never ends a killed producer's open transaction (README)")
    env = {**worker_env, "LLM_WORKER_PROCESSING_GUARANTEE": guarantee}
    fake.set_profile("slow", token_delay_ms=400)
    upsert_row(pg_dsn, _row(fake, "slow"))
    bs = env["KAFKA_BOOTSTRAP_SERVERS"]
    chunk_topic, out_topic = env["LLM_WORKER_CHUNKS_TOPIC"], env["LLM_WORKER_COMPLETIONS_TOPIC"]
    for topic in (env["LLM_WORKER_PROMPTS_TOPIC"], out_topic, chunk_topic):
        await asyncio.to_thread(kh.create_topic, bs, topic, 2)
    prompt = {"id": "kill-1", "model": "m", "prompt": WORDS, "stream": True}
    await asyncio.to_thread(kh.produce_prompts, bs, env["LLM_WORKER_PROMPTS_TOPIC"], [prompt])
    with Chunks(bs, chunk_topic) as chunks:
        first = _start(env)
        try:
            await wait_for(lambda: len(chunks.of("kill-1")) >= 2, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
        second = _start(env)
        try:
            docs = await asyncio.to_thread(kh.consume_until_ids, bs, out_topic, {"kill-1"})
            await wait_for(lambda: chunks.finished("kill-1"), timeout=30)
            committed = await asyncio.to_thread(read_committed, bs, out_topic, 1)
        finally:
            second.terminate()
            await asyncio.to_thread(second.wait, 30)
    (done,) = [d for d in docs if d["id"] == "kill-1"]
    broken, *rest = sequences(chunks.of("kill-1"))
    assert not any(d.get("finish_reason") for d in broken), chunks.seen  # cut by the kill
    assert rest, "the prompt was not streamed again after the restart"
    assert done["status"] == "ok" and whole(rest[-1]) == done["text"]
    assert len(fake.calls("slow")) == 2
    if guarantee == "exactly_once":
        assert [d["id"] for d in committed] == ["kill-1"]  # the completion once
