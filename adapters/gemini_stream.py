"""Gemini's streamed answer (`models/{model}:streamGenerateContent?alt=sse`), read event by event.

Each `data:` event is one whole `GenerateContentResponse` (the shape `generateContent` answers
with), holding the next piece of the answer: `GeminiAssembler` reads it as the `gemini`
adapter's `parse_result` reads a whole answer, so the stream assembles to the same result.

    text            the first candidate's `text` parts, thought parts (`"thought": true`) left
                    out, each a delta as it comes
    functionCall    Gemini sends each call whole, in one part: one tool-call delta with its id
                    (`call_0`, `call_1`... in the order of the answer's calls, unless Google
                    gave one), its name and its `args` as JSON text
    finishReason    normalised by `answer_finish` ("tool_calls" when the answer called a
                    function); it ends the answer (`complete`). Older models repeat it on every
                    event, so the stream is read until the connection closes: Gemini sends no
                    end marker ([DONE]), and a stream cut before any finishReason is a
                    `ConnectionFailed`
    usageMetadata   each event's counts are the answer's so far: the last one wins
    modelVersion, responseId   the last one given
    promptFeedback.blockReason   the prompt was blocked: `ContentFiltered`, as a whole answer
                    saying so (nothing after it matters: the stream is left)
    {"error": {...}}   an error inside the 2xx stream: `StreamRefused` with the HTTP status
                    its `code` says, classified like an error body

An answer that ends in a safety-type finish with no text and no call is `ContentFiltered`, as
in `parse_result`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from .base import ProviderResult, StreamDelta, Target, ToolCallDelta
from .errors import ProviderError
from .gemini_wire import GenerateResponse, UsageMetadata, answer_finish
from .sse import SSEEvent
from .streaming import Assembler, StreamRefused

__all__ = ["GeminiAssembler", "Refuse"]

Refuse = Callable[[str, str | None], ProviderError]
"""The adapter's `ContentFiltered` for this target: (why, request id) → the error to raise."""


class _Chunk(GenerateResponse):
    """One streamed event: a `GenerateContentResponse`, or Google's error document."""

    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


def _error_status(error: Any) -> int | None:
    """The HTTP status an error event's `code` names (None: classified by its text)."""
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return None


class GeminiAssembler(Assembler):
    """One streamed Gemini answer; `refuse` makes the adapter's `ContentFiltered` error."""

    def __init__(self, target: Target, refuse: Refuse) -> None:
        super().__init__(target)
        self._refuse = refuse
        self._reason: str | None = None  # the finishReason as sent
        self._blocked: str | None = None  # promptFeedback.blockReason
        self._called = 0  # the function calls so far (the next one's index)

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        chunk = _decode_chunk(ev.data)
        if chunk.error is not None:
            raise StreamRefused(ev.data.encode(), _error_status(chunk.error))
        if chunk.response_id is not None:
            self.response_id = chunk.response_id
        if isinstance(chunk.model_version, str):
            self.response_model = chunk.model_version
        if chunk.usage_metadata is not None:
            self._usage(chunk.usage_metadata)
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason:
            self._blocked = feedback.block_reason
            self.complete = self.done = True  # refused whole: `result` raises
            return None
        if not chunk.candidates:
            return None
        candidate = chunk.candidates[0]
        delta = self._parts(candidate.content.parts if candidate.content is not None else [])
        if candidate.finish_reason is not None:
            self._reason = candidate.finish_reason
            self.complete = True
        self.finish_reason = answer_finish(self._reason, self._called > 0)
        return delta

    def _parts(self, parts: list[Any]) -> StreamDelta | None:
        texts: list[str] = []
        calls: list[ToolCallDelta] = []
        for part in parts:
            if part.text and not part.thought:
                self.add_text(part.text)
                texts.append(part.text)
            call = part.function_call
            if call is not None:
                n = self._called
                self._called += 1
                args = "" if call.args is None else _encode(call.args).decode()
                calls.append(
                    self.add_call(n, call_id=call.id or f"call_{n}", name=call.name, args=args)
                )
        if not texts and not calls:
            return None
        return StreamDelta(text="".join(texts), tool_calls=tuple(calls))

    def _usage(self, usage: UsageMetadata) -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cached_input_tokens = usage.cached_content_token_count
        self.reasoning_tokens = usage.thoughts_token_count

    def result(self, request_id: str | None) -> ProviderResult:
        """The whole answer, as `parse_result` gives it: the request id falls back on the
        answer's `responseId`; a blocked prompt, or a safety-type finish with nothing in the
        answer, is the adapter's `ContentFiltered`."""
        request_id = request_id or self.response_id
        if self._blocked is not None:
            raise self._refuse(f"prompt blocked ({self._blocked})", request_id)
        answer = super().result(request_id)
        if answer.finish_reason == "content_filter" and not answer.text and not answer.tool_calls:
            raise self._refuse(f"answer blocked ({self._reason})", request_id)
        return answer
