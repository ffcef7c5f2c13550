"""Telemetry of a real run (real broker, real Postgres, the fake provider over HTTP): what
`/metrics` says afterwards, and the traces a collector receives."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.devkit.devstack import free_port
from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.config import Settings
from tests.integration import kafka_helpers as kh
from tests.integration.otlp_receiver import attr_value, otlp_receiver

pytestmark = pytest.mark.integration


def _row(model_id: str, endpoint: str, **kw: Any) -> ModelRow:
    return ModelRow(
        model_id=model_id,
        provider="fake",
        endpoint=endpoint,
        upstream_model=f"up-{model_id}",
        max_tokens=64,
        timeout_ms=5000,
        input_cost_per_1k=0.003,
        output_cost_per_1k=0.015,
        **kw,
    )


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(samples: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


async def test_metrics_after_a_run_equal_what_was_sent(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    port = free_port()
    s = make_settings(max_attempts=2, http_port=port)
    s = msgspec.structs.replace(s, kafka_extra={**s.kafka_extra, "statistics.interval.ms": "500"})
    fake.set_profile("down", error_rate=1.0, error_status=503)
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    upsert_row(pg_dsn, _row("flaky", fake.endpoint("down"), fallback_endpoint=fake.endpoint()))
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    prompts = (
        [{"id": f"d-{i}", "model": "m1", "prompt": f"distinct question {i}"} for i in range(30)]
        + [{"id": f"s-{i}", "model": "m1", "prompt": "the same question"} for i in range(10)]
        + [{"id": f"f-{i}", "model": "flaky", "prompt": f"failing over {i}"} for i in range(8)]
        + [{"id": f"u-{i}", "model": f"no-such-model-{i}", "prompt": "x"} for i in range(4)]
    )
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    await asyncio.to_thread(kh.produce, bs, s.prompts_topic, [b"{not json", b"[]"])
    app = App(s)
    async with app.running():
        docs = [
            r.json()
            for r in await asyncio.to_thread(kh.consume, bs, s.completions_topic, len(prompts))
        ]
        assert len(docs) == len(prompts)
        samples = await asyncio.to_thread(_scrape, port)
        for _ in range(100):  # delivery reports reach the worker about when we read them
            if _total(samples, "llm_worker_completions_total") == len(prompts):
                break
            await asyncio.sleep(0.1)
            samples = await asyncio.to_thread(_scrape, port)
        lag: dict[str, float] = {}
        for _ in range(100):  # committed, and the consumer's statistics have seen it
            lag = {
                dict(labels)["partition"]: v
                for (n, labels), v in (await asyncio.to_thread(_scrape, port)).items()
                if n == "llm_worker_consumer_lag"
            }
            if set(lag) == {"0", "1"} and not any(lag.values()):
                break
            await asyncio.sleep(0.2)
        queue = (await asyncio.to_thread(_scrape, port))[("llm_worker_producer_queue_messages", ())]

    by_status = Counter(
        ("unknown" if d["model"].startswith("no-such") else d["model"], d["status"]) for d in docs
    )
    for (model, status), n in by_status.items():
        assert _total(samples, "llm_worker_completions_total", model=model, status=status) == n
    assert _total(samples, "llm_worker_completions_total") == len(prompts)
    assert _total(samples, "llm_worker_completion_errors_total", type="unknown_model") == 4
    assert _total(samples, "llm_worker_dlq_records_total") == 2
    shared = [d for d in docs if d["deduplicated"]]
    assert len(shared) == 9  # ten identical prompts, one provider call
    assert _total(samples, "llm_worker_dedup_shared_total") == len(shared)
    fallbacks = [d for d in docs if d["fallback_used"]]
    assert len(fallbacks) == 8
    assert _total(samples, "llm_worker_fallbacks_total", model="flaky") == len(fallbacks)
    called = [d for d in docs if d["status"] == "ok" and not d["deduplicated"]]
    for model in ("m1", "flaky"):
        mine = [d for d in called if d["model"] == model]
        for direction in ("input", "output"):
            want = sum(d["usage"][f"{direction}_tokens"] for d in mine)
            got = _total(
                samples,
                "llm_worker_tokens_total",
                model=model,
                provider="fake",
                direction=direction,
            )
            assert want > 0 and got == want, (model, direction)
        cost = sum(d["usage"]["cost_usd"] for d in mine)
        got_cost = _total(samples, "llm_worker_cost_usd_total", model=model, provider="fake")
        assert got_cost == pytest.approx(cost)
    # every attempt after a request's first is a retry: here, the primary's 503s
    retries = sum(max(d["attempts"] - 1, 0) for d in docs if not d["deduplicated"])
    assert retries >= 8
    assert _total(samples, "llm_worker_retries_total", reason="server_error") == retries
    assert _total(samples, "llm_worker_time_to_answer_seconds_count") == len(prompts)
    assert _total(samples, "llm_worker_overhead_seconds_count") == len(called)
    assert _total(samples, "process_cpu_seconds_total") > 0
    assert lag == {"0": 0, "1": 0}
    assert queue == 0


def _produce_with_headers(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        p.produce(topic, value, key, headers=headers)
    assert p.flush(30) == 0


def _hex(b: bytes) -> str:
    return b.hex()


async def test_traces_continue_across_kafka_to_a_collector(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    async with otlp_receiver() as collector:
        s = make_settings(
            otel_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_SERVICE_NAME": "llm-worker-test",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            }
        )
        bs = s.kafka_bootstrap_servers
        await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
        parents = {f"t-{i}": (f"{i + 1:032x}", f"{i + 101:016x}") for i in range(5)}
        records = [
            (
                rid.encode(),
                json.dumps({"id": rid, "model": "m1", "prompt": f"traced {rid}"}).encode(),
                [("traceparent", f"00-{tid}-{sid}-01".encode()), ("tracestate", b"t=1")],
            )
            for rid, (tid, sid) in parents.items()
        ]
        untraced = json.dumps({"id": "fresh", "model": "m1", "prompt": "no parent"}).encode()
        records.append((b"fresh", untraced, []))
        await asyncio.to_thread(_produce_with_headers, bs, s.prompts_topic, records)
        app = App(s, http=False)
        assert app.tracing is not None
        async with app.running():
            out = await asyncio.to_thread(kh.consume, bs, s.completions_topic, len(records))
        # closing the app exported what was left
    assert len(out) == len(records)
    spans = list(collector.spans())
    assert spans and all(res["service.name"] == "llm-worker-test" for res, _ in spans)
    assert all(res["deployment.environment"] == "test" for res, _ in spans)
    by_id = {_hex(span.span_id): span for _, span in spans}
    for record in out:
        doc = record.json()
        version, trace_id, parent_id, flags = record.headers["traceparent"].decode().split("-")
        assert version == "00" and int(flags, 16) & 1  # sampled (0x02: a random trace id)
        send = by_id[parent_id]  # the completion's parent: the worker's PRODUCER span
        assert send.kind == PbSpan.SPAN_KIND_PRODUCER and _hex(send.trace_id) == trace_id
        process = by_id[_hex(send.parent_span_id)]
        assert process.kind == PbSpan.SPAN_KIND_CONSUMER
        attrs = {a.key: attr_value(a.value) for a in process.attributes}
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.destination.name"] == s.prompts_topic
        assert attrs["messaging.consumer.group.name"] == s.group_id
        assert attrs["messaging.kafka.message.key"] == doc["id"]
        assert attrs["llm_worker.request.id"] == doc["id"]
        chats = [
            sp
            for _, sp in spans
            if sp.parent_span_id == process.span_id and sp.kind == PbSpan.SPAN_KIND_CLIENT
        ]
        assert len(chats) == 1
        chat = {a.key: attr_value(a.value) for a in chats[0].attributes}
        assert chat["gen_ai.request.model"] == "up-m1" and chat["gen_ai.provider.name"] == "openai"
        assert chat["gen_ai.usage.output_tokens"] == doc["usage"]["output_tokens"]
        if doc["id"] in parents:  # continues the prompt's trace, keeping its tracestate
            tid, sid = parents[doc["id"]]
            assert trace_id == tid and _hex(process.parent_span_id) == sid
            assert record.headers["tracestate"] == b"t=1"
        else:  # started one
            assert trace_id not in {t for t, _ in parents.values()}
            assert process.parent_span_id == b""


async def test_a_prompts_stop_sequences_stay_out_of_the_export(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """Issue 21, finding 5: 60 prompts with ~680 KB of stop sequences made a 39.6 MiB export
    that a collector with the default 20 MiB limit refused. With content tracing off (the
    default) no stop sequence reaches the collector, and what does is a few KB a message."""
    upsert_row(pg_dsn, _row("m1", fake.endpoint()))
    stops = [f"never-say-{i:04d}-" + "x" * 95 for i in range(100)]  # ~11 KB a prompt
    prompts = [
        {"id": f"s-{i}", "model": "m1", "prompt": f"stop list {i}", "stop": stops}
        for i in range(60)
    ]
    assert 650_000 < sum(len(json.dumps(p["stop"])) for p in prompts) < 700_000
    async with otlp_receiver() as collector:
        s = make_settings(otel_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
        bs = s.kafka_bootstrap_servers
        await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
        await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
        async with App(s, http=False).running():
            out = await asyncio.to_thread(kh.consume, bs, s.completions_topic, len(prompts))
    assert sorted(r.json()["status"] for r in out) == ["ok"] * len(prompts)
    spans = list(collector.spans())
    chats = [sp for _, sp in spans if sp.kind == PbSpan.SPAN_KIND_CLIENT]
    assert len(chats) == len(prompts)
    for chat in chats:
        assert "gen_ai.request.stop_sequences" not in {a.key for a in chat.attributes}
    exported = b"".join(collector.bodies)
    assert b"never-say-" not in exported
    assert len(exported) < len(prompts) * 3000, f"{len(exported)} bytes exported"
