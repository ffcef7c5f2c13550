"""Server-sent events, parsed as the bytes arrive (the WHATWG "event stream" format).

    parser = SSEParser()
    for event in parser.feed(chunk): ...      # any split of the bytes gives the same events
    parser.close()                            # the event still open when the stream ended, if any

A line ends at CRLF, LF or CR, and may be split across reads (a CR at the end of one read and
an LF at the start of the next are one line end). A line starting with `:` is a comment; an
empty line dispatches the event built so far; `field: value` drops one leading space of the
value; `data` lines join with LF; `event` names it (default `message`); `id` and `retry` are
kept. A UTF-8 byte order mark at the very start is skipped. An event with no `data` line is
not dispatched (the standard's rule), so keep-alive comments never reach the adapters.

Bounds: a line longer than `max_line` bytes raises `SSEError`: one answer must not hold the
worker's memory in an unterminated line (the total is capped by the adapter).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_LINE_BYTES", "SSEError", "SSEEvent", "SSEParser"]

MAX_LINE_BYTES = 4 * 1024 * 1024
"""The longest line accepted in an event stream (a single data line carries one event)."""

_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream is not a readable event stream (a line over the bound)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Incremental: `feed` bytes, get the events they complete."""

    __slots__ = ("_buf", "_cr", "_data", "_event", "_id", "_max_line", "_started", "retry_ms")

    def __init__(self, *, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._cr = False  # the last read ended with CR: an LF first in the next one is its pair
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._max_line = max_line
        self._started = False
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events the bytes so far complete, in order."""
        if not self._started:
            self._buf += chunk
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return []  # maybe a BOM, split: wait for more
            self._started = True
            chunk = bytes(self._buf).removeprefix(_BOM)
            self._buf.clear()
        if not chunk:
            return []  # an empty read keeps a pending CR pending
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = False
        if not chunk:
            return []
        self._buf += chunk
        events: list[SSEEvent] = []
        buf = self._buf
        start = 0
        while True:
            lf, cr = buf.find(b"\n", start), buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            step = 1
            if end == cr:
                if cr + 1 < len(buf):
                    step = 2 if buf[cr + 1] == 0x0A else 1
                else:
                    self._cr = True  # an LF may follow in the next read
            line = bytes(buf[start:end])
            start = end + step
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buf[:start]
        if len(buf) > self._max_line:
            raise SSEError(f"an event-stream line is longer than {self._max_line} bytes")
        return events

    def close(self) -> SSEEvent | None:
        """The stream ended: an event still being built (no blank line after it), if any."""
        if self._buf:
            event = self._line(bytes(self._buf))
            self._buf.clear()
            if event is not None:
                return event
        return self._dispatch()

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(event or "message", "\n".join(data), self._id)
