"""Hugging Face TGI's event streams, read as they arrive: `/generate_stream` and the Messages API.

    GenerateStream    TGI's native `POST /generate_stream` (its API reference, docs/openapi.json
                      `StreamResponse`; the streaming guide,
                      https://huggingface.co/docs/text-generation-inference/conceptual/streaming).
                      Each `data:` is `{"index", "token": {"id", "text", "logprob", "special"},
                      "generated_text": null, "details": null}`; the last one carries
                      `generated_text` and `details` (`finish_reason`, `generated_tokens`,
                      `input_length`, `seed`). A special token (`</s>`, `<|eot_id|>`) is not
                      text. An error is one event `{"error": "...", "error_type": "..."}`.
    ChatStream        the Messages API with `"stream": true` (TGI's `/v1/chat/completions`, the
                      Inference Providers router): OpenAI's `chat.completion.chunk` events, then
                      `data: [DONE]`. TGI's chunks have `"id": ""`, text in `delta.content`, a
                      tool call as `delta.tool_calls` pieces (index 0, id "0", the name in the
                      first piece, the arguments' JSON text spread over the rest; TGI 2.x sent
                      one object rather than a list), `finish_reason` on the last token's chunk
                      and, asked with `stream_options.include_usage`, a `choices: []` chunk with
                      `usage` before `[DONE]`. An error is `{"error": {"message",
                      "http_status_code"}}` (TGI) or OpenAI's `{"error": {"message", "type"}}`.
                      Not unwrapped: TGI before 3.2 streamed a tool call's arguments as its
                      grammar's raw output (`{"function": {"_name": ..., ...}}` and the end
                      token's text); such arguments stay unparsed, for the output check.

What the text is, for `/generate_stream`: TGI's answer is `generated_text` (what `/generate`
returns). The tokens' texts are TGI's incremental decoding of the same tokens, so they normally
join to exactly `generated_text`; when `generated_text` goes on past what they joined to (an end
the incremental decoder held back), the rest is given as one last delta. When it says something
else (a tokenizer's clean-up rewrote text already streamed), the streamed text stands: a delta
cannot be taken back, and the answer must be the sum of its deltas.

Token counts, for `/generate_stream`: `details.generated_tokens` and `details.input_length`
(the number `/generate` sends as its `x-prompt-tokens` header). The stream's response has no
such headers; a TGI too old to send `input_length` gives 0 input tokens.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .base import ProviderResult, StreamDelta, Target, ToolCallDelta
from .sse import SSEEvent
from .streaming import Assembler, StreamRefused, decode_event

__all__ = ["ChatStream", "GenerateStream", "finish_reason", "status_for"]

# TGI says `eos_token` / `stop_sequence` (its chat form said `eos_token` up to 2.x, `stop` since)
_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}

# TGI's `error_type` → the HTTP status TGI answers it with when it is not streaming
# (router/src/server.rs `From<InferError> for (StatusCode, ...)`; docs/openapi.json lists
# 422 validation, 424 generation, 429 overloaded, 500 incomplete_generation)
_STATUS = {
    "validation": 422,
    "template_error": 422,
    "missing_template_variable": 422,
    "tool_error": 422,
    "generation": 424,
    "overloaded": 429,
    "incomplete_generation": 500,
    "incomplete_generation_stream": 500,
    "stream_serialization_error": 500,
}

_encode = msgspec.json.Encoder().encode


def finish_reason(reason: str | None, called: bool) -> str | None:
    """stop | length | tool_calls | content_filter: TGI ends a tool call with `eos_token` or
    `stop`, which for an answer that calls tools is `tool_calls`."""
    if reason is None:
        return None
    normal = _FINISH.get(reason, reason)
    return "tool_calls" if called and normal == "stop" else normal


def status_for(error: dict[str, Any]) -> int | None:
    """The status an error event stands for: TGI's `error_type`, or the `http_status_code` its
    Messages API puts in the error object (None: classified by its text, as a 500)."""
    kind = error.get("error_type")
    if isinstance(kind, str) and kind in _STATUS:
        return _STATUS[kind]
    inner = error.get("error")
    code = inner.get("http_status_code") if isinstance(inner, dict) else None
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return None


def _doc(ev: SSEEvent) -> dict[str, Any]:
    """The event's JSON object; an error event raises `StreamRefused`."""
    doc = decode_event(ev.data)
    if not isinstance(doc, dict):
        raise TypeError(f"a TGI event is a JSON object, not {type(doc).__name__}")
    if doc.get("error") is not None:
        raise StreamRefused(ev.data.encode(), status_for(doc))
    return doc


def _obj(value: Any, what: str) -> dict[str, Any]:
    """`value` when it is a JSON object (absent: an empty one); else a malformed stream."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not a JSON object")
    return value


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class GenerateStream(Assembler):
    """TGI's `/generate_stream`: one event per token, the answer whole in the last one."""

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        doc = _doc(ev)
        token = _obj(doc["token"], "token")
        text = token["text"]
        if not isinstance(text, str):
            raise TypeError("token.text is not a string")
        delta = None if token.get("special") is True else self.add_text(text)
        generated = doc.get("generated_text")
        details = doc.get("details")
        if generated is None and details is None:
            return delta
        # the last event: the whole text, why it ended, the token counts
        if generated is not None:
            if not isinstance(generated, str):
                raise TypeError("generated_text is not a string")
            rest = self._rest(generated)
            if rest:
                joined = (delta.text if delta is not None else "") + rest
                self.text.append(rest)
                delta = StreamDelta(text=joined)
        if isinstance(details, dict):
            reason = details.get("finish_reason")
            self.finish_reason = finish_reason(reason if isinstance(reason, str) else None, False)
            self.output_tokens = _count(details.get("generated_tokens"))
            self.input_tokens = _count(details.get("input_length"))
        self.complete = self.done = True
        return delta

    def _rest(self, generated: str) -> str:
        """What `generated_text` adds past the tokens' texts ("" when it adds nothing or says
        something else: the streamed text stands)."""
        joined = "".join(self.text)
        return generated[len(joined) :] if generated.startswith(joined) else ""


class ChatStream(Assembler):
    """The Messages API's chunks: text and tool-call pieces, the finish reason, usage."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._reason: str | None = None
        self._called = False

    def event(self, ev: SSEEvent) -> StreamDelta | None:
        if ev.data.strip() == "[DONE]":
            # TGI (3.2+) sends no finish_reason after a tool call: [DONE] says it is whole
            self._settle()
            self.complete = self.done = True
            return None
        doc = _doc(ev)
        ident, model = doc.get("id"), doc.get("model")
        if isinstance(ident, str) and ident:
            self.response_id = ident
        if isinstance(model, str) and model:
            self.response_model = model
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        choices = doc.get("choices") or []
        if not isinstance(choices, list):
            raise TypeError("choices is not a list")
        if not choices:
            return None
        return self._choice(_obj(choices[0], "choices[0]"))

    def _choice(self, choice: dict[str, Any]) -> StreamDelta | None:
        delta = _obj(choice.get("delta"), "delta")
        content = delta.get("content")
        text = self.add_text(content) if isinstance(content, str) else None
        calls = self._calls_in(delta.get("tool_calls"))
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self._reason = reason
            self._settle()
            self.complete = True
        if not calls:
            return text
        return StreamDelta(text=text.text if text is not None else "", tool_calls=calls)

    def _calls_in(self, wire: Any) -> tuple[ToolCallDelta, ...]:
        if wire is None:
            return ()
        pieces = wire if isinstance(wire, list) else [wire]  # TGI 2.x: one object
        out: list[ToolCallDelta] = []
        for position, wire_piece in enumerate(pieces):
            piece = _obj(wire_piece, "tool_calls[]")
            index = piece.get("index", position)
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError("tool_calls[].index is not an integer")
            ident = piece.get("id")
            function = _obj(piece.get("function"), "tool_calls[].function")
            name = function.get("name")
            args = function.get("arguments")
            if args is not None and not isinstance(args, str):
                args = _encode(args).decode()  # an object, as TGI before 3.2 answered whole
            out.append(
                self.add_call(
                    index,
                    call_id=str(ident) if isinstance(ident, str | int) and ident != "" else None,
                    name=name if isinstance(name, str) else None,
                    args=args or "",
                )
            )
        self._called = self._called or bool(out)
        return tuple(out)

    def _usage(self, usage: dict[str, Any]) -> None:
        self.input_tokens = _count(usage.get("prompt_tokens"))
        self.output_tokens = _count(usage.get("completion_tokens"))
        cached = usage.get("prompt_tokens_details")
        if isinstance(cached, dict):
            self.cached_input_tokens = _count(cached.get("cached_tokens"))
        reasoning = usage.get("completion_tokens_details")
        if isinstance(reasoning, dict):
            self.reasoning_tokens = _count(reasoning.get("reasoning_tokens"))

    def _settle(self) -> None:
        """The finish reason as `parse_result` gives it: normalised, `tool_calls` when the
        answer called tools (also when TGI sent none after the call)."""
        if self._reason is not None:
            self.finish_reason = finish_reason(self._reason, self._called)
        elif self._called:
            self.finish_reason = "tool_calls"

    def result(self, request_id: str | None) -> ProviderResult:
        """The whole answer; the request id falls back to the chunks' `id`, as it does for
        the answer parsed whole."""
        return super().result(request_id or self.response_id)
