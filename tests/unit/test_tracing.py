"""Traces of one message's path: the pipeline, the retry loop and the outcome recorder, with
an in-memory exporter and the built-in fake provider over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanKind, StatusCode

from llm_worker.adapters.secrets import SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.calling.breaker import BreakerBoard, BreakerConfig
from llm_worker.worker.calling.caller import Caller
from llm_worker.worker.config import load_settings
from llm_worker.worker.dedup import DedupWindow
from llm_worker.worker.ops.attempts import AttemptObserver
from llm_worker.worker.ops.leanspans import LeanSpan
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.ops.sampling import HeadSampler
from llm_worker.worker.ops.tracing import Tracing
from llm_worker.worker.pipeline import Pending, Pipeline
from llm_worker.worker.records import InputRecord, Outcome

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Registry:
    def __init__(self, *rows: ModelRow) -> None:
        self.rows = {r.model_id: r for r in rows}

    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(self.rows, model_id)


class Harness:
    """One worker's message path without Kafka: begin -> finish -> delivered."""

    def __init__(
        self,
        registry: Registry,
        sessions: SessionPool,
        tracing: Tracing | None,
        *,
        dedup: bool = False,
        breakers: BreakerBoard | None = None,
        **settings: Any,
    ) -> None:
        self.settings = load_settings({}, group_id="g1", max_attempts=2, **settings)
        self.metrics = Metrics()
        self.caller = Caller(
            sessions,
            SecretStore(None, env={"FAKE_KEY": "sk-test-0123456789abcdefSECRET"}),
            self.metrics,
            max_attempts=2,
            breakers=breakers,
            observer=AttemptObserver(self.metrics, tracing),
        )
        self.pipeline = Pipeline(
            self.settings,
            registry,
            self.caller,
            self.metrics,
            dedup=DedupWindow(60.0, 1000, 1 << 20) if dedup else None,
            tracing=tracing,
        )
        self.recorder = OutcomeRecorder(self.metrics)

    async def run(self, *records: InputRecord) -> list[Outcome]:
        steps = [self.pipeline.begin(r) for r in records]
        outs = await asyncio.gather(
            *(self.pipeline.finish(s) if isinstance(s, Pending) else _done(s) for s in steps)
        )
        self.recorder.record([(r, o, None) for r, o in zip(records, outs, strict=True)])
        return list(outs)


async def _done(out: Outcome) -> Outcome:
    return out


def record(
    i: int, model: str = "m", *, headers: Any = None, prompt: str | None = None
) -> InputRecord:
    body = {"id": f"req-{i}", "model": model, "prompt": prompt or f"question {i}"}
    return InputRecord(
        topic="prompts",
        partition=3,
        offset=100 + i,
        value=json.dumps(body).encode(),
        key=f"key-{i}".encode(),
        headers=headers,
    )


def in_memory(sampler: Any = None, **kw: Any) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, group_id="g1", **kw), exporter


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=1) as server:
        yield server


@pytest.fixture
async def sessions() -> AsyncIterator[SessionPool]:
    pool = SessionPool()
    yield pool
    await pool.close()


def row(fake: FakeServer, **kw: Any) -> ModelRow:
    values: dict[str, Any] = {
        "model_id": "m",
        "provider": "fake",
        "endpoint": fake.endpoint(),
        "upstream_model": "up-m",
        "max_tokens": 50,
        "api_key_secret": "fake-key",
    }
    values.update(kw)
    return ModelRow(**values)


async def test_a_message_continues_its_trace_through_consumer_client_and_producer_spans(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake)), sessions, tracing)
    rec = record(1, headers=[("traceparent", PARENT.encode()), ("tracestate", b"vendor=x")])
    (out,) = await h.run(rec)
    spans = exporter.get_finished_spans()
    (process,) = by_kind(spans, SpanKind.CONSUMER)
    (chat,) = by_kind(spans, SpanKind.CLIENT)
    (send,) = by_kind(spans, SpanKind.PRODUCER)
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}
    assert process.parent is not None and f"{process.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert chat.parent is not None and chat.parent.span_id == process.context.span_id
    assert send.parent is not None and send.parent.span_id == process.context.span_id
    assert process.name == "process prompts" and send.name == "send llm_completions"
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "prompts",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 101,
        "messaging.consumer.group.name": "g1",
        "messaging.kafka.message.key": "key-1",
        "llm_worker.request.id": "req-1",
        "llm_worker.model": "m",
        "llm_worker.attempts": 1,
    }
    assert process.status.status_code == StatusCode.UNSET
    attrs = dict(chat.attributes or {})
    assert chat.name == "chat up-m"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"  # the fake speaks OpenAI's API
    assert attrs["gen_ai.request.model"] == "up-m" and attrs["gen_ai.response.model"] == "up-m"
    assert str(attrs["gen_ai.response.id"]).startswith("chatcmpl-fake-")
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 2 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == fake.port
    assert send.attributes and send.attributes["messaging.destination.name"] == "llm_completions"
    # the completion record continues the trace from the PRODUCER span, keeping tracestate
    headers = dict(out.headers or [])
    assert headers["traceparent"] == f"00-{TRACE_ID}-{send.context.span_id:016x}-01".encode()
    assert headers["tracestate"] == b"vendor=x"
    # nobody's prompt or answer on a span unless asked
    assert not any("question 1" in str(v) for s in spans for v in (s.attributes or {}).values())


async def test_trace_content_puts_prompt_and_answer_on_the_chat_span(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory(trace_content=True)
    h = Harness(Registry(row(fake)), sessions, tracing)
    await h.run(record(1, prompt="what is kafka"))
    (chat,) = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    attrs = chat.attributes or {}
    assert json.loads(str(attrs["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "what is kafka"}]}
    ]
    (answer,) = json.loads(str(attrs["gen_ai.output.messages"]))
    assert answer["parts"][0]["content"] == "[fake:up-m] what is kafka"


async def test_retries_and_fallbacks_are_spans_and_events(
    fake: FakeServer, sessions: SessionPool
) -> None:
    fake.set_profile("down", error_rate=1.0, error_status=503)
    primary = row(fake, endpoint=fake.endpoint("down"), fallback_endpoint=fake.endpoint())
    tracing, exporter = in_memory()
    h = Harness(Registry(primary), sessions, tracing)
    (out,) = await h.run(record(1))
    assert out.completion is not None and out.completion.fallback_used
    spans = exporter.get_finished_spans()
    (process,) = by_kind(spans, SpanKind.CONSUMER)
    chats = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get("llm_worker.endpoint") for s in chats] == [
        "m/primary",
        "m/primary",
        "m/fallback",
    ]
    assert [s.status.status_code for s in chats] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert (chats[0].attributes or {})["error.type"] == "server_error"
    assert (chats[0].attributes or {})["http.response.status_code"] == 503
    assert (chats[1].attributes or {})["llm_worker.retry_of"] == "server_error"
    events = [(e.name, dict(e.attributes or {})) for e in process.events]
    assert [name for name, _ in events] == [
        "llm_worker.held",  # the backoff before the primary's second try
        "llm_worker.retry",
        "llm_worker.retry",
        "llm_worker.fallback",
    ]
    held = events[0][1]
    assert held["reason"] == "retry_backoff" and held["llm_worker.endpoint"] == "m/primary"
    assert float(held["wait_s"]) > 0  # type: ignore[arg-type]
    assert events[3][1] == {"llm_worker.endpoint": "m/fallback"}
    text = h.metrics.registry.get_sample_value(
        "llm_worker_retries_total", {"reason": "server_error"}
    )
    assert text == 2  # the second try on the primary and the move to the fallback


async def test_a_deduplicated_message_links_to_the_span_that_called(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake)), sessions, tracing, dedup=True)
    same = "the same question"
    await h.run(record(1, prompt=same), record(2, prompt=same))  # one leads, one follows
    await h.run(record(3, prompt=same))  # answered from the window
    spans = exporter.get_finished_spans()
    assert len(by_kind(spans, SpanKind.CLIENT)) == 1
    processes = {
        (s.attributes or {})["llm_worker.request.id"]: s for s in by_kind(spans, SpanKind.CONSUMER)
    }
    leader = next(
        s for s in processes.values() if "llm_worker.deduplicated" not in (s.attributes or {})
    )
    followers = [s for s in processes.values() if s is not leader]
    assert len(followers) == 2
    for f in followers:
        assert [link.context.span_id for link in f.links] == [leader.context.span_id]


async def test_a_follower_of_a_failed_call_shares_its_error_and_links_to_it(
    fake: FakeServer, sessions: SessionPool
) -> None:
    fake.set_profile("bad", error_rate=1.0, error_status=400)  # terminal: one attempt
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake, endpoint=fake.endpoint("bad"))), sessions, tracing, dedup=True)
    same = "the same question"
    outs = await h.run(record(1, prompt=same), record(2, prompt=same))  # one leads, one follows
    assert fake.counters("bad")["requests"] == 1
    errors = [o.completion for o in outs if o.completion is not None and o.completion.error]
    assert len(errors) == 2
    follower = next(c for c in errors if c.deduplicated)
    leader = next(c for c in errors if not c.deduplicated)
    assert follower.error is not None and leader.error is not None
    assert follower.error.type == leader.error.type == "bad_request"
    assert (leader.attempts, follower.attempts) == (1, 0)  # the follower made no call
    assert (follower.provider, follower.endpoint_name) == (leader.provider, leader.endpoint_name)
    spans = exporter.get_finished_spans()
    processes = {
        (s.attributes or {})["llm_worker.request.id"]: s for s in by_kind(spans, SpanKind.CONSUMER)
    }
    leading, following = processes[leader.id], processes[follower.id]
    assert [link.context.span_id for link in following.links] == [leading.context.span_id]


async def test_a_message_cancelled_during_its_call_ends_its_span_saying_so(
    fake: FakeServer, sessions: SessionPool
) -> None:
    fake.set_profile("slow", latency_ms=30_000)
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake, endpoint=fake.endpoint("slow"))), sessions, tracing)
    step = h.pipeline.begin(record(1))
    assert isinstance(step, Pending)
    task = asyncio.create_task(h.pipeline.finish(step))
    while not fake.counters("slow")["requests"]:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (process,) = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert (process.attributes or {})["error.type"] == "CancelledError"
    assert process.status.status_code is StatusCode.ERROR


async def test_an_internal_error_gets_a_span_of_its_own(
    fake: FakeServer, sessions: SessionPool
) -> None:
    """The message's span was lost with the bug: the error completion still shows on a trace."""
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake)), sessions, tracing)
    out = h.pipeline.internal_error(record(1), RuntimeError("bug"))
    assert out.completion is not None and out.completion.error is not None
    (process,) = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    attributes = process.attributes or {}
    assert attributes["llm_worker.request.id"] == "req-1"
    assert attributes["error.type"] == "internal_error"


async def test_an_unsampled_message_exports_nothing_and_still_carries_its_trace(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory(sampler=ParentBased(ALWAYS_OFF))
    h = Harness(Registry(row(fake)), sessions, tracing)
    unsampled = f"00-{TRACE_ID}-00f067aa0ba902b7-00"
    (out,) = await h.run(record(1, headers=[("traceparent", unsampled.encode())]))
    assert exporter.get_finished_spans() == ()
    tp = dict(out.headers or [])["traceparent"].decode()
    assert tp.startswith(f"00-{TRACE_ID}-") and tp.endswith("-00")


@pytest.fixture
def spans_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every span object created anywhere (SDK spans, the worker's lean ones, non-recording
    ones)."""
    made: list[str] = []
    for cls in (SdkSpan, LeanSpan, NonRecordingSpan):
        original = cls.__init__

        def counting(self: Any, *a: Any, _orig: Any = original, **kw: Any) -> None:
            made.append(type(self).__name__)
            _orig(self, *a, **kw)

        monkeypatch.setattr(cls, "__init__", counting)
    yield made


async def test_with_tracing_off_the_hot_path_makes_no_span_objects(
    fake: FakeServer, sessions: SessionPool, spans_made: list[str]
) -> None:
    h = Harness(Registry(row(fake)), sessions, None, dedup=True)
    rec = record(1, headers=[("traceparent", PARENT.encode())])
    outs = await h.run(rec, *(record(i) for i in range(2, 50)), record(50, model="nope"))
    assert len(outs) == 50 and spans_made == []
    # off, the input's trace headers are carried over as they are
    assert dict(outs[0].headers or []) == {"traceparent": PARENT.encode()}
    # and the same run with tracing on does make them (so the spy sees spans)
    tracing, _ = in_memory()
    await Harness(Registry(row(fake)), sessions, tracing).run(record(1))
    assert spans_made


async def test_no_span_carries_the_key_an_error_or_an_answer_echoes(
    sessions: SessionPool,
) -> None:
    key = "sk-test-0123456789abcdefSECRET"
    calls = 0

    async def echo(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        sent = request.headers["Authorization"].removeprefix("Bearer ")
        if calls == 1:  # an error that quotes the key, then an answer that echoes it
            return web.json_response({"error": {"message": f"bad key {sent}"}}, status=500)
        return web.json_response(
            {
                "id": f"chatcmpl-{sent}",
                "model": f"model-{sent}",
                "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    server = TestServer(app)
    await server.start_server()
    try:
        tracing, exporter = in_memory(trace_content=True)
        upstream = ModelRow(
            model_id="m",
            provider="openai_compatible",
            endpoint=str(server.make_url("/v1")),
            upstream_model="up-m",
            api_key_secret="fake-key",
        )
        (out,) = await Harness(Registry(upstream), sessions, tracing).run(record(1))
    finally:
        await server.close()
    assert out.completion is not None and out.completion.status == "ok"
    assert calls == 2
    spans = exporter.get_finished_spans()
    failed, chat = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert (failed.attributes or {})["error.type"] == "server_error"
    attrs = dict(chat.attributes or {})
    assert "gen_ai.response.id" not in attrs and "gen_ai.response.model" not in attrs
    # everything a span carries: name, attributes, events and their attributes, status
    seen = [
        text
        for s in spans
        for text in (
            s.name,
            str(s.status.description),
            *map(str, (s.attributes or {}).values()),
            *(e.name for e in s.events),
            *(str(v) for e in s.events for v in (e.attributes or {}).values()),
        )
    ]
    assert seen and not [t for t in seen if key in t or "0123456789abcdef" in t]


async def test_messages_not_sampled_make_no_span_objects_and_carry_a_trace_on(
    fake: FakeServer, sessions: SessionPool, spans_made: list[str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, group_id="g1", sampler=HeadSampler("parentbased_traceidratio", 0.1))
    h = Harness(Registry(row(fake)), sessions, tracing)
    outs = await h.run(*(record(i) for i in range(200)))
    flags = [int(dict(o.headers or [])["traceparent"].decode()[-2:], 16) for o in outs]
    sampled = sum(f & 1 for f in flags)
    assert 0 < sampled < 60  # about 20 of 200
    consumer = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    assert len(consumer) == sampled
    assert len(spans_made) == 3 * sampled  # process, chat, send: none for the others


async def test_a_dead_letter_keeps_its_headers_and_continues_the_trace(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory()
    h = Harness(Registry(row(fake)), sessions, tracing)
    headers = [("traceparent", PARENT.encode()), ("app", b"kept")]
    rec = InputRecord(topic="prompts", partition=0, offset=7, value=b"{nope", headers=headers)
    (out,) = await h.run(rec)
    assert out.dlq_reason == "invalid_json"
    spans = exporter.get_finished_spans()
    (process,) = by_kind(spans, SpanKind.CONSUMER)
    (send,) = by_kind(spans, SpanKind.PRODUCER)
    assert (process.attributes or {})["error.type"] == "invalid_json"
    assert process.status.status_code == StatusCode.ERROR
    got = dict(out.headers or [])
    assert got["app"] == b"kept" and got["llm_worker.reason"] == b"invalid_json"
    assert got["traceparent"] == f"00-{TRACE_ID}-{send.context.span_id:016x}-01".encode()


async def test_each_outcome_log_line_names_its_trace_and_span(
    fake: FakeServer, sessions: SessionPool, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # new traces are not sampled; a producer's decision is followed
    tracing = Tracing(provider, group_id="g1", sampler=HeadSampler("parentbased_always_off"))
    h = Harness(Registry(row(fake)), sessions, tracing)
    other = "0af7651916cd43dd8448eb211c80319c"
    unsampled = f"00-{other}-b7ad6b7169203331-00"  # the producer decided: not traced
    with caplog.at_level(logging.INFO, logger="llm_worker.outcome"):
        outs = await h.run(
            record(1, headers=[("traceparent", PARENT.encode())]),
            record(2, headers=[("traceparent", unsampled.encode())]),
            record(3),
        )
    lines = {r.request_id: r for r in caplog.records if r.getMessage() == "completion"}
    (process,) = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    sampled = lines["req-1"]
    assert (sampled.trace_id, sampled.span_id) == (TRACE_ID, f"{process.context.span_id:016x}")
    assert (lines["req-2"].trace_id, lines["req-2"].span_id) == (other, "b7ad6b7169203331")
    # a new trace, not sampled: the ids its completion record carries on
    tp = dict(outs[2].headers or [])["traceparent"].decode()
    assert (lines["req-3"].trace_id, lines["req-3"].span_id) == (tp[3:35], tp[36:52])


async def test_a_wait_for_a_half_open_probe_shows_on_the_trace(
    fake: FakeServer, sessions: SessionPool
) -> None:
    fake.set_profile("down", error_rate=1.0, error_status=503)
    tracing, exporter = in_memory()
    # the cooldown outlasts the first backoff (<= 1 s) with room to spare: the second pass
    # finds the breaker open and waits for its half-open probe
    breakers = BreakerBoard(BreakerConfig(min_requests=1, cooldown_s=3.0, probes=1))
    h = Harness(
        Registry(row(fake, endpoint=fake.endpoint("down"))), sessions, tracing, breakers=breakers
    )

    async def recover() -> None:  # the endpoint heals once it has failed once
        # answered, not just arrived: the fake decides the error after reading the body
        while not any(c.status == 503 for c in fake.calls("down")):
            await asyncio.sleep(0.005)
        fake.set_profile("down", error_rate=0.0)

    healing = asyncio.create_task(recover())
    (out,) = await h.run(record(1))
    await healing
    assert out.completion is not None and out.completion.status == "ok"
    (process,) = by_kind(exporter.get_finished_spans(), SpanKind.CONSUMER)
    events = [(e.name, dict(e.attributes or {})) for e in process.events]
    names = [name for name, _ in events]
    # failed -> breaker open -> backoff -> skipped as open -> waits for the probe -> answered
    assert "llm_worker.circuit_open" in names
    held = [attrs for name, attrs in events if name == "llm_worker.held"]
    assert [a["reason"] for a in held][-1] == "circuit_open"
    assert held[-1]["llm_worker.endpoint"] == "m/primary" and float(held[-1]["wait_s"]) > 0  # type: ignore[arg-type]


def _with_stop(stop: list[str]) -> InputRecord:
    body = {"id": "req-s", "model": "m", "prompt": "a question", "stop": stop}
    return InputRecord(topic="prompts", partition=0, offset=1, value=json.dumps(body).encode())


STOPS = [f"stop sequence {i:05d} " + "s" * 80 for i in range(2000)]  # ~200 KB of them


async def test_with_content_off_no_span_carries_the_prompts_stop_sequences(
    fake: FakeServer, sessions: SessionPool
) -> None:
    """Issue 21, finding 5: the stop list went onto every `chat` span whole (60 prompts made a
    39.6 MiB export a collector refused), although it is text of the prompt's."""
    tracing, exporter = in_memory()
    (out,) = await Harness(Registry(row(fake)), sessions, tracing).run(_with_stop(STOPS))
    assert out.completion is not None and out.completion.status == "ok"
    spans = exporter.get_finished_spans()
    (chat,) = by_kind(spans, SpanKind.CLIENT)
    assert "gen_ai.request.stop_sequences" not in (chat.attributes or {})
    carried = [str(v) for s in spans for v in (s.attributes or {}).values()]
    carried += [str(v) for s in spans for e in s.events for v in (e.attributes or {}).values()]
    assert not [v for v in carried if "stop sequence" in v]
    assert sum(len(v) for v in carried) < 2000


async def test_with_content_on_the_stop_sequences_are_cut_to_one_values_length(
    fake: FakeServer, sessions: SessionPool
) -> None:
    tracing, exporter = in_memory(trace_content=True, value_length=1000)
    await Harness(Registry(row(fake)), sessions, tracing).run(_with_stop(STOPS))
    (chat,) = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    stop = (chat.attributes or {})["gen_ai.request.stop_sequences"]
    assert isinstance(stop, tuple) and sum(map(len, stop)) == 1000
    assert list(stop[:-1]) == STOPS[: len(stop) - 1]  # the first ones, the last cut
    assert STOPS[len(stop) - 1].startswith(stop[-1])
