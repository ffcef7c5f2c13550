"""The fake provider speaking Google's Gemini API (`models/{model}:generateContent`).

Routes (beside the OpenAI ones of `fake_provider`, on the same profiles):

    POST /gemini/v1beta/models/{model}:generateContent
    POST /{profile}/gemini/v1beta/models/{model}:generateContent
    POST /gemini/v1beta/models/{model}:streamGenerateContent?alt=sse
    POST /{profile}/gemini/v1beta/models/{model}:streamGenerateContent?alt=sse

A target reaches it with provider `gemini` and endpoint `{server}/gemini` (or
`{server}/{profile}/gemini`: `gemini_endpoint`); the adapter appends
`/v1beta/models/{model}:generateContent`.

The profile machinery is `FakeProvider`'s (`FakeProvider.serve` and `deliver`): the same
profiles and settings (latency, jitter, error_rate, max_concurrency, the `fake_faults` rates),
counters and `Call` log (its `authorization` is the `x-goog-api-key` header). Only the wire
differs:

- The answer is one candidate whose text is `"[fake:{model}] " + <last user text>`, cut at the
  first of `stopSequences` and to `maxOutputTokens` words (finishReason "MAX_TOKENS", else
  "STOP").
- A `functionResponse` part in the last turn: the text is `"[fake:{model}] tool result: "` and
  the responses (as JSON) instead.
- A `functionCall` part when `functionDeclarations` are given and the function calling mode is
  ANY (the first of `allowedFunctionNames`, else the first function), or AUTO/absent and the
  last user text contains the word "tool" (the first function). Its `args` are generated from
  the declaration's `parametersJsonSchema` (or `parameters`, Google's OpenAPI subset) by
  `fake_wire.example_for`, shared with the other fakes.
- `responseMimeType` "application/json": the text is JSON valid for `responseJsonSchema` (or
  `responseSchema`), or `{"answer": <the text>}` without a schema.
- With probability `invalid_output_rate` such an answer is broken: "not json {" as the JSON
  text, "not json" (a string, no object) as a function call's `args`.
- `usageMetadata` counts words: promptTokenCount (system instruction and contents),
  candidatesTokenCount, totalTokenCount; `responseId` and `modelVersion` are set.
- Errors are Google's `{"error": {"code", "message", "status"}}` (a 429 carries a `RetryInfo`
  detail as well as `Retry-After`); a body without `contents` is a 400 INVALID_ARGUMENT.

`:streamGenerateContent?alt=sse` answers the same request with the same answer, as server-sent
events (`FakeProvider.deliver_stream`: `token_delay_ms` between events, `stream_break_after`
cuts the connection), each a `GenerateContentResponse` with `modelVersion` and `responseId`:
one event per word of the text (each word with the spaces after it, so the parts join to the
whole text), a function call in one event; the last event carries the `finishReason` and the
`usageMetadata`. Without `alt=sse` (Google would stream one JSON array) it is a 400.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from llm_worker.devkit.fake_provider import (
    INVALID_ARGUMENTS,
    INVALID_JSON,
    Call,
    FakeProvider,
    Profile,
    sse,
)
from llm_worker.devkit.fake_wire import example_for

__all__ = ["FakeGemini", "add_gemini_routes", "gemini_endpoint", "google_error", "stream_events"]

_PATH = "/gemini/v1beta/models/{model}:generateContent"
_STREAM_PATH = "/gemini/v1beta/models/{model}:streamGenerateContent"
_WORDS = re.compile(r"\S+\s*|\s+")  # a word and the spaces after it (leading spaces alone)
_TOOL_WORD = re.compile(r"\btool\b", re.IGNORECASE)
_JSON = "application/json"
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _Content(msgspec.Struct):
    parts: list[Any] = []
    role: str | None = None


class _Request(msgspec.Struct, rename="camel"):
    contents: list[_Content]
    system_instruction: _Content | None = None
    generation_config: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_config: dict[str, Any] | None = None


_decode = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.Encoder().encode


def gemini_endpoint(server_url: str, profile: str = "default") -> str:
    """The endpoint a `gemini` target uses to reach `profile` of the fake at `server_url`."""
    return f"{server_url}/gemini" if profile == "default" else f"{server_url}/{profile}/gemini"


def add_gemini_routes(app: web.Application, provider: FakeProvider, profile: str) -> None:
    """Register the generateContent routes (`profile` is the route's `{profile:...}` part)."""
    fake = FakeGemini(provider)
    for path, handler in ((_PATH, fake.generate), (_STREAM_PATH, fake.stream)):
        app.router.add_post(path, handler)
        app.router.add_post(f"/{profile}{path}", handler)


def google_error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    """An error in Google's shape (`google.rpc.Status`)."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS.get(status, "UNKNOWN" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if status == 429 and retry_after_s is not None:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo"}
        error["details"] = [{**retry, "retryDelay": f"{retry_after_s:g}s"}]
    return web.Response(status=status, body=_encode({"error": error}), content_type=_JSON)


def _field(doc: Any, camel: str) -> Any:
    """`doc[camel]`, or its snake_case spelling (proto JSON takes both)."""
    if not isinstance(doc, dict):
        return None
    if camel in doc:
        return doc[camel]
    return doc.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel))


def _texts(content: _Content | None) -> str:
    if content is None:
        return ""
    texts = [_field(p, "text") for p in content.parts]
    return " ".join(t for t in texts if isinstance(t, str))


def _responses(content: _Content) -> list[Any]:
    found = (_field(p, "functionResponse") for p in content.parts)
    return [r for r in found if isinstance(r, dict)]


def _declarations(tools: list[Any] | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for tool in tools or ():
        for declaration in _field(tool, "functionDeclarations") or ():
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                found.append(declaration)
    return found


def _lowered(schema: Any) -> Any:
    """Google's OpenAPI-subset schema ("OBJECT", "STRING") with JSON Schema's type names."""
    if isinstance(schema, list):
        return [_lowered(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _lowered(v) if k != "enum" else v for k, v in schema.items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    return out


def _function_to_call(body: _Request, last_user: str) -> dict[str, Any] | None:
    declarations = _declarations(body.tools)
    if not declarations or (body.contents and _responses(body.contents[-1])):
        return None
    config = _field(body.tool_config, "functionCallingConfig")
    mode = str(_field(config, "mode") or "AUTO").upper()
    if mode == "ANY":
        allowed = _field(config, "allowedFunctionNames") or []
        wanted = allowed[0] if allowed else declarations[0]["name"]
        return next((d for d in declarations if d["name"] == wanted), declarations[0])
    if mode in ("AUTO", "MODE_UNSPECIFIED") and _TOOL_WORD.search(last_user):
        return declarations[0]
    return None


def _text_answer(
    body: _Request, model: str, last_user: str, broken: Callable[[], bool]
) -> tuple[str, str]:
    """The candidate's text and finishReason."""
    text = f"[fake:{model}] {last_user}"
    responses = _responses(body.contents[-1]) if body.contents else []
    if responses:
        said = " ".join(_encode(_field(r, "response")).decode() for r in responses)
        text = f"[fake:{model}] tool result: {said}"
    config = body.generation_config or {}
    if _field(config, "responseMimeType") == _JSON:
        schema = _field(config, "responseJsonSchema")
        if schema is None and _field(config, "responseSchema") is not None:
            schema = _lowered(_field(config, "responseSchema"))
        if broken():
            return INVALID_JSON, "STOP"
        value = example_for(schema) if isinstance(schema, dict) else {"answer": text}
        return _encode(value).decode(), "STOP"
    for stop in _field(config, "stopSequences") or ():
        cut = text.find(stop) if isinstance(stop, str) and stop else -1
        if cut >= 0:
            text = text[:cut]
    limit = _field(config, "maxOutputTokens")
    words = text.split()
    if isinstance(limit, int) and len(words) > limit:
        return " ".join(words[: max(limit, 0)]), "MAX_TOKENS"
    return text, "STOP"


def generate_content(
    body: _Request, model: str, number: int, broken: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """The generateContent answer to `body`; `broken()` says whether a JSON answer or a
    function call's args are to be invalid (`invalid_output_rate`)."""
    users = [c for c in body.contents if c.role in (None, "user") and _texts(c)]
    last_user = _texts(users[-1]) if users else ""
    prompt_words = len(_texts(body.system_instruction).split()) + sum(
        len(_texts(c).split()) for c in body.contents
    )
    function = _function_to_call(body, last_user)
    if function is not None:
        schema = function.get("parametersJsonSchema")
        if schema is None:
            schema = _lowered(function.get("parameters"))
        args: Any = example_for(schema) if isinstance(schema, dict) else {}
        if broken():
            args = INVALID_ARGUMENTS  # no object: the adapter keeps it as `unparsed`
        part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": args}}
        finish, out_words = "STOP", len(_encode(args).decode().split())
    else:
        text, finish = _text_answer(body, model, last_user, broken)
        part, out_words = {"text": text}, len(text.split())
    candidate = {
        "content": {"role": "model", "parts": [part]},
        "finishReason": finish,
        "index": 0,
    }
    usage = {
        "promptTokenCount": prompt_words,
        "candidatesTokenCount": out_words,
        "totalTokenCount": prompt_words + out_words,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": f"fake-{number}",
    }


def stream_events(answer: dict[str, Any]) -> list[bytes]:
    """The generateContent `answer` as the events of its stream: its text one word per event
    (the words joined are the text), a function call in one event; the last event carries the
    finishReason and the usageMetadata, every event the modelVersion and responseId."""
    candidate = answer["candidates"][0]
    part = candidate["content"]["parts"][0]
    pieces: list[dict[str, Any]] = [part]
    if "text" in part:
        pieces = [{"text": word} for word in _WORDS.findall(part["text"])] or [part]
    events: list[bytes] = []
    for n, piece in enumerate(pieces, 1):
        chunk: dict[str, Any] = {"content": {"role": "model", "parts": [piece]}, "index": 0}
        event: dict[str, Any] = {"candidates": [chunk]}
        if n == len(pieces):
            chunk["finishReason"] = candidate["finishReason"]
            event["usageMetadata"] = answer["usageMetadata"]
        event["modelVersion"] = answer["modelVersion"]
        event["responseId"] = answer["responseId"]
        events.append(sse(event))
    return events


_Handle = Callable[[web.Request, Profile, Call, _Request], Awaitable[web.StreamResponse]]


class FakeGemini:
    """The generateContent handlers over a `FakeProvider`'s profiles and log."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def generate(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key")
        return await self.provider.serve(request, key, self._reading(self._answer), google_error)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key")
        return await self.provider.serve(request, key, self._reading(self._stream), google_error)

    def _reading(
        self, handle: _Handle
    ) -> Callable[[web.Request, Profile, Call], Awaitable[web.StreamResponse]]:
        """An answerer (for `serve`) that reads and logs the request, then `handle`s it."""

        async def answer(request: web.Request, profile: Profile, call: Call) -> web.StreamResponse:
            call.raw = await request.read()
            try:
                body = _decode(call.raw)
            except msgspec.DecodeError as exc:
                profile.errors += 1
                return google_error(400, f"Invalid JSON payload received. {exc}")
            call.model = request.match_info["model"]
            users = [c for c in body.contents if c.role in (None, "user") and _texts(c)]
            call.text = _texts(users[-1]) if users else ""
            return await handle(request, profile, call, body)

        return answer

    def _content(self, body: _Request, profile: Profile, call: Call, number: int) -> dict[str, Any]:
        broken = lambda: self.provider.invalid_output(profile)  # noqa: E731
        return generate_content(body, call.model, number, broken)

    async def _answer(
        self, request: web.Request, profile: Profile, call: Call, body: _Request
    ) -> web.StreamResponse:
        def answer(number: int) -> web.Response:
            payload = _encode(self._content(body, profile, call, number))
            return web.Response(
                body=payload, content_type=_JSON, headers={"x-request-id": f"fake-{number}"}
            )

        return await self.provider.deliver(request, profile, call, answer, google_error)

    async def _stream(
        self, request: web.Request, profile: Profile, call: Call, body: _Request
    ) -> web.StreamResponse:
        if request.query.get("alt") != "sse":
            profile.errors += 1
            return google_error(400, "fake provider: streamGenerateContent streams with alt=sse")
        return await self.provider.deliver_stream(
            request,
            profile,
            call,
            lambda number: stream_events(self._content(body, profile, call, number)),
            google_error,
            headers={"x-request-id": "fake-{number}"},
        )
