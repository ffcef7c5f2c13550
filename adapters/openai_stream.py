"""OpenAI's chat-completions stream, read as it arrives; and the answer's parts both forms share.

    OpenAIAssembler    reads `chat.completion.chunk` events: `choices[0].delta.content` text,
                       `delta.tool_calls[]` pieces (by `index`: `id` and `function.name` first,
                       then pieces of `function.arguments`), `finish_reason` (the answer is
                       whole), the usage chunk `stream_options.include_usage` asks for (empty
                       `choices`, `usage` set; some servers put `usage` on the finish chunk),
                       and `data: [DONE]` (stop reading). An `{"error": {...}}` chunk is a
                       `StreamRefused` classified like an error body.
    Usage, usage_counts, normal_finish
                       the answer's usage and finish reason, read the same way by
                       `OpenAICompatibleAdapter.parse_result` and the stream: one reading.

The stream's shape is the API reference's "chat completion chunk object" and the function
calling guide's streaming section (platform.openai.com/docs/api-reference/chat-streaming,
platform.openai.com/docs/guides/function-calling#streaming).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import ProviderResult, StreamDelta, ToolCallDelta
from .sse import SSEEvent
from .streaming import Assembler, StreamRefused

__all__ = ["OpenAIAssembler", "Usage", "error_status", "normal_finish", "usage_counts"]


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


_FINISH = {"function_call": "tool_calls"}  # the deprecated function-calling name


def normal_finish(finish: str | None) -> str | None:
    """The finish reason as the worker names it (`function_call` is `tool_calls`)."""
    return _FINISH.get(finish, finish) if finish is not None else None


def usage_counts(usage: Usage | None) -> tuple[int, int, int, int]:
    """input, output, cached input, reasoning tokens."""
    if usage is None:
        return 0, 0, 0, 0
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return (
        usage.prompt_tokens or 0,
        usage.completion_tokens or 0,
        (prompt.cached_tokens or 0) if prompt is not None else 0,
        (completion.reasoning_tokens or 0) if completion is not None else 0,
    )


# -- the chunk --------------------------------------------------------------------------------


class _ChunkFunction(msgspec.Struct):
    name: Any = None
    arguments: Any = None


class _ChunkCall(msgspec.Struct):
    index: int | None = None
    id: Any = None
    function: _ChunkFunction | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ChunkCall] | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] | None = None
    id: Any = None
    model: Any = None
    usage: Usage | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode
_DONE = "[DONE]"

_STATUS_BY_KIND = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "internal_error": 500,
    "service_unavailable": 503,
    "overloaded_error": 529,
    "overloaded": 529,
}


def error_status(error: Any) -> int | None:
    """The HTTP status an error chunk stands for: its numeric `code` (vLLM sends one), else
    its `code` or `type` as OpenAI names them; None when neither says."""
    if not isinstance(error, dict):
        return None
    code, kind = error.get("code"), error.get("type")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    for tag in (code, kind):
        if isinstance(tag, str) and tag in _STATUS_BY_KIND:
            return _STATUS_BY_KIND[tag]
    return None


class OpenAIAssembler(Assembler):
    """One OpenAI chat-completions stream: each chunk's delta, the finish reason, the usage."""

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        if ev.data.strip() == _DONE:
            self.done = True  # complete only if a finish_reason came before it
            return None
        chunk = _decode_chunk(ev.data)
        if chunk.error is not None:
            raise StreamRefused(ev.data.encode(), error_status(chunk.error))
        if isinstance(chunk.id, str) and chunk.id and self.response_id is None:
            self.response_id = chunk.id
        if isinstance(chunk.model, str) and chunk.model and self.response_model is None:
            self.response_model = chunk.model
        if chunk.usage is not None:
            counts = usage_counts(chunk.usage)
            self.input_tokens, self.output_tokens = counts[0], counts[1]
            self.cached_input_tokens, self.reasoning_tokens = counts[2], counts[3]
        if not chunk.choices:
            return None  # the usage chunk, or Azure's prompt_filter_results
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            self.finish_reason = normal_finish(choice.finish_reason)
            self.complete = True
        delta = choice.delta
        if delta is None:
            return None
        text = delta.content or ""
        if text:
            self.text.append(text)
        calls = tuple(self._piece(i, c) for i, c in enumerate(delta.tool_calls or ()))
        if not (text or calls):
            return None
        return StreamDelta(text=text, tool_calls=calls)

    def _piece(self, position: int, call: _ChunkCall) -> ToolCallDelta:
        function = call.function or _ChunkFunction()
        args = function.arguments
        if args is not None and not isinstance(args, str):
            args = _encode(args).decode()  # an object where OpenAI sends JSON text
        return self.add_call(
            call.index if call.index is not None else position,
            call_id=call.id if isinstance(call.id, str) else None,
            name=function.name if isinstance(function.name, str) else None,
            args=args or "",
        )

    def result(self, request_id: str | None) -> ProviderResult:
        """As `parse_result`: without a request id header, the answer's own id stands in."""
        return super().result(request_id or self.response_id)
