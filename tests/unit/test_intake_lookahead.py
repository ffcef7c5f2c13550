"""The intake's lookahead (`LLM_WORKER_PRIORITY_LOOKAHEAD`): while the worker is full it reads
on and parks what comes; when room frees, the parked records start highest priority first.
Parked records of a revoked partition, or at shutdown, go unanswered and are read again."""

from __future__ import annotations

import asyncio
from typing import Any

from llm_worker.registry.errors import UnknownModel
from llm_worker.registry.resolve import Candidate
from llm_worker.worker.calling.priority import HIGH, LOW, NORMAL, Lanes
from llm_worker.worker.config import Settings
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.pipeline import Pipeline
from llm_worker.worker.records import InputRecord, Outcome
from llm_worker.worker.stream.intake import Intake
from llm_worker.worker.stream.offsets import PartitionOffsets

from .stream_fakes import FakeBridge, make_worker
from .test_priority import _cand

RANK = {b"high": 0, b"normal": 1, b"low": 2}


class Recording:
    """Records the order calls start in; `hold` keeps chosen offsets running."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.hold: dict[int, asyncio.Event] = {}

    def begin(self, rec: InputRecord) -> InputRecord:
        return rec

    async def finish(self, rec: InputRecord) -> Outcome:
        self.started.append(rec.offset)
        ev = self.hold.get(rec.offset)
        if ev is not None:
            await ev.wait()
        return Outcome(topic="out", value=str(rec.offset).encode(), key=None, headers=None)


def _intake(lookahead: int = 100, engaged: bool = True) -> Intake:
    return Intake(
        lookahead,
        lambda rec: RANK.get(rec.value or b"", 1),
        Lanes(30.0),
        engaged=lambda: engaged,
    )


def _backlog(bridge: FakeBridge, prios: list[bytes]) -> None:
    for o, p in enumerate(prios):
        bridge.records[(0, o)] = (p, None)


async def _until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


def _run(pipe: Recording, bridge: FakeBridge, parking: Intake | None) -> Any:
    return make_worker(
        bridge, pipe, parking=parking, intake=lambda: 2, max_in_flight=100, consume_batch=4
    )


async def test_a_high_priority_record_read_while_full_starts_before_earlier_low_ones() -> None:
    prios = [b"low"] * 2 + [b"low"] * 6 + [b"high"] + [b"low"] * 3
    bridge = FakeBridge({0: len(prios)})
    _backlog(bridge, prios)
    pipe = Recording()
    first = pipe.hold[0] = asyncio.Event()
    second = pipe.hold[1] = asyncio.Event()
    parking = _intake()
    worker = _run(pipe, bridge, parking)
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(parking) == len(prios) - 2)  # full: the rest is parked
        assert pipe.started == [0, 1]
        first.set()
        second.set()
        await _until(lambda: len(pipe.started) == len(prios))
    finally:
        worker.stop()
        await task
    assert pipe.started[2] == 8  # the high one, read after six low ones
    assert pipe.started[3:] == [2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert bridge.commits[-1] == {("t", 0): len(prios)}


async def test_without_the_lookahead_the_same_records_start_in_offset_order() -> None:
    prios = [b"low"] * 8 + [b"high"] + [b"low"] * 3
    for parking in (None, _intake(engaged=False)):  # none, or not engaged (no priority seen)
        bridge = FakeBridge({0: len(prios)})
        _backlog(bridge, prios)
        pipe = Recording()
        first = pipe.hold[0] = asyncio.Event()
        second = pipe.hold[1] = asyncio.Event()
        worker = _run(pipe, bridge, parking)
        task = asyncio.create_task(worker.run())
        try:
            await _until(lambda pipe=pipe: pipe.started == [0, 1])
            await asyncio.sleep(0.05)
            first.set()
            second.set()
            await _until(lambda pipe=pipe: len(pipe.started) == len(prios))
        finally:
            worker.stop()
            await task
        assert pipe.started == list(range(len(prios)))


async def test_parked_records_are_dropped_at_shutdown_and_their_offsets_not_committed() -> None:
    prios = [b"low"] * 10
    bridge = FakeBridge({0: 10})
    _backlog(bridge, prios)
    pipe = Recording()
    parking = _intake()
    worker = make_worker(
        bridge,
        pipe,
        parking=parking,
        intake=lambda: 2,
        max_in_flight=100,
        consume_batch=4,
        shutdown_timeout_s=5.0,
    )
    pipe.hold[1] = asyncio.Event()  # never released: 0 finishes, 1 runs, the rest parked
    task = asyncio.create_task(worker.run())
    await _until(lambda: len(parking) == 8 and 0 in pipe.started)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    worker.stop(deadline_s=0.3)
    await task
    assert loop.time() - t0 < 2.0  # did not wait for the parked ones
    assert len(parking) == 0
    assert bridge.commits and bridge.commits[-1] == {("t", 0): 1}  # only offset 0 answered


async def test_a_revoked_partition_drops_its_parked_records_and_reads_them_again() -> None:
    prios = [b"low"] * 6
    bridge = FakeBridge({0: 6})
    _backlog(bridge, prios)
    pipe = Recording()
    parking = _intake()
    worker = make_worker(
        bridge, pipe, parking=parking, intake=lambda: 1, max_in_flight=100, consume_batch=4
    )
    pipe.hold[0] = asyncio.Event()
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(parking) == 5)
        pipe.hold[0].set()  # finishes, so the revoke has nothing to wait for but the parked
        bridge.rebalance("revoke", [0])
        await _until(lambda: ("t", 0) not in bridge.assignment and len(parking) == 0)
        bridge.next[0] = bridge.commits[-1][("t", 0)]
        bridge.rebalance("assign", [0])
        await _until(lambda: len(set(pipe.started)) == 6)
    finally:
        worker.stop()
        await task
    assert sorted(set(pipe.started)) == list(range(6))


def test_an_abandoned_offset_is_never_passed_and_can_start_again() -> None:
    p = PartitionOffsets()
    for o in (0, 1, 2):
        p.start(o)
    p.abandon(1)
    p.finish(0)
    p.finish(2)
    assert p.in_flight == 0 and p.pending_commit() == 1  # not past the abandoned 1
    p.start(1)  # read again
    assert p.in_flight == 1
    p.finish(1)
    assert p.pending_commit() == 3


class _Registry:
    def __init__(self, rows: dict[str, str | None]) -> None:
        self.rows = rows

    def resolve(self, model_id: str) -> list[Candidate]:
        if model_id not in self.rows:
            raise UnknownModel(model_id)
        return [_cand(model_id, self.rows[model_id])]


def _rec(value: bytes) -> InputRecord:
    return InputRecord(topic="p", partition=0, offset=0, value=value)


def test_the_intake_ranks_a_record_by_its_prompt_else_its_row_else_normal() -> None:
    pipe = Pipeline(Settings(), _Registry({"m": "low", "n": None}), None, Metrics())  # type: ignore[arg-type]
    assert pipe.intake_rank(_rec(b'{"model":"m","priority":"high"}')) == HIGH
    assert pipe.intake_rank(_rec(b'{"model":"m"}')) == LOW  # the row's
    assert pipe.intake_rank(_rec(b'{"model":"n"}')) == NORMAL
    assert pipe.intake_rank(_rec(b'{"model":"nope"}')) == NORMAL  # its error comes later
    assert pipe.intake_rank(_rec(b"not json")) == NORMAL
    assert pipe.intake_rank(_rec(b'{"model":"m","priority":"urgent"}')) == NORMAL


def test_the_lookahead_engages_once_a_priority_other_than_normal_is_seen() -> None:
    pipe = Pipeline(Settings(), _Registry({"m": None, "h": "high"}), None, Metrics())  # type: ignore[arg-type]
    pipe.begin(_rec(b'{"id":"a","model":"m","prompt":"x"}'))
    pipe.begin(_rec(b'{"id":"b","model":"m","prompt":"x","priority":"normal"}'))
    assert not pipe.priorities_used
    pipe.begin(_rec(b'{"id":"c","model":"h","prompt":"x"}'))  # its row says high
    assert pipe.priorities_used
