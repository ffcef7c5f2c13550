"""The spans of one message as the outcome record carries them: plain holders of OpenTelemetry
spans, so `worker.records` can type `Outcome.trace` without importing the tracer."""

from __future__ import annotations

from opentelemetry.trace import Span

__all__ = ["MessageTrace"]


class MessageTrace:
    """The spans of one message: its CONSUMER span, then the PRODUCER span of its outcome."""

    __slots__ = ("carried", "process", "recording", "send", "traceparent")

    def __init__(
        self,
        process: Span | None,
        traceparent: bytes | None = None,
        carried: bytes | None = None,
    ) -> None:
        self.process = process
        """The CONSUMER span; None when the message is not sampled (no span at all)."""
        self.recording = process is not None and process.is_recording()
        self.send: Span | None = None
        self.traceparent = traceparent
        """Not sampled: the `traceparent` its outcome carries (None: the input's, as is)."""
        self.carried = carried
        """Not sampled and carried on as is: the input's `traceparent` (for `ids`)."""

    def ids(self) -> tuple[str, str]:
        """(trace_id, span_id) the outcome carries on, as hex, for its log line."""
        if self.process is not None:
            ctx = self.process.get_span_context()
            return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        tp = (self.traceparent or self.carried or b"").decode("ascii", "replace")
        return tp[3:35], tp[36:52]
