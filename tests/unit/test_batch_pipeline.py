"""The batch lane's routing in `Pipeline` (`lane` on the prompt, else the row's `lane`): a
batch prompt is written to the `BatchSink` and its outcome is `stored`, nothing to produce;
one the sink refuses, or any when there is no sink (exactly-once mode), is answered
`batch_unavailable`. And the outbox finishes a `stored` outcome's offset at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec

from llm_worker.adapters.base import ProviderRequest
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate, resolve
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import Prompt
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pending, Pipeline
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream.offsets import PartitionOffsets
from llm_worker.worker.stream.outbox import InOrderOutbox, Outbox

from .stream_fakes import FakeBridge
from .test_pipeline import Caller

ROWS = {
    "m1": ModelRow(model_id="m1", provider="fake", endpoint="http://x/v1", upstream_model="u"),
    "cheap": ModelRow(
        model_id="cheap",
        provider="fake",
        endpoint="http://x/v1",
        upstream_model="u",
        lane="batch",
    ),
}


class Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        return resolve(ROWS, model_id)


class Sink:
    """A `BatchSink` that records what it was given; `refusal`: why it refuses every prompt."""

    def __init__(self, refusal: str | None = None) -> None:
        self.refusal = refusal
        self.refused: list[str] = []
        self.stored: list[tuple[InputRecord, Prompt, Candidate]] = []
        self.deadlines: list[float | None] = []

    def refuse(self, candidate: Candidate, request: ProviderRequest) -> str | None:
        self.refused.append(candidate.row.model_id)
        return self.refusal

    async def put(
        self,
        rec: InputRecord,
        prompt: Prompt,
        candidate: Candidate,
        deadline_ms: float | None = None,
    ) -> None:
        self.stored.append((rec, prompt, candidate))
        self.deadlines.append(deadline_ms)


def _pipeline(caller: Caller, sink: Sink | None) -> Pipeline:
    return Pipeline(
        load_settings({}),
        Registry(),
        caller,  # type: ignore[arg-type]
        Metrics(),
        wall_clock=lambda: 1000.0,
        batch=sink,
    )


def _rec(**prompt: Any) -> InputRecord:
    value = json.dumps({"id": "a", "prompt": "hi"} | prompt).encode()
    return InputRecord(topic="in", partition=0, offset=7, value=value, key=b"k")


async def test_a_batch_prompt_is_stored_with_nothing_to_produce() -> None:
    caller, sink = Caller(), Sink()
    p = _pipeline(caller, sink)
    rec = _rec(model="m1", lane="batch")
    step = p.begin(rec)
    assert isinstance(step, Pending) and step.batch
    out = await p.finish(step)
    assert out.stored and out.completion is None and out.value == b""
    assert out.model_label == "m1"
    assert len(sink.stored) == 1
    stored_rec, prompt, cand = sink.stored[0]
    assert stored_rec is rec and prompt.id == "a" and cand.row.model_id == "m1"
    assert caller.tenants == []  # no live call


async def test_a_batch_prompt_is_stored_with_its_own_deadline_not_the_default_ttl() -> None:
    """`deadline` / `ttl_ms` (from the record's timestamp) go with the stored prompt: they bound
    its wait for a job. The worker's default TTL is for live calls and is not stored."""
    caller, sink = Caller(), Sink()
    settings = load_settings({"LLM_WORKER_DEFAULT_TTL_MS": "5000"})
    p = Pipeline(
        settings,
        Registry(),
        caller,  # type: ignore[arg-type]
        Metrics(),
        wall_clock=lambda: 1000.0,  # epoch seconds: 1,000,000 ms
        batch=sink,
    )
    with_ttl = _rec(model="cheap", ttl_ms=60_000)
    stamped = msgspec.structs.replace(with_ttl, timestamp_ms=999_000)
    await p.process(stamped)
    await p.process(_rec(model="cheap", deadline=1_500_000))
    await p.process(_rec(model="cheap"))
    assert sink.deadlines == [1_059_000, 1_500_000, None]
    assert caller.tenants == []


async def test_a_row_with_lane_batch_sends_prompts_that_do_not_say() -> None:
    caller, sink = Caller(), Sink()
    out = await _pipeline(caller, sink).process(_rec(model="cheap"))
    assert out.stored and [c.row.model_id for _, _, c in sink.stored] == ["cheap"]
    assert caller.tenants == []


async def test_lane_online_on_a_batch_row_goes_live() -> None:
    caller, sink = Caller(), Sink()
    out = await _pipeline(caller, sink).process(_rec(model="cheap", lane="online"))
    assert not out.stored and out.completion is not None
    assert out.completion.status == "ok" and out.completion.lane == "online"
    assert sink.stored == [] and sink.refused == [] and len(caller.tenants) == 1


async def test_a_prompt_on_an_online_row_goes_live() -> None:
    caller, sink = Caller(), Sink()
    out = await _pipeline(caller, sink).process(_rec(model="m1"))
    assert not out.stored and out.completion is not None and out.completion.status == "ok"
    assert sink.stored == [] and len(caller.tenants) == 1


def test_a_refusal_from_the_sink_is_batch_unavailable_naming_why() -> None:
    caller, sink = Caller(), Sink(refusal="provider 'fake' has no batch API; use lane online")
    out = _pipeline(caller, sink).begin(_rec(model="m1", lane="batch"))
    assert isinstance(out, Outcome) and not out.stored
    c = out.completion
    assert c is not None and c.status == "error" and c.error is not None
    assert c.error.type == "batch_unavailable" and c.error.retryable is False
    assert "has no batch API" in c.error.message
    assert out.model_label == "m1" and sink.refused == ["m1"] and sink.stored == []
    assert caller.tenants == []


def test_without_a_sink_a_batch_prompt_is_batch_unavailable() -> None:
    """A pipeline built without a batch sink says so rather than call live."""
    caller = Caller()
    out = _pipeline(caller, None).begin(_rec(model="cheap"))
    assert isinstance(out, Outcome) and not out.stored
    c = out.completion
    assert c is not None and c.error is not None and c.error.type == "batch_unavailable"
    assert "not available in this worker" in c.error.message
    assert caller.tenants == []


def _stored() -> Outcome:
    return Outcome(topic="", value=b"", key=None, headers=None, stored=True)


def _out(tag: str) -> Outcome:
    return Outcome(topic="out", value=tag.encode(), key=None, headers=None)


def _in(offset: int) -> InputRecord:
    return InputRecord(topic="t", partition=0, offset=offset, value=b"{}")


async def test_the_outbox_finishes_a_stored_outcome_at_once_without_producing() -> None:
    bridge = FakeBridge({0: 0})
    box = Outbox(bridge, Metrics(), spawn=lambda k, c: None)  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)  # as App wires it
    offsets = PartitionOffsets()
    offsets.start(0)
    delivered: list[int] = []
    box.on_delivered = lambda rec: delivered.append(rec.offset)
    box.send(_in(0), _stored(), offsets)
    assert bridge.produced == [] and bridge.sent == []
    assert offsets.pending_commit() == 1 and box.unacked == 0 and delivered == [0]


async def test_an_ordered_outbox_finishes_a_stored_outcome_in_its_turn() -> None:
    bridge = FakeBridge({0: 0})
    box = InOrderOutbox(bridge, Metrics(), spawn=lambda k, c: None)  # type: ignore[arg-type]
    bridge.set_ack_handler(box.on_acks)
    offsets = PartitionOffsets()
    for o in (0, 1):
        box.track(_in(o))
        offsets.start(o)
    box.send(_in(1), _stored(), offsets)
    assert offsets.pending_commit() is None  # offset 0 is still unanswered
    box.send(_in(0), _out("0"), offsets)
    assert bridge.produced == [b"0"]  # the stored one produced nothing
    await asyncio.sleep(0.05)  # the fake reports deliveries a moment later
    assert offsets.pending_commit() == 2 and box.unacked == 0
