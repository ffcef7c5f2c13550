"""The fake provider speaking Anthropic's Messages API (`POST /v1/messages`).

Routes (beside the OpenAI ones of `fake_provider`, on the same profiles):

    POST /anthropic/v1/messages            POST /{profile}/anthropic/v1/messages

A target reaches it with provider `anthropic` and endpoint `{server}/anthropic` (or
`{server}/{profile}/anthropic`); the adapter appends `/v1/messages`.

The profile machinery is `FakeProvider`'s (`serve` and `deliver`): the same profiles and
settings (latency, jitter, error_rate, max_concurrency, the `fake_faults` rates), the same
counters and the same `Call` log (its `authorization` is the `x-api-key` header, `body` the
request). Only the wire differs:

- The answer is `"[fake:{model}] " + <last user text>` in one `text` block, cut at the first
  stop sequence (`stop_reason` "stop_sequence") and to `max_tokens` words ("max_tokens").
- A `tool_result` in the last user turn: the text is `"[fake:{model}] tool result: " + its
  content` instead.
- A `tool_use` block (`stop_reason` "tool_use") when tools are given and `tool_choice` is `any`
  or `tool` (that tool), or `auto`/absent and the last user text contains "tool" (the first
  tool); its `input` is generated from the tool's `input_schema` (`fake_wire.example_for`,
  shared with the OpenAI fake).
- `output_config.format` `{"type": "json_schema", "schema"}`: the text is a JSON document
  generated from the schema.
- With probability `invalid_output_rate` a JSON answer is "not json {" and a tool's `input`
  that string (no object).
- Usage counts words: `input_tokens` (system and messages), `output_tokens`.
- `"stream": true`: the same answer as Anthropic's event stream (`FakeProvider.deliver_stream`,
  so `token_delay_ms` and `stream_break_after` apply): `message_start` (input usage),
  `content_block_start`, one `text_delta` per word (with its leading space: the deltas join to
  the text) or `input_json_delta` pieces of a tool's input, `content_block_stop`,
  `message_delta` (stop_reason, output usage), `message_stop`, each with its `event:` line.
- Errors are Anthropic's `{"type": "error", "error": {"type", "message"}}`; a body without
  `model`, `max_tokens` or `messages` is a 400, as Anthropic answers it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from llm_worker.devkit.fake_provider import Call, FakeProvider, Profile, sse
from llm_worker.devkit.fake_wire import example_for

__all__ = ["FakeAnthropic", "anthropic_error"]

_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_BROKEN = "not json {"  # a JSON answer or tool input that is invalid (`invalid_output_rate`)


class _Turn(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]]


class _Request(msgspec.Struct):
    model: str
    max_tokens: int
    messages: list[_Turn]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    stream: bool = False


_decode = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


def _text(content: Any) -> str:
    """The text of a turn's content (a string or blocks); tool results are not text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return " ".join(t for t in texts if isinstance(t, str))


def _tool_results(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [
        _text(b.get("content"))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_result"
    ]


def _chosen_tool(body: _Request, last_text: str) -> dict[str, Any] | None:
    """The tool the fake calls, or None (answer in text)."""
    tools = [t for t in body.tools or () if isinstance(t, dict)]
    if not tools:
        return None
    kind = (body.tool_choice or {}).get("type", "auto")
    if kind == "tool":
        name = (body.tool_choice or {}).get("name")
        return next((t for t in tools if t.get("name") == name), None)
    if kind == "any" or (kind == "auto" and "tool" in last_text.lower()):
        return tools[0]
    return None


def _cut(text: str, stops: list[str] | None) -> tuple[str, str | None]:
    for stop in stops or ():
        at = text.find(stop) if stop else -1
        if at >= 0:
            return text[:at], stop
    return text, None


def _message(body: _Request, number: int, broken: Callable[[], bool]) -> dict[str, Any]:
    """The Messages API answer to `body`; `broken()` says whether a JSON answer or a tool's
    input is to be invalid (`invalid_output_rate`)."""
    last = body.messages[-1] if body.messages else _Turn("user", "")
    last_text = _text(last.content) if last.role == "user" else ""
    words_in = len(_text(body.system).split()) + sum(
        len(_text(t.content).split()) for t in body.messages
    )
    tool = _chosen_tool(body, last_text)
    stop_sequence = None
    if tool is not None:
        arguments = _BROKEN if broken() else example_for(tool.get("input_schema"))
        block = {"type": "tool_use", "id": f"toolu_fake_{number}", "name": tool.get("name")}
        content: list[dict[str, Any]] = [{**block, "input": arguments}]
        reason, words_out = "tool_use", len(str(_encode(arguments), "utf-8").split())
    else:
        text, reason = _answer_text(body, last, last_text, broken)
        text, stop_sequence = _cut(text, body.stop_sequences)
        if stop_sequence is not None:
            reason = "stop_sequence"
        words = text.split()
        if len(words) > body.max_tokens:
            text, reason = " ".join(words[: max(body.max_tokens, 0)]), "max_tokens"
        words_out = len(text.split())
        content = [{"type": "text", "text": text}]
    return {
        "id": f"msg_fake_{number}",
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": words_in, "output_tokens": words_out},
    }


def _answer_text(
    body: _Request, last: _Turn, last_text: str, broken: Callable[[], bool]
) -> tuple[str, str]:
    fmt = (body.output_config or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if broken():
            return _BROKEN, "end_turn"
        return str(_encode(example_for(fmt.get("schema"))), "utf-8"), "end_turn"
    results = _tool_results(last.content) if last.role == "user" else []
    if results:
        return f"[fake:{body.model}] tool result: {' '.join(results)}", "end_turn"
    return f"[fake:{body.model}] {last_text}", "end_turn"


_WORD = re.compile(r"\s*\S+|\s+$")  # a word with the spaces before it; trailing spaces
_JSON_PIECE = re.compile(r"[^,:]+[,:]?|[,:]")  # JSON text cut after each `,` and `:`


def _event(data: dict[str, Any]) -> bytes:
    """One event, named by its data's type (Anthropic names every event)."""
    return sse(data, data["type"])


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """One content block as its start, deltas and stop events."""
    if block["type"] == "tool_use":
        start = {**block, "input": {}}
        pieces = ["", *_JSON_PIECE.findall(str(_encode(block["input"]), "utf-8"))]
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    else:
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in _WORD.findall(block["text"])]
    return [
        _event({"type": "content_block_start", "index": index, "content_block": start}),
        *(_event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas),
        _event({"type": "content_block_stop", "index": index}),
    ]


def _stream_events(message: dict[str, Any]) -> list[bytes]:
    """A Messages answer as Anthropic streams it (its "Streaming Messages" event flow): the
    input usage first, the output usage and stop reason at the end."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    events = [_event({"type": "message_start", "message": start}), _event({"type": "ping"})]
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    output = {"output_tokens": usage["output_tokens"]}
    events.append(_event({"type": "message_delta", "delta": delta, "usage": output}))
    events.append(_event({"type": "message_stop"}))
    return events


def anthropic_error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    """An error body in Anthropic's shape (a `fake_provider.Refuse`)."""
    error = {"type": _KINDS.get(status, "api_error"), "message": message}
    body = {"type": "error", "error": error}
    return web.Response(status=status, body=_encode(body), content_type="application/json")


class FakeAnthropic:
    """The `/anthropic/v1/messages` handler over a `FakeProvider`'s profiles and log."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    def answer(self, raw: bytes, profile: Profile) -> dict[str, Any]:
        """The message the Messages route answers the body `raw` with (under a new request
        number, without latency or injected faults): what the batch endpoints answer each
        request with (`fake_batch`). msgspec.DecodeError for a body the route refuses (400)."""
        provider = self.provider
        body = _decode(raw)
        return _message(body, provider.next_number(), lambda: provider.invalid_output(profile))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        api_key = request.headers.get("x-api-key")
        return await self.provider.serve(request, api_key, self._answer, anthropic_error)

    async def _answer(
        self, request: web.Request, profile: Profile, call: Call
    ) -> web.StreamResponse:
        call.raw = await request.read()
        try:
            body = _decode(call.raw)
        except msgspec.DecodeError as exc:
            profile.errors += 1
            return anthropic_error(400, f"invalid request body: {exc}")
        call.model = body.model
        users = [t for t in body.messages if t.role == "user"]
        call.text = _text(users[-1].content) if users else ""
        provider = self.provider

        def broken() -> bool:
            return provider.invalid_output(profile)

        if body.stream:

            def events(number: int) -> list[bytes]:
                return _stream_events(_message(body, number, broken))

            headers = {"request-id": "req_fake_{number}"}
            return await provider.deliver_stream(
                request, profile, call, events, anthropic_error, headers
            )

        def make(number: int) -> web.Response:
            return web.Response(
                body=_encode(_message(body, number, broken)),
                content_type="application/json",
                headers={"request-id": f"req_fake_{number}"},
            )

        return await self.provider.deliver(request, profile, call, make, anthropic_error)
