"""The batch lane (issue 28) through the real broker and Postgres, with the fake provider's
batch endpoints (OpenAI's wire, accelerated clock): prompts stored, grouped into jobs,
answered as completions at the batch price; errored and expired requests follow the row's
`batch_on_error`."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest
from confluent_kafka import Producer

from llm_worker.adapters.batch import BatchLimits
from llm_worker.adapters.batch_openai import OpenAIBatchClient
from llm_worker.adapters.fake import FakeAdapter
from llm_worker.devkit.devstack import free_port
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.test_features import Completions, _calls, _row, _send, _topics

pytestmark = pytest.mark.integration


async def _batches(fake: FakeServer, profile: str) -> list[dict[str, Any]]:
    """The fake's log of every batch created (`GET /admin/batches`; the server runs on this
    loop, so the blocking read goes to a thread)."""

    def read() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{fake.url}/admin/batches", timeout=10) as resp:
            got: list[dict[str, Any]] = json.load(resp)["batches"]
        return got

    return [b for b in await asyncio.to_thread(read) if b["profile"] == profile]


def _states(pg_dsn: str) -> Counter[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM llm_batch_requests GROUP BY state")
        return Counter({state: n for state, n in rows.fetchall()})


async def test_batch_prompts_are_answered_by_jobs_at_half_the_price(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """2,000 prompts with `lane: batch` and 5 online ones: 2,005 completions, each id once.
    The batch ones come from jobs (no live call, `lane: batch`, the job's `batch_id`), priced
    at half the row's prices; every request went into exactly one job (the fake's log)."""
    s = make_settings(batch_max_wait_s=1.0, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m1", fake.endpoint("bl")))
    await _topics(s)
    batch = [
        {"id": f"b-{i}", "model": "m1", "prompt": f"question {i}", "lane": "batch"}
        for i in range(2000)
    ]
    online = [{"id": f"o-{i}", "model": "m1", "prompt": f"live {i}"} for i in range(5)]
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, batch[:1000] + online + batch[1000:])
        out = await comps.wait([p["id"] for p in batch + online], timeout=120)
        by_id = comps.by_id()
    assert all(len(v) == 1 for v in by_id.values()), "every id answered once"
    got = [out[p["id"]] for p in batch]
    assert Counter(c["status"] for c in got) == {"ok": 2000}
    assert {c["lane"] for c in got} == {"batch"}
    assert all(c["batch_id"] and c["batch_id"].startswith("batch_") for c in got)
    for c in got:
        u = c["usage"]
        half = round((u["input_tokens"] * 0.0005 + u["output_tokens"] * 0.001) / 1000, 8)
        assert u["cost_usd"] == pytest.approx(half), c
        assert u["cost_usd"] > 0
    assert all(out[p["id"]]["lane"] == "online" for p in online)
    assert _calls(fake, "bl") == len(online)  # the batch prompts made no live call
    jobs = await _batches(fake, "bl")
    assert {b["id"] for b in jobs} == {c["batch_id"] for c in got}
    sent = Counter(cid for b in jobs for cid in b["custom_ids"])
    assert len(sent) == 2000 and set(sent.values()) == {1}, "no request in two jobs"
    assert all(b["metadata"].get("llm_worker_job") for b in jobs)
    assert _states(pg_dsn) == {"done": 2000}


@pytest.mark.parametrize("on_error", ["online", "error"])
async def test_errored_and_expired_requests_follow_the_row(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer, on_error: str
) -> None:
    """A row sending all its traffic to batch (`lane`), with requests the batch reports errored
    or expired: `batch_on_error` online answers them with a live call (`lane: online`), error
    answers them with an error completion naming the batch."""
    s = make_settings(batch_max_wait_s=0.5, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m2", fake.endpoint("be"), lane="batch", batch_on_error=on_error))
    await _topics(s)
    prompts = [
        {"id": "fine", "model": "m2", "prompt": "a fine question"},
        {"id": "bad", "model": "m2", "prompt": "this one fails [batch:error]"},
        {"id": "late", "model": "m2", "prompt": "this one expires [batch:expire]"},
    ]
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, prompts)
        out = await comps.wait([p["id"] for p in prompts], timeout=90)
    assert out["fine"]["status"] == "ok" and out["fine"]["lane"] == "batch"
    if on_error == "online":
        for pid in ("bad", "late"):
            assert out[pid]["lane"] == "online", out[pid]
        assert _calls(fake, "be") == 2  # the two live calls
    else:
        assert out["bad"]["status"] == "error" and out["bad"]["lane"] == "batch"
        assert out["late"]["status"] == "error"
        assert out["late"]["error"]["type"] == "batch_expired", out["late"]
        assert _calls(fake, "be") == 0
    assert _states(pg_dsn) == {"done": 3}


async def test_a_provider_without_a_batch_api_gets_an_error_completion(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    s = make_settings()
    row = msgspec.structs.replace(_row("m3", fake.endpoint("nb")), provider="openai_compatible")
    upsert_row(pg_dsn, row)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, [{"id": "x", "model": "m3", "prompt": "q", "lane": "batch"}])
        out = await comps.wait(["x"], timeout=60)
    assert out["x"]["status"] == "error"
    assert out["x"]["error"]["type"] == "batch_unavailable"
    assert "openai_compatible" in out["x"]["error"]["message"]


async def test_two_replicas_never_collect_the_same_job(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """Two workers of one group store the prompts of the partitions each owns; only the one
    holding the lane's lease submits and collects: every request goes into one job, every
    prompt is answered once."""
    s = make_settings(batch_max_wait_s=1.0, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m4", fake.endpoint("two"), lane="batch"))
    await _topics(s, partitions=4)
    prompts = [{"id": f"r-{i}", "model": "m4", "prompt": f"q {i}"} for i in range(1000)]
    first, second = App(s, http=False), App(s, http=False)
    async with first.running(), second.running(), Completions(s) as comps:
        await _send(s, prompts)
        await comps.wait([p["id"] for p in prompts], timeout=120)
        by_id = comps.by_id()
        runners = [a.batch_runner for a in (first, second)]
        leased = [r.leased for r in runners if r is not None]
    assert sorted(leased) == [False, True], "exactly one replica collects"
    assert len(by_id) == 1000 and all(len(v) == 1 for v in by_id.values())
    sent = Counter(cid for b in await _batches(fake, "two") for cid in b["custom_ids"])
    assert len(sent) == 1000 and set(sent.values()) == {1}, "no request in two jobs"


async def test_jobs_stay_within_the_providers_limits(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """1,000 prompts against a provider whose jobs hold at most 300 requests (OpenAI's 50,000,
    scaled down): at least four jobs, none over the limit, each request in exactly one."""
    s = make_settings(batch_max_wait_s=1.0, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m5", fake.endpoint("lim"), lane="batch"))
    await _topics(s)
    prompts = [{"id": f"l-{i}", "model": "m5", "prompt": f"q {i}"} for i in range(1000)]
    app = App(s, http=False)
    small = OpenAIBatchClient(FakeAdapter(), limits=BatchLimits(300, 200 * 2**20))
    app.batch_clients.use("fake", small)
    async with app.running(), Completions(s) as comps:
        await _send(s, prompts)
        out = await comps.wait([p["id"] for p in prompts], timeout=120)
    assert {c["status"] for c in out.values()} == {"ok"}
    jobs = await _batches(fake, "lim")
    sizes = [b["requests"] for b in jobs]
    assert len(jobs) >= 4 and max(sizes) <= 300, sizes
    sent = Counter(cid for b in jobs for cid in b["custom_ids"])
    assert len(sent) == 1000 and set(sent.values()) == {1}


async def test_a_provider_failing_for_one_row_does_not_hold_up_the_others(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """One row's batch API is unreachable (nothing listens on its port) and its job is stuck
    `submitting`; another row's prompts, sent after, are still submitted, collected and
    answered, and the replica keeps the lane's lease. The stuck job is tried again, not lost."""
    s = make_settings(batch_max_wait_s=0.5, batch_poll_s=0.2)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    upsert_row(pg_dsn, _row("m6a", dead, lane="batch"))
    upsert_row(pg_dsn, _row("m6b", fake.endpoint("iso"), lane="batch"))
    await _topics(s)
    stuck = [{"id": f"s-{i}", "model": "m6a", "prompt": f"q {i}"} for i in range(20)]
    fine = [{"id": f"f-{i}", "model": "m6b", "prompt": f"q {i}"} for i in range(20)]
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, stuck)
        for _ in range(300):  # its job is written, and its sending failed at least once
            if _jobs(pg_dsn, "m6a").get("submitting"):
                break
            await asyncio.sleep(0.1)
        assert _jobs(pg_dsn, "m6a") == {"submitting": 1}
        await _send(s, fine)
        out = await comps.wait([p["id"] for p in fine], timeout=60)
        assert app.batch_runner is not None and app.batch_runner.leased
        unanswered = set(comps.by_id()) & {p["id"] for p in stuck}
    assert {c["status"] for c in out.values()} == {"ok"}
    assert {c["lane"] for c in out.values()} == {"batch"}
    assert not unanswered, "the unreachable row's prompts wait; they are not answered in error"
    assert _jobs(pg_dsn, "m6a") == {"submitting": 1}, "tried again later, never dropped"


def _jobs(pg_dsn: str, model_id: str) -> Counter[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM llm_batch_jobs WHERE model_id = %s GROUP BY state",
            (model_id,),
        )
        return Counter({state: n for state, n in rows.fetchall()})


async def test_a_prompt_whose_deadline_passes_while_it_waits_is_never_sent(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """Prompts with a `ttl_ms` shorter than the lane's wait for a job are stored, then answered
    `deadline_exceeded` (no attempt, `lane: batch`, no `batch_id`) when it passes, and never
    go into a job; the others of the same row are answered by the job."""
    s = make_settings(batch_max_wait_s=4.0, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m7", fake.endpoint("ttl"), lane="batch"))
    await _topics(s)
    short = [{"id": f"t-{i}", "model": "m7", "prompt": f"q {i}", "ttl_ms": 1500} for i in range(5)]
    patient = [{"id": f"p-{i}", "model": "m7", "prompt": f"r {i}"} for i in range(5)]
    app = App(s, http=False)
    warm = {"id": "warm", "model": "m7", "prompt": "w", "lane": "online"}
    async with app.running(), Completions(s) as comps:
        await _send(s, [warm])  # the worker owns its partitions: no wait eats the ttl
        await comps.wait(["warm"], timeout=60)
        await _send(s, short + patient)
        out = await comps.wait([p["id"] for p in short + patient], timeout=60)
    for p in short:
        c = out[p["id"]]
        assert c["status"] == "error" and c["error"]["type"] == "deadline_exceeded", c
        assert c["attempts"] == 0 and c["lane"] == "batch" and c["batch_id"] is None, c
        assert "waited for a batch job" in c["error"]["message"]
    assert {out[p["id"]]["status"] for p in patient} == {"ok"}
    sent = [cid for b in await _batches(fake, "ttl") for cid in b["custom_ids"]]
    assert len(sent) == len(patient), "the expired prompts never went into a job"
    assert _states(pg_dsn) == {"done": 10}


async def test_a_batch_prompts_trace_headers_go_on_to_its_completion(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """`traceparent` / `tracestate` go from a batch prompt's record to its completion's, as on
    the online lane, and to the prompt a failed request sends back online (then to the live
    call's completion); other headers do not."""
    s = make_settings(batch_max_wait_s=0.5, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m8", fake.endpoint("hdr"), lane="batch"))
    await _topics(s)
    tp = {i: f"00-{i * 32}-{i * 16}-01".encode() for i in ("a", "b", "c")}
    records = [
        ("a", "a question", [("traceparent", tp["a"])]),
        ("b", "b question", [("traceparent", tp["b"]), ("tracestate", b"v=1"), ("x-other", b"1")]),
        ("c", "fails [batch:error]", [("traceparent", tp["c"])]),
    ]

    def produce() -> None:
        p = Producer({"bootstrap.servers": s.kafka_bootstrap_servers})
        for pid, text, headers in records:
            body = json.dumps({"id": pid, "model": "m8", "prompt": text}).encode()
            p.produce(s.prompts_topic, body, pid.encode(), headers=headers)
        assert p.flush(30) == 0

    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await asyncio.to_thread(produce)
        out = await comps.wait(["a", "b", "c"], timeout=90)
    assert out["a"]["lane"] == "batch" and out["b"]["lane"] == "batch"
    assert out["c"]["lane"] == "online", "the errored request went back for a live call"
    got = await asyncio.to_thread(kh.read_all, s.kafka_bootstrap_servers, s.completions_topic)
    headers = {r.json()["id"]: r.headers for r in got}
    assert headers["a"] == {"traceparent": tp["a"]}
    assert headers["b"] == {"traceparent": tp["b"], "tracestate": b"v=1"}
    assert headers["c"] == {"traceparent": tp["c"]}
    resent = await asyncio.to_thread(kh.read_all, s.kafka_bootstrap_servers, s.prompts_topic)
    again = [r for r in resent if r.json().get("lane") == "online"]
    assert [r.headers for r in again] == [{"traceparent": tp["c"]}]


class _KeylessResults:
    """A batch client whose results come back in the order the requests were submitted and
    without their ids (as Gemini's inline responses may): what the lane matches by place."""

    def __init__(self, inner: OpenAIBatchClient) -> None:
        self.inner = inner
        self.provider, self.limits = inner.provider, inner.limits
        self.order: dict[str, list[str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def submit(self, target: Any, items: list[Any], job_key: str) -> Any:
        job = await self.inner.submit(target, items, job_key)
        self.order[job.id] = [i.custom_id for i in items]
        return job

    async def results(self, target: Any, batch_id: str) -> list[Any]:
        place = {cid: n for n, cid in enumerate(self.order[batch_id])}
        got = await self.inner.results(target, batch_id)
        ordered = sorted(got, key=lambda r: place[r.custom_id])
        return [msgspec.structs.replace(r, custom_id="", index=place[r.custom_id]) for r in ordered]


async def test_results_without_their_ids_are_matched_by_their_place(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """A provider returning each result in submission order without its id: every prompt
    still gets its own answer (the fake echoes the prompt in the answer)."""
    s = make_settings(batch_max_wait_s=0.5, batch_poll_s=0.2)
    upsert_row(pg_dsn, _row("m9", fake.endpoint("place"), lane="batch"))
    await _topics(s)
    prompts = [{"id": f"k-{i}", "model": "m9", "prompt": f"echo number {i}"} for i in range(30)]
    app = App(s, http=False)
    keyless = _KeylessResults(OpenAIBatchClient(FakeAdapter()))
    app.batch_clients.use("fake", keyless)  # type: ignore[arg-type]
    async with app.running(), Completions(s) as comps:
        await _send(s, prompts)
        out = await comps.wait([p["id"] for p in prompts], timeout=90)
    assert keyless.order, "the jobs went through the keyless client"
    for i in range(30):
        c = out[f"k-{i}"]
        assert c["status"] == "ok" and c["lane"] == "batch", c
        assert c["text"].endswith(f"echo number {i}"), (i, c["text"])
