"""Anthropic's answer read as its event stream, and what reading it whole shares with that.

With `"stream": true` the Messages API answers in server-sent events (docs.anthropic.com /
platform.claude.com, "Streaming Messages"):

    message_start        the message with empty content: its id, model and usage so far
                         (input_tokens, the cache fields, a first output_tokens)
    content_block_start  block `index` begins: `text`, `tool_use` (id, name, input {}),
                         `thinking`, a server tool's block...
    content_block_delta  a piece of block `index`: `text_delta` (text), `input_json_delta`
                         (a piece of the tool's input JSON), `thinking_delta`,
                         `signature_delta`, `citations_delta`
    content_block_stop   block `index` is whole
    message_delta        `delta.stop_reason` and cumulative `usage` (output_tokens, and on
                         newer models the input and cache counts again)
    message_stop         the answer is whole
    ping                 keep-alive
    error                `{"type": "error", "error": {"type": "overloaded_error", ...}}`: the
                         answer failed mid-stream

The reader keeps what `AnthropicAdapter.parse_result` keeps of the whole answer: text blocks
joined, `tool_use` blocks as tool calls (numbered 0.. in the order they start), thinking and
other blocks skipped; usage counted as `counts` counts it, the stop reason mapped as `finish`
maps it. Event types it does not know are skipped (Anthropic may add some). A forced JSON tool
(no native structured outputs) is the answer's text, as `json_answer` makes it of a whole
answer: its input pieces are given as text deltas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import ProviderResult, StreamDelta, Target
from .sse import SSEEvent
from .streaming import Assembler, StreamRefused

__all__ = [
    "ERROR_STATUS",
    "STOP_REASONS",
    "AnthropicAssembler",
    "Usage",
    "counts",
    "finish",
    "json_answer",
]

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic's `stop_reason` → the contract's finish reason (others pass as they are)."""

ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each error type of Anthropic's errors page stands for (an error event in a
stream has no status of its own)."""

_encode = msgspec.json.Encoder().encode


class Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


def finish(reason: str | None) -> str | None:
    return STOP_REASONS.get(reason, reason) if reason is not None else None


def counts(usage: Usage) -> tuple[int, int, int, int]:
    """(input, output, cached, cache-written) tokens. Anthropic's input_tokens leaves out what
    was read from or written to the cache; the contract counts both inside input_tokens
    (cached_input_tokens is a part of it)."""
    cached = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return (usage.input_tokens or 0) + cached + written, usage.output_tokens or 0, cached, written


def json_answer(result: ProviderResult, name: str) -> ProviderResult:
    """The forced JSON tool's input moved from `tool_calls` to `text`."""
    for index, call in enumerate(result.tool_calls):
        if call.name == name:
            text = (
                call.unparsed
                if call.unparsed is not None
                else str(_encode(call.arguments), "utf-8")
            )
            rest = result.tool_calls[:index] + result.tool_calls[index + 1 :]
            reason = result.finish_reason
            if reason == "tool_calls" and not rest:
                reason = "stop"
            return msgspec.structs.replace(result, text=text, tool_calls=rest, finish_reason=reason)
    return result


# -- the events ---------------------------------------------------------------------------------


class _Start(msgspec.Struct):
    id: str | None = None
    model: Any = None  # informational: never fail an answer over it
    usage: Usage | None = None


class _Block(msgspec.Struct):
    type: str
    id: str | None = None
    name: str | None = None
    text: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str
    index: int | None = None
    message: _Start | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: Usage | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_JSON = -1
"""The call index the forced JSON tool's input is kept at (first in the calls, where
`json_answer` finds it before any the model made; its pieces are given as text)."""


class AnthropicAssembler(Assembler):
    """One streamed Messages answer. `json_tool`: the name of the forced tool a JSON answer
    travels in (None: no such tool was sent)."""

    def __init__(self, target: Target, json_tool: str | None = None) -> None:
        super().__init__(target)
        self.json_tool = json_tool
        self._usage = Usage()
        self._blocks: dict[int, int] = {}  # tool_use block index → tool-call index (or _JSON)
        self._calls_made = 0
        self._json_seen = False

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        if ev.event == "error":
            self._refuse(ev.data)
        event = _decode_event(ev.data)
        kind = event.type
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_start":
            return self._block(event)
        if kind == "message_start":
            start = event.message
            if start is not None:
                self.response_id = start.id
                self.response_model = start.model if isinstance(start.model, str) else None
                self._count(start.usage)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason is not None:
                self.finish_reason = finish(event.delta.stop_reason)
            self._count(event.usage)
        elif kind == "message_stop":
            self.complete = self.done = True
        elif kind == "error":
            self._refuse(ev.data)
        return None  # ping, content_block_stop, and types this reader does not know

    def result(self, request_id: str | None) -> ProviderResult:
        """The whole answer as `parse_result` and `complete` give it: the response id stands
        for a missing request id, and a forced JSON tool's input is the text."""
        result = super().result(request_id or self.response_id)
        return result if self.json_tool is None else json_answer(result, self.json_tool)

    # -- the parts ------------------------------------------------------------------------------

    def _refuse(self, data: str) -> None:
        """An error event: the answer failed; raised with the status its type stands for."""
        kind = None
        try:
            doc = msgspec.json.decode(data)
            error = doc.get("error") if isinstance(doc, dict) else None
            kind = error.get("type") if isinstance(error, dict) else None
        except msgspec.DecodeError:
            pass
        status = ERROR_STATUS.get(kind) if isinstance(kind, str) else None
        raise StreamRefused(data.encode(), status)

    def _block(self, event: _Event) -> StreamDelta | None:
        block, index = event.content_block, event.index
        if block is None or index is None:
            raise ValueError("content_block_start without its index or block")
        if block.type == "text":
            return self.add_text(block.text or "")
        if block.type != "tool_use":
            return None  # thinking and server tools' blocks: not part of the answer
        name = block.name or ""
        if name == self.json_tool and not self._json_seen:
            self._json_seen = True
            self._blocks[index] = _JSON
            self.add_call(_JSON, call_id=block.id or "", name=name)
            return None
        call = self._blocks[index] = self._calls_made
        self._calls_made += 1
        delta = self.add_call(call, call_id=block.id or "", name=name)
        return StreamDelta(tool_calls=(delta,))

    def _delta(self, event: _Event) -> StreamDelta | None:
        delta, index = event.delta, event.index
        if delta is None or index is None:
            raise ValueError("content_block_delta without its index or delta")
        if delta.type == "text_delta":
            return self.add_text(delta.text or "")
        if delta.type != "input_json_delta" or not delta.partial_json:
            return None  # thinking, signatures, citations: not part of the answer
        call = self._blocks.get(index)
        if call is None:
            return None  # a server tool's input
        piece = self.add_call(call, args=delta.partial_json)
        if call == _JSON:
            return StreamDelta(text=delta.partial_json)  # the answer's text, as it will be
        return StreamDelta(tool_calls=(piece,))

    def _count(self, usage: Usage | None) -> None:
        """Usage so far: message_delta's counts are cumulative and replace what they say."""
        if usage is None:
            return
        mine = self._usage
        for field in Usage.__struct_fields__:
            value = getattr(usage, field)
            if value is not None:
                setattr(mine, field, value)
        self.input_tokens, self.output_tokens, cached, written = counts(mine)
        self.cached_input_tokens, self.cache_write_tokens = cached, written
