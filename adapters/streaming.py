"""A streamed answer, assembled as its events arrive: what every provider's stream shares.

    Assembler          one attempt's answer so far. A provider's subclass reads its events
                       (`event`), adding text, tool-call pieces, the finish reason and usage;
                       `result()` is the whole answer, as `parse_result` would give it.
    StreamRefused      raised by `event` for an error event inside a 2xx stream (Anthropic's
                       `error`, OpenAI's `{"error": ...}` chunk, TGI's `error` field): the
                       adapter classifies it like an error body.

The stream ends well when the provider said the answer is complete (`complete`): OpenAI's
`finish_reason` (its `[DONE]`, or the usage chunk after it, may follow), Anthropic's
`message_stop`, Gemini's `finishReason`, TGI's final `details`. A connection that closes before
that is a `ConnectionFailed`: the answer was cut short.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import ProviderResult, StreamDelta, Target, ToolCall, ToolCallDelta
from .sse import SSEEvent

__all__ = ["Assembler", "StreamRefused", "decode_event", "whole_delta"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def decode_event(data: str) -> Any:
    """An event's JSON data (`msgspec.DecodeError`, a ValueError, when it is not JSON)."""
    return _decode(data)


class StreamRefused(Exception):
    """An error event in a stream: `body` is the error document, as an error body would say it
    (classified by `HTTPAdapter.read_error`/`error_class`), `status` the HTTP status it stands
    for (None: by its text only)."""

    def __init__(self, body: bytes, status: int | None = None) -> None:
        super().__init__("error event in the stream")
        self.body = body
        self.status = status


class _Call:
    __slots__ = ("args", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.args: list[str] = []


class Assembler:
    """One streamed answer so far. Subclasses implement `event`; the helpers below keep the
    parts, and return the delta each event added."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self.finish_reason: str | None = None
        self.complete = False
        """The provider said the answer is whole: the stream may end (or be left) now."""
        self.done = False
        """Nothing more will come that matters (`[DONE]`, `message_stop`): stop reading."""
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_input_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.response_id: str | None = None
        self.response_model: str | None = None

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        """Read one event: the delta it adds (None: nothing for the reader). Raise
        `StreamRefused` for an error event, or a ValueError/LookupError/TypeError for an event
        that is not what the provider sends (a malformed stream)."""
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------
    def add_text(self, text: str) -> StreamDelta | None:
        if not text:
            return None
        self.text.append(text)
        return StreamDelta(text=text)

    def add_call(
        self, index: int, *, call_id: str | None = None, name: str | None = None, args: str = ""
    ) -> ToolCallDelta:
        """A piece of the tool call at `index` (created at its first piece)."""
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call()
        new_id = call_id if call_id and call_id != call.id else None
        new_name = name if name and name != call.name else None
        if new_id:
            call.id = new_id
        if new_name:
            call.name = new_name
        if args:
            call.args.append(args)
        # some servers (llama.cpp) repeat the id and name in every piece: passed on once
        return ToolCallDelta(index=index, id=new_id, name=new_name, arguments=args)

    def result(self, request_id: str | None) -> ProviderResult:
        """The whole answer: the text joined, each tool call's arguments parsed (an object, or
        kept in `unparsed` for the output check to refuse)."""
        calls = tuple(self._tool_call(i, c) for i, c in sorted(self._calls.items()))
        return ProviderResult(
            text="".join(self.text),
            finish_reason=self.finish_reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            request_id=request_id,
            response_id=self.response_id,
            response_model=self.response_model,
            tool_calls=calls,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )

    @staticmethod
    def _tool_call(index: int, call: _Call) -> ToolCall:
        text = "".join(call.args)
        call_id = call.id or f"call_{index}"
        try:
            value = _decode(text) if text.strip() else {}
        except (msgspec.DecodeError, RecursionError):
            value = None
        if isinstance(value, dict):
            return ToolCall(id=call_id, name=call.name, arguments=value)
        return ToolCall(id=call_id, name=call.name, arguments={}, unparsed=text)


def whole_delta(result: ProviderResult) -> StreamDelta:
    """A whole answer as the one delta of its stream: its text, and each tool call in one
    piece (its arguments as JSON text, or as the model wrote them when they were no object)."""
    calls = tuple(
        ToolCallDelta(
            index=i,
            id=c.id,
            name=c.name,
            arguments=c.unparsed if c.unparsed is not None else _encode(c.arguments).decode(),
        )
        for i, c in enumerate(result.tool_calls)
    )
    return StreamDelta(text=result.text, tool_calls=calls)
