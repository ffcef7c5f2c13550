"""Outcome log lines on the fast path: with JSON logs a batch's completion lines are encoded by
the recorder and written at once, and each is the line `logging` would have written, field for
field, redacted like every other line; anything else listening (a capture, a filter) gets them
through `logging` as before."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from llm_worker.worker.messages import Completion, ErrorInfo, encode
from llm_worker.worker.ops import logs
from llm_worker.worker.ops.logs import JsonFormatter, configure_logging
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.records import InputRecord, Outcome

SECRET = "hunter2-password"


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stream]:
    """`llm-worker run`'s logging (JSON on stderr, a secret to hide), restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._sink
    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("INFO", "json", secrets=[SECRET])
    try:
        yield stream
    finally:
        root.handlers[:], level, logs._sink = saved
        root.setLevel(level)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Only the worker's handler on the root logger, as in `llm-worker run` (pytest adds its
    own capture for each test)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = saved[:1]
    try:
        yield
    finally:
        root.handlers[:] = saved


def _batch(n: int) -> list[tuple[InputRecord, Outcome, Any]]:
    out = []
    for i in range(n):
        comp = Completion(
            id=f"r{i}",
            model=f"m-{SECRET}" if i == 1 else "m",
            status="error" if i == 2 else "ok",
            text="t",
            provider="openai",
            endpoint_name="m/primary",
            latency_ms=12.5,
            queue_ms=3.0,
            attempts=1,
            error=ErrorInfo(type="timeout", message="slow") if i == 2 else None,
        )
        rec = InputRecord(topic="p", partition=1, offset=40 + i, value=b"{}")
        outcome = Outcome(
            topic="c", value=encode(comp), key=None, headers=None, completion=comp, started=1.0
        )
        out.append((rec, outcome, None))
    return out


def _slow_lines(batch: list[tuple[InputRecord, Outcome, Any]]) -> list[dict[str, Any]]:
    """The same batch's lines through `logging`, formatted as the JSON handler formats them."""
    got: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    capture = Capture()
    logging.getLogger().addHandler(capture)  # another listener: the fast path steps aside
    try:
        OutcomeRecorder(Metrics(), clock=lambda: 2.0).record(batch)
    finally:
        logging.getLogger().removeHandler(capture)
    fmt = logs.RedactingFormatter(JsonFormatter(), [SECRET])
    return [json.loads(fmt.format(r)) for r in got]


def test_a_batch_of_lines_is_one_write_of_the_lines_logging_would_write(stderr: Stream) -> None:
    batch = _batch(3)
    with alone():
        OutcomeRecorder(Metrics(), clock=lambda: 2.0).record(batch)
    fast = [json.loads(line) for line in stderr.getvalue().splitlines()]
    assert stderr.writes == 1  # the batch's three lines at once
    slow = _slow_lines(batch)
    assert stderr.writes == 1 + 3  # through `logging`: a write per line
    assert len(fast) == len(slow) == 3
    for f, s in zip(fast, slow, strict=True):
        assert list(f) == list(s)  # the same fields, in the same order
        assert {**f, "ts": None} == {**s, "ts": None}
    assert fast[0]["answer_ms"] == 1000.0 and fast[2]["error_type"] == "timeout"
    assert SECRET not in stderr.getvalue() and fast[1]["model"] == "m-***"


def test_errors_only_writes_only_the_error_lines(stderr: Stream) -> None:
    with alone():
        OutcomeRecorder(Metrics(), log_outcomes="errors").record(_batch(3))
    assert [json.loads(x)["request_id"] for x in stderr.getvalue().splitlines()] == ["r2"]


def test_a_capture_on_the_outcome_logger_still_gets_every_line(
    stderr: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llm_worker.outcome"):
        OutcomeRecorder(Metrics()).record(_batch(2))
    assert [r.request_id for r in caplog.records] == ["r0", "r1"]  # type: ignore[attr-defined]


def test_text_logs_have_no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._sink
    monkeypatch.setattr(sys, "stderr", Stream())
    try:
        configure_logging("INFO", "text")
        assert logs.line_sink(logging.getLogger("llm_worker.outcome")) is None
        configure_logging("INFO", "json")
        assert logs.line_sink(logging.getLogger("llm_worker.outcome")) is not None
    finally:
        root.handlers[:], level, logs._sink = saved
        root.setLevel(level)
