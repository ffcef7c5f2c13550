"""Structured logs: one JSON object per line, with every `extra=` field; or, with
`LLM_WORKER_LOG_FORMAT=text`, one line of text with those fields as `key=value` after it.

`configure_logging(..., secrets=...)` is the last line of defence: every formatted line has the
given values (the database password, the Kafka password) taken out, as written and as JSON
escapes them, whatever logged them.

Lines made on the hot path (one per outcome) skip `logging`: a `LogRecord`, a formatter pass
and a flush per line cost more than the rest of the line's work. `line_sink()` gives the
configured JSON handler's `LineSink`, which writes lines encoded by the caller (the same JSON
shape as `JsonFormatter`'s) a batch at a time, redacted like every other line, under the
handler's lock. With `LLM_WORKER_LOG_FORMAT=text` there is no sink and such lines go through
`logging` as before.

librdkafka's own logs come through the `llm_worker.librdkafka` logger (its `logger` setting,
`stream/kafka_conf.py`), served on the client's thread; `LibrdkafkaFields` turns their
`FACILITY [client] text` form into fields, so they are JSON lines like every other.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = [
    "JsonFormatter",
    "LibrdkafkaFields",
    "LineSink",
    "RedactingFormatter",
    "TextFormatter",
    "configure_logging",
    "iso_ts",
    "line_sink",
]


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}
_encoder = msgspec.json.Encoder(enc_hook=repr)


def iso_ts(created: float) -> str:
    """A log line's `ts`: UTC, milliseconds, `Z`."""
    msecs = int((created - int(created)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra=` fields."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`: the text form keeps every `extra=` field (a
    value with a space or a quote is JSON-quoted, a mapping or list is JSON)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)  # a traceback, if any, follows on its own lines
        pairs = [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        return f"{line} {' '.join(pairs)}" if pairs else line


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "=\n\t'):
        return value
    return _encoder.encode(value).decode()


class LibrdkafkaFields(logging.Filter):
    """`FAIL [rdkafka#producer-1] [thrd:...]: text` -> facility, client and the text."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == "%s [%s] %s" and isinstance(args, tuple) and len(args) == 3:
            record.facility, record.client = str(args[0]), str(args[1])
            record.msg, record.args = str(args[2]), None
        return True


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with each secret replaced by `***`, as written and in the
    escaped form JSON gives it. Secrets shorter than `MIN_SECRET` are left alone: replacing
    every `a` of a log would hide more than it protects."""

    MIN_SECRET = 4

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        forms = set()
        for secret in secrets:
            if len(secret) >= self.MIN_SECRET:
                forms |= {secret, _encoder.encode(secret).decode()[1:-1]}
        self._forms = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self._inner.format(record))

    def redact(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, "***")
        return text


class LineSink:
    """Writes JSON lines encoded by the caller to the log handler's stream, many in one write:
    the hot path's lines (`worker/ops/outcomes.py`), without a `LogRecord` each."""

    def __init__(self, handler: logging.StreamHandler[Any], redactor: RedactingFormatter) -> None:
        self.handler = handler
        self._redact = redactor.redact

    def write(self, lines: list[bytes]) -> None:
        """Each item one JSON object, without its newline."""
        if not lines:
            return
        lines.append(b"")
        text = self._redact(b"\n".join(lines).decode())
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except Exception:  # as logging does: a broken stream must not break the worker
            handler.handleError(logging.makeLogRecord({"msg": "outcome lines"}))
        finally:
            handler.release()


_sink: LineSink | None = None


def line_sink(logger: logging.Logger) -> LineSink | None:
    """The JSON handler's sink for `logger`'s lines, when that handler is the only place they
    would go (no other handler or filter on the way: a test's capture, say); else None."""
    sink = _sink
    if sink is None:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or (node.handlers and node.parent is not None):
            return None
        if node.parent is None:
            return sink if node.handlers == [sink.handler] else None
        node = node.parent if node.propagate else None
    return None


_RDKAFKA_FIELDS = LibrdkafkaFields()


def configure_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    """One handler on stderr: JSON lines (`fmt="json"`) or text; `secrets` never appear."""
    global _sink
    handler = logging.StreamHandler(sys.stderr)
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    redactor = RedactingFormatter(inner, secrets)
    handler.setFormatter(redactor)
    _sink = LineSink(handler, redactor) if fmt == "json" else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("llm_worker.librdkafka").addFilter(_RDKAFKA_FIELDS)  # once: same object
