"""Every error type a completion can carry (README, "Error types"), every dead-letter reason,
and what each outcome record keeps: key, headers, metadata, the offset committed after it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow

from .conftest import Harness, run_app

MAX_RESPONSE_BYTES = 65_536
README_ERROR_TYPES = {
    "validation_error",
    "payload_too_large",
    "unknown_model",
    "model_disabled",
    "fallback_cycle",
    "dangling_fallback",
    "fallback_too_deep",
    "rate_limited",
    "overloaded",
    "server_error",
    "response_too_large",
    "timeout",
    "connection_error",
    "bad_request",
    "context_length_exceeded",
    "content_filtered",
    "auth_error",
    "not_found",
    "circuit_open",
    "internal_error",
    "output_too_large",
}


@pytest.fixture
async def openai_errors() -> AsyncIterator[str]:
    """An OpenAI-compatible endpoint that refuses with the bodies OpenAI sends for a prompt
    too long and for a content-policy refusal (`/context/v1`, `/filter/v1`), or answers with
    a body over the test's `LLM_WORKER_MAX_RESPONSE_BYTES` (`/big/v1`)."""

    async def refuse(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind == "big":
            text = "x" * (2 * MAX_RESPONSE_BYTES)
            return web.json_response({"choices": [{"message": {"content": text}}]})
        code = "context_length_exceeded" if kind == "context" else "content_filter"
        message = {
            "context": "This model's maximum context length is 8192 tokens.",
            "filter": "The response was filtered due to the prompt triggering content policy.",
        }[kind]
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        return web.json_response(body, status=400)

    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(h: Harness, errors_url: str) -> list[Any]:
    p = h.provider
    for name, status in (
        ("r429", 429),
        ("o529", 529),
        ("s500", 500),
        ("b400", 400),
        ("a401", 401),
        ("n404", 404),
    ):
        p.set_profile(name, error_rate=1.0, error_status=status, retry_after_s=0.05)
    p.set_profile("slow", latency_ms=3000)
    chain = {f"deep{i}": f"deep{i + 1}" for i in range(6)}
    return [
        h.row("ok"),
        h.row("off", enabled=False),
        h.row("loop-a", fallback_model_id="loop-b"),
        h.row("loop-b", fallback_model_id="loop-a"),
        h.row("dangling", fallback_model_id="ghost"),
        *(h.row(m, fallback_model_id=n) for m, n in chain.items()),
        h.row("deep6"),
        *(h.row(m, profile=m) for m in ("r429", "o529", "s500", "b400", "a401", "n404")),
        h.row("slow", profile="slow", timeout_ms=200),
        ModelRow(
            model_id="refused",
            provider="fake",
            endpoint=f"http://127.0.0.1:{_closed_port()}/v1",
            upstream_model="x",
            timeout_ms=2000,
        ),
        h.row("nokey", api_key_secret="no-such-secret"),
        ModelRow(
            model_id="context",
            provider="openai_compatible",
            endpoint=f"{errors_url}/context/v1",
            upstream_model="x",
        ),
        ModelRow(
            model_id="filter",
            provider="openai_compatible",
            endpoint=f"{errors_url}/filter/v1",
            upstream_model="x",
        ),
        ModelRow(
            model_id="big",
            provider="openai_compatible",
            endpoint=f"{errors_url}/big/v1",
            upstream_model="x",
        ),
        h.row("circuit", profile="s500"),
        h.row("buggy", routing_objective="bogus"),
    ]


async def test_every_error_type_reaches_the_completion(
    provider: FakeServer, openai_errors: str, tmp_path: Any
) -> None:
    env = {
        "LLM_WORKER_MAX_ATTEMPTS": "1",
        "LLM_WORKER_MAX_MESSAGE_BYTES": "3000",
        "LLM_WORKER_BREAKER_MIN_REQUESTS": "1",
        "LLM_WORKER_BREAKER_COOLDOWN_S": "60",
        # retryable failures are held and retried until the deadline (issue 9): a short one
        # ends them with the provider's last error, or circuit_open if it was never reached
        "LLM_WORKER_REQUEST_DEADLINE_S": "3",
        "LLM_WORKER_SECRETS_DIR": str(tmp_path),
        "LLM_WORKER_MAX_RESPONSE_BYTES": str(MAX_RESPONSE_BYTES),
    }
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "validation": ({"model": "ok", "prompt": "x", "max_tokens": "lots"}, "validation_error"),
        "big": ({"model": "ok", "prompt": "x" * 4000}, "payload_too_large"),
        "unknown": ({"model": "nope", "prompt": "x"}, "unknown_model"),
        "disabled": ({"model": "off", "prompt": "x"}, "model_disabled"),
        "cycle": ({"model": "loop-a", "prompt": "x"}, "fallback_cycle"),
        "dangling": ({"model": "dangling", "prompt": "x"}, "dangling_fallback"),
        "deep": ({"model": "deep0", "prompt": "x"}, "fallback_too_deep"),
        "429": ({"model": "r429", "prompt": "x"}, "rate_limited"),
        "529": ({"model": "o529", "prompt": "x"}, "overloaded"),
        "500": ({"model": "s500", "prompt": "x"}, "server_error"),
        "too-large": ({"model": "big", "prompt": "x"}, "response_too_large"),
        "slow": ({"model": "slow", "prompt": "x"}, "timeout"),
        "refused": ({"model": "refused", "prompt": "x"}, "connection_error"),
        "400": ({"model": "b400", "prompt": "x"}, "bad_request"),
        "context": ({"model": "context", "prompt": "x"}, "context_length_exceeded"),
        "filter": ({"model": "filter", "prompt": "x"}, "content_filtered"),
        "401": ({"model": "a401", "prompt": "x"}, "auth_error"),
        "nokey": ({"model": "nokey", "prompt": "x"}, "auth_error"),
        "404": ({"model": "n404", "prompt": "x"}, "not_found"),
        "bug": ({"model": "buggy", "prompt": "x"}, "internal_error"),
        "huge-answer": ({"model": "ok", "prompt": "y " * 1400}, "output_too_large"),
    }
    async with run_app(
        provider, env, rows=lambda h: _rows(h, openai_errors), max_message_bytes=3000
    ) as h:
        h.send(*({"id": rid, **body} for rid, (body, _) in cases.items()))
        out = await h.wait(cases)
        # the breaker of `circuit`'s endpoint opens on its first failure: the next is refused
        h.send({"id": "circuit-1", "model": "circuit", "prompt": "x"})
        await h.wait(["circuit-1"])
        h.send({"id": "circuit-2", "model": "circuit", "prompt": "y"})
        out.update(await h.wait(["circuit-1", "circuit-2"]))
        await h.settled()
    got = {rid: (d["status"], d["error"]["type"] if d["error"] else None) for rid, d in out.items()}
    want = {rid: ("error", etype) for rid, (_, etype) in cases.items()}
    want |= {"circuit-1": ("error", "server_error"), "circuit-2": ("error", "circuit_open")}
    assert got == want
    assert {t for _, t in got.values()} == README_ERROR_TYPES
    retryable = {rid: d["error"]["retryable"] for rid, d in out.items()}
    for rid in ("429", "529", "500", "too-large", "slow", "refused", "circuit-2"):
        assert retryable[rid] is True, rid
    for rid in ("validation", "unknown", "400", "401", "404", "context", "filter", "bug"):
        assert retryable[rid] is False, rid
    assert "max_tokens" in out["validation"]["error"]["message"]
    assert "nope" in out["unknown"]["error"]["message"]
    assert "loop-a" in out["cycle"]["error"]["message"]
    assert out["bug"]["error"]["message"] == "internal error: ValueError"
    assert out["429"]["attempts"] >= 1 and out["circuit-2"]["attempts"] == 0
    assert out["huge-answer"]["provider"] == "fake" and out["huge-answer"]["text"] is None
    assert [d["id"] for d in h.completions()].count("huge-answer") == 1


async def test_a_bug_while_processing_answers_with_internal_error_and_goes_on(
    provider: FakeServer,
) -> None:
    """A bug in either half of a message's path (before the call: resolving; around it:
    routing) is answered as `internal_error`, the offset moves on, later records are served."""

    def rows(h: Harness) -> list[Any]:
        h.registry.broken["crashes"] = RuntimeError("a bug")
        return [h.row("ok"), h.row("crashes"), h.row("routing", routing_objective="bogus")]

    async with run_app(provider, rows=rows) as h:
        h.send(
            {"id": "a", "model": "crashes", "prompt": "x", "metadata": {"k": 1}},
            {"id": "b", "model": "routing", "prompt": "x"},
            {"id": "c", "model": "ok", "prompt": "x"},
            partition=0,
        )
        out = await h.wait("abc")
        await h.settled()
        stats = h.app.worker.stats()
    assert out["a"]["error"]["type"] == "internal_error" and out["a"]["metadata"] == {"k": 1}
    assert out["b"]["error"]["type"] == "internal_error"
    assert out["c"]["status"] == "ok"
    assert "a bug" not in out["a"]["error"]["message"]  # the type only: no internals out
    assert stats["errors"] == 2 and stats["completed"] == 3


async def test_dead_letters_keep_the_original_record(provider: FakeServer) -> None:
    env = {"LLM_WORKER_MAX_MESSAGE_BYTES": "200"}
    headers = [("traceparent", b"00-abc-def-01"), ("x-app", b"kept")]
    async with run_app(provider, env, rows=lambda h: [h.row("m1")]) as h:
        sent = [
            *h.send(b"{not json", key=b"k-1", headers=headers, partition=1),
            *h.send(b'{"model": "m1", "prompt": "no id"}', key=b"k-2", partition=1),
            *h.send(b'{"id": "", "model": "m1", "prompt": "x"}', partition=1),
            *h.send(b"[" + b"1," * 200 + b"1]", key=b"k-4", partition=1),  # big, no id
            *h.send(b"", key=b"k-5", partition=1),
            *h.send(None, key=b"k-6", partition=1),  # a tombstone
        ]
        h.send({"id": "after", "model": "m1", "prompt": "x"}, partition=1)
        await h.wait(["after"])
        await h.settled()
        dlq = h.dlq()
        metrics = h.app.metrics
    assert [m.key() for m in dlq] == [b"k-1", b"k-2", None, b"k-4", b"k-5", b"k-6"]
    reasons = [dict(m.headers() or [])["llm_worker.reason"] for m in dlq]
    assert reasons == [
        b"invalid_json",
        b"missing_id",
        b"missing_id",
        b"payload_too_large",
        b"invalid_json",
        b"invalid_json",
    ]
    for rec, orig in zip(dlq, sent, strict=True):
        h_ = dict(rec.headers() or [])
        assert rec.value() == (orig.value() or b"")
        assert h_["llm_worker.source"] == f"llm_prompts/1/{orig.offset()}".encode()
        assert h_["llm_worker.error"]
    first = dlq[0].headers() or []
    assert first[:2] == headers  # the original headers first, untouched
    assert b"JSON" in dict(first)["llm_worker.error"]
    assert metrics.dlq.labels("invalid_json")._value.get() == 3
    assert metrics.dlq.labels("missing_id")._value.get() == 2
    assert metrics.dlq.labels("payload_too_large")._value.get() == 1


async def test_a_completion_keeps_key_trace_headers_and_metadata(provider: FakeServer) -> None:
    headers = [("traceparent", b"00-4bf9-00f0-01"), ("tracestate", b"v=1"), ("x-drop", b"no")]
    async with run_app(provider, rows=lambda h: [h.row("m1")]) as h:
        h.send(
            {"id": "t1", "model": "m1", "prompt": "hi", "metadata": {"n": [1, "two"]}},
            key=b"the-key",
            headers=headers,
        )
        await h.wait(["t1"])
        (rec,) = h.outputs()
    assert rec.key() == b"the-key"
    assert rec.headers() == headers[:2]
    doc = json.loads(rec.value() or b"")
    assert doc["metadata"] == {"n": [1, "two"]} and doc["queue_ms"] >= 0


async def test_a_failed_delivery_is_retried_and_committed_only_after(provider: FakeServer) -> None:
    from confluent_kafka import KafkaError

    async with run_app(provider, rows=lambda h: [h.row("m1")]) as h:
        h.bridge.fail_next_deliveries(KafkaError._MSG_TIMED_OUT, times=2)
        h.send({"id": "d1", "model": "m1", "prompt": "x"}, partition=0)
        await h.wait(["d1"])
        await h.settled()
        retries = h.app.worker.stats()["delivery_retries"]
        first_commit = next(c for c in h.bridge.commits if ("llm_prompts", 0) in c)
    assert [d["id"] for d in h.completions()] == ["d1"]  # failed reports wrote nothing
    assert retries == 2
    assert first_commit == {("llm_prompts", 0): 1}


async def test_a_full_producer_queue_waits_instead_of_losing_the_outcome(
    provider: FakeServer,
) -> None:
    async with run_app(provider, rows=lambda h: [h.row("m1")]) as h:
        h.bridge.buffer_full = 3
        h.send(*({"id": f"q{i}", "model": "m1", "prompt": "x"} for i in range(5)))
        await h.wait([f"q{i}" for i in range(5)])
        await h.settled()
        await asyncio.sleep(0)
    assert sorted(d["id"] for d in h.completions()) == [f"q{i}" for i in range(5)]


async def test_completions_carry_every_contract_field(provider: FakeServer) -> None:
    """Every field of the completion contract (docs/contracts.md), for an answer, a provider
    failure after a fallback and a validation error."""
    # terminal: a retryable failure would be held until the deadline (issue 9)
    provider.set_profile("down", error_rate=1.0, error_status=401)
    env = {"LLM_WORKER_MAX_ATTEMPTS": "1", "LLM_WORKER_BREAKER_MIN_REQUESTS": "100"}

    def rows(h: Harness) -> list[ModelRow]:
        return [
            h.row("m1", input_cost_per_1k=0.0000123, output_cost_per_1k=0.0),
            h.row("bad", "down", fallback_endpoint=h.provider.endpoint("down"), fallback_model="f"),
        ]

    meta = {"trace": "t-1", "n": 2}
    async with run_app(provider, env, rows=rows) as h:
        h.send(
            {"id": "ok", "model": "m1", "prompt": "one two three", "metadata": meta},
            {"id": "cut", "model": "m1", "prompt": "one two three", "max_tokens": 2},
            {"id": "fail", "model": "bad", "prompt": "x", "metadata": meta},
            {"id": "inv", "model": "m1", "prompt": "x", "top_p": "high", "metadata": meta},
        )
        out = await h.wait(["ok", "cut", "fail", "inv"])
    ok, cut, fail, inv = out["ok"], out["cut"], out["fail"], out["inv"]
    assert (ok["id"], ok["model"], ok["status"], ok["metadata"]) == ("ok", "m1", "ok", meta)
    assert (ok["provider"], ok["upstream_model"], ok["endpoint_name"]) == (
        "fake",
        "up-m1",
        "m1/primary",
    )
    assert ok["text"] == "[fake:up-m1] one two three" and ok["finish_reason"] == "stop"
    assert cut["finish_reason"] == "length" and cut["usage"]["output_tokens"] == 2
    usage = ok["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (3, 4)
    assert usage["cost_usd"] == 4e-08  # 3 tokens at 0.0000123/1k, rounded to 8 places
    latency = ok["latency_ms"]
    assert isinstance(latency, float) and latency > 0 and round(latency, 3) == latency
    assert ok["queue_ms"] >= 0 and ok["error"] is None
    assert (ok["deduplicated"], ok["fallback_used"], ok["attempts"]) == (False, False, 1)

    assert (fail["status"], fail["model"], fail["metadata"]) == ("error", "bad", meta)
    assert (fail["provider"], fail["upstream_model"], fail["endpoint_name"]) == (
        "fake",
        "f",
        "bad/fallback",
    )
    assert fail["fallback_used"] is True and fail["attempts"] == 2
    assert fail["queue_ms"] >= 0 and fail["text"] is None and fail["usage"] is None
    assert fail["error"]["type"] == "auth_error" and "401" in fail["error"]["message"]

    assert (inv["status"], inv["model"], inv["metadata"]) == ("error", "m1", meta)
    assert inv["error"]["type"] == "validation_error" and "top_p" in inv["error"]["message"]
    assert inv["queue_ms"] >= 0 and inv["provider"] is None
