"""Issue 21, finding 2, replayed: a provider answering 100 MB bodies. The worker read them whole
(three in flight took it from 64 MB to 595 MB, over the chart's 512 MiB limit: an OOM kill, then a
crash loop). Now it reads at most `LLM_WORKER_MAX_RESPONSE_BYTES` (8 MiB by default) of an answer:
each such answer is a retryable `response_too_large`, the fallback answers, and a model with no
fallback ends in that error; the worker process (a real one, on a real broker) stays far below
the limit all along."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from llm_worker.devkit.devstack import free_port, spawn_fake_provider
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration

ANSWER_BYTES = 100 * 1024 * 1024
PEAK_RSS_LIMIT = 256 * 1024 * 1024
"""Half the chart's 512 MiB limit: the worker idles at ~70 MB, and at most a few answers'
worth of the 8 MiB cap may be held at once."""


class HugeAnswers:
    """An OpenAI-compatible provider whose every answer is 100 MB: with a Content-Length under
    `/length/`, chunked without one under `/chunked/` and `/alone/` (a second endpoint, with
    a circuit breaker of its own). Runs on its own thread and loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls = {"length": 0, "chunked": 0, "alone": 0}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        self.calls[kind] += 1
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        head = b'{"id": "x", "choices": [{"message": {"content": "'
        tail = b'"}, "finish_reason": "stop"}]}'
        if kind == "length":
            resp.content_length = ANSWER_BYTES
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"x" * (1024 * 1024)
        try:
            await resp.write(head)
            for _ in range((ANSWER_BYTES - len(head) - len(tail)) // len(chunk)):
                await resp.write(chunk)
            await resp.write(b"x" * ((ANSWER_BYTES - len(head) - len(tail)) % len(chunk)) + tail)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):  # the worker stopped reading: expected
            pass
        return resp

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{kind:length|chunked|alone}/v1/chat/completions", self._answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._runner = runner
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> HugeAnswers:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake_url() -> Iterator[str]:
    port = free_port()
    proc = spawn_fake_provider(port, "--latency-ms", "5", quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_100_mb_answers_end_in_the_fallback_and_the_worker_stays_small(
    worker_env: dict[str, str], pg_dsn: str, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bs = worker_env["KAFKA_BOOTSTRAP_SERVERS"]
    prompts_topic, out_topic = (
        worker_env["LLM_WORKER_PROMPTS_TOPIC"],
        worker_env["LLM_WORKER_COMPLETIONS_TOPIC"],
    )
    with HugeAnswers() as huge:
        base = f"http://127.0.0.1:{huge.port}"
        fallback = {"fallback_provider": "fake", "fallback_endpoint": f"{fake_url}/v1"}
        for model_id, kind, backup in (
            ("big-length", "length", fallback),
            ("big-chunked", "chunked", fallback),
            ("big-alone", "alone", {}),
        ):
            row = ModelRow(
                model_id=model_id,
                provider="openai_compatible",
                endpoint=f"{base}/{kind}/v1",
                upstream_model="u",
                timeout_ms=20_000,
                **backup,  # type: ignore[arg-type]
            )
            upsert_row(pg_dsn, row)
        kh.create_topic(bs, prompts_topic, 4)
        kh.create_topic(bs, out_topic, 4)
        prompts = [
            {"id": f"{m}-{i}", "model": m, "prompt": f"q{i}"}
            for m, n in (("big-length", 6), ("big-chunked", 6), ("big-alone", 2))
            for i in range(n)
        ]
        kh.produce_prompts(bs, prompts_topic, prompts)
        worker = subprocess.Popen(
            [sys.executable, "-m", "llm_worker.worker.cli", "run"],
            env={
                **worker_env,
                "LLM_WORKER_HTTP_PORT": str(free_port()),
                "LLM_WORKER_REQUEST_DEADLINE_S": "8",
            },
            stdin=subprocess.DEVNULL,
        )
        try:
            docs = kh.consume_until_ids(bs, out_topic, {p["id"] for p in prompts}, timeout=120)
            peak = _peak_rss(worker.pid)
            assert worker.poll() is None, "the worker died"
        finally:
            worker.terminate()
            worker.wait(30)
    by_id = {d["id"]: d for d in docs}
    for pid, doc in by_id.items():
        if pid.startswith("big-alone"):
            assert doc["status"] == "error", doc
            assert doc["error"]["type"] == "response_too_large", doc
            assert doc["error"]["retryable"] is True
            assert "LLM_WORKER_MAX_RESPONSE_BYTES" in doc["error"]["message"]
            assert doc["attempts"] >= 1
        else:
            assert doc["status"] == "ok", doc
            assert doc["fallback_used"] is True and doc["endpoint_name"].endswith("/fallback")
    assert huge.calls["length"] >= 6 and huge.calls["chunked"] >= 6 and huge.calls["alone"] >= 2
    with capsys.disabled():
        print(
            f"\n[big answers] {sum(huge.calls.values())} answers of 100 MB "
            f"({huge.calls}); worker peak RSS {peak / 2**20:.0f} MiB"
        )
    assert peak < PEAK_RSS_LIMIT, f"worker peak RSS {peak / 2**20:.0f} MiB"
