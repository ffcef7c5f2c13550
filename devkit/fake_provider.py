"""The built-in fake provider: an OpenAI-compatible server with injectable latency and errors.

Routes (profile `default` unless the path names one; profiles are created on first use with
the server's default settings):

    POST /v1/chat/completions              POST /{profile}/v1/chat/completions
    GET  /v1/models                        GET  /{profile}/v1/models
    GET  /health
    GET  /admin/config                     all profiles with settings and counters
    POST /admin/config/{profile}           JSON {"latency_ms", "jitter_ms", "error_rate",
                                           "error_status", "retry_after_s", "max_concurrency",
                                           "reset_rate", "hang_rate", "malformed_rate",
                                           "truncated_rate", "invalid_output_rate",
                                           "token_delay_ms", "stream_break_after"},
                                           any subset
    POST /admin/reset                      zero every counter

The answer is deterministic: `"[fake:{model}] " + <last user message>`, cut to `max_tokens`
words (finish_reason "length", else "stop"); usage counts words. Latency is drawn uniformly
from `latency_ms ± jitter_ms`; with probability `error_rate` the answer is an OpenAI error body
with `error_status` (429, 503 and 529 carry `Retry-After`). A body with `"stream": true` gets
the same answer as OpenAI streams it (`fake_wire.chunks_of`: one chunk per word, tool calls
in pieces, the usage chunk when `stream_options.include_usage`, then `data: [DONE]`), paced by
`token_delay_ms` and cut by `stream_break_after`. Otherwise the `*_rate` faults of
`fake_faults` may strike: a connection reset mid-response, a hang until the client's timeout,
a malformed or a truncated JSON body.

Structured requests are answered in OpenAI's shape. With `tools`, a `tool_choice` of
"required" or naming a function (or "auto"/absent and the last user text containing the word
"tool") gets one tool call (finish_reason "tool_calls") to that function (else the first tool)
whose arguments are a minimal object valid for its `parameters` (`fake_wire.example_for`);
when the last message is a `tool` turn the answer is text quoting that result. A
`response_format` of json_schema (OpenAI's `json_schema.schema`, or the llama.cpp dialect's
`{"type": "json_object", "schema": ...}`) gets JSON valid for the schema, json_object without
one `{"answer": <the text>}`. With probability `invalid_output_rate` such an answer is broken:
"not json {" as the content, "not json" as a tool call's arguments.

Every request is also kept in a log (`FakeProvider.calls(profile)`, the last `max_log` per
server): when it arrived and was answered (the server's monotonic clock), its status, model,
last user message, Authorization header, the request body (`Call.body`, decoded on access),
and how many of its profile's requests were in flight when it arrived. Tests measure rates
and waits from it: what reached the provider rather than what the caller hoped.
`max_concurrency` answers 429 above that many at once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from llm_worker.devkit.fake_faults import (
    FAULT_SETTINGS,
    fault_response_or_none,
    hang,
    pick_fault,
    reset,
)
from llm_worker.devkit.fake_wire import (
    ChatRequest,
    Completion,
    OutChoice,
    OutFunction,
    OutMessage,
    OutToolCall,
    OutUsage,
    chunks_of,
    decode_any,
    decode_request,
    encode,
    example_for,
    text_of,
)

__all__ = [
    "PROFILE_PATTERN",
    "Answer",
    "Call",
    "FakeProvider",
    "Profile",
    "Refuse",
    "openai_error",
    "sse",
]

PROFILE_PATTERN = "[A-Za-z0-9_.-]{1,64}"
_PROFILE_NAME = re.compile(f"^{PROFILE_PATTERN}$")
_SETTINGS = (
    "latency_ms",
    "jitter_ms",
    "error_rate",
    "error_status",
    "retry_after_s",
    "max_concurrency",
    "invalid_output_rate",
    "token_delay_ms",
    "stream_break_after",
    *FAULT_SETTINGS,
)
_TOOL_WORD = re.compile(r"\btool\b", re.IGNORECASE)
INVALID_JSON = "not json {"
INVALID_ARGUMENTS = "not json"
_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", "request_timeout"),
    409: ("conflict_error", "conflict"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
    529: ("overloaded_error", "overloaded"),
}


def _validated(settings: Mapping[str, Any]) -> dict[str, float]:
    """Checked profile settings; ValueError naming the first bad one."""
    out: dict[str, float] = {}
    for key, value in settings.items():
        if key not in _SETTINGS:
            raise ValueError(f"unknown setting {key!r} (known: {', '.join(_SETTINGS)})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number")
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{key} must be a finite number >= 0")
        if key.endswith("_rate") and number > 1:
            raise ValueError(f"{key} must be between 0 and 1")
        if key == "error_status" and (number != int(number) or not 400 <= number <= 599):
            raise ValueError("error_status must be an HTTP error status (400..599)")
        out[key] = number
    return out


class Profile(msgspec.Struct, kw_only=True):
    """One simulated endpoint: its settings and its counters."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    retry_after_s: float = 1.0
    max_concurrency: float = 0.0  # above this many requests in flight: 429 at once (0: none)
    reset_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    truncated_rate: float = 0.0
    invalid_output_rate: float = 0.0  # JSON answers and tool arguments that are not JSON
    token_delay_ms: float = 0.0  # streaming: the pause before each event after the first
    stream_break_after: float = 0.0  # streaming: abort the connection after N events (0: never)
    requests: int = 0
    errors: int = 0

    def update(self, settings: Mapping[str, float]) -> None:
        for key, value in _validated(settings).items():
            setattr(self, key, int(value) if key == "error_status" else value)

    def counters(self) -> dict[str, int]:
        return {"requests": self.requests, "errors": self.errors}

    def fault(self, rng: random.Random) -> str | None:
        """The `fake_faults` fault for one request, if any."""
        if not (self.reset_rate or self.hang_rate or self.malformed_rate or self.truncated_rate):
            return None
        return pick_fault({k: getattr(self, k) for k in FAULT_SETTINGS}, rng)


class Call:
    """One request as the fake provider saw it. `answered` is None while it is being served."""

    __slots__ = (
        "answered",
        "arrived",
        "authorization",
        "fault",
        "in_flight",
        "model",
        "profile",
        "raw",
        "status",
        "streamed",
        "text",
    )

    def __init__(self, profile: str, arrived: float, authorization: str | None) -> None:
        self.profile = profile
        self.arrived = arrived
        self.authorization = authorization
        self.answered: float | None = None
        self.status: int | None = None
        self.model = ""
        self.text = ""
        self.fault: str | None = None  # the `fake_faults` fault injected, if any
        self.in_flight = 0  # this profile's requests in flight on arrival, this one included
        self.raw = b""  # the request body as received
        self.streamed = False  # answered as an event stream

    @property
    def body(self) -> Any:
        """The request body as decoded JSON (None when it was not JSON)."""
        try:
            return decode_any(self.raw)
        except msgspec.DecodeError:
            return None

    @property
    def at(self) -> float:
        return self.arrived

    def __repr__(self) -> str:
        return (
            f"Call({self.profile} {self.model!r} {self.text!r} status={self.status} "
            f"at {self.arrived:.3f}-{self.answered})"
        )


Answer = Callable[[web.Request, Profile, Call], Awaitable[web.StreamResponse]]
"""Makes the response to one admitted request (`FakeProvider.serve`)."""
Refuse = Callable[[int, str, float | None], web.Response]
"""An error response in a wire format: (status, message, retry-after seconds or None)."""


class FakeProvider:
    """The fake provider's state and request handlers (no I/O of its own)."""

    def __init__(
        self,
        *,
        profiles: Mapping[str, Mapping[str, float]] | None = None,
        models: tuple[str, ...] = ("fake-model",),
        seed: int | None = None,
        max_profiles: int = 1024,
        max_log: int = 100_000,
        **defaults: float,
    ) -> None:
        """`defaults` (latency_ms, jitter_ms, error_rate, error_status, retry_after_s) apply
        to every profile created later; `profiles` pre-creates profiles with overrides."""
        self.defaults = _validated(defaults)
        self.max_profiles = max_profiles
        self.profiles: dict[str, Profile] = {}
        self._in_flight: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._log: collections.deque[Call] = collections.deque(maxlen=max_log)
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in models]
        self._model_list = encode({"object": "list", "data": data})
        self.profile("default")
        for name, settings in (profiles or {}).items():
            self.configure(name, **settings)

    def profile(self, name: str) -> Profile:
        """The named profile, created with the default settings on first use."""
        found = self.profiles.get(name)
        if found is not None:
            return found
        if not _PROFILE_NAME.match(name):
            raise ValueError(f"invalid profile name {name!r}")
        if len(self.profiles) >= self.max_profiles:
            raise ValueError(f"too many profiles (max {self.max_profiles})")
        created = self.profiles[name] = Profile()
        created.update(self.defaults)
        return created

    def configure(self, name: str = "default", /, **settings: float) -> dict[str, Any]:
        """Change a profile live (creating it if needed); returns its snapshot."""
        checked = _validated(settings)
        profile = self.profile(name)
        profile.update(checked)
        return msgspec.structs.asdict(profile)

    def counters(self, name: str = "default") -> dict[str, int]:
        found = self.profiles.get(name)
        return found.counters() if found else {"requests": 0, "errors": 0}

    def calls(self, name: str | None = None) -> list[Call]:
        """The logged requests of profile `name` (None: every profile), oldest first."""
        return [c for c in self._log if name is None or c.profile == name]

    def log(self, name: str = "default") -> list[Call]:
        """`calls(name)`: profile `name`'s requests, oldest first."""
        return self.calls(name)

    def reset(self) -> None:
        self._log.clear()
        for profile in self.profiles.values():
            profile.requests = 0
            profile.errors = 0
        self._log.clear()

    def config(self) -> dict[str, Any]:
        return {"profiles": {name: msgspec.structs.asdict(p) for name, p in self.profiles.items()}}

    # -- handlers -----------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        return await self.serve(request, authorization, self._answer, openai_error)

    async def serve(
        self, request: web.Request, authorization: str | None, answer: Answer, refuse: Refuse
    ) -> web.StreamResponse:
        """One request, whatever its wire format (`fake_gemini`...): kept in the `Call` log,
        counted against its profile, 429 (by `refuse`) above `max_concurrency` in flight;
        `answer(request, profile, call)` makes the response (usually by `deliver`)."""
        name = request.match_info.get("profile", "default")
        call = Call(name, time.monotonic(), authorization)
        self._log.append(call)
        try:
            response = await self._admit(name, request, call, answer, refuse)
        except BaseException:
            call.answered = time.monotonic()
            raise
        call.answered, call.status = time.monotonic(), response.status
        return response

    async def _admit(
        self, name: str, request: web.Request, call: Call, answer: Answer, refuse: Refuse
    ) -> web.StreamResponse:
        try:
            profile = self.profile(name)
        except ValueError as exc:
            return refuse(404, str(exc), None)
        profile.requests += 1
        busy = call.in_flight = self._in_flight[name] = self._in_flight.get(name, 0) + 1
        if profile.max_concurrency and busy > profile.max_concurrency:
            self._in_flight[name] -= 1
            profile.errors += 1
            message = "fake provider: too many requests at once"
            response = refuse(429, message, profile.retry_after_s)
            response.headers["Retry-After"] = f"{profile.retry_after_s:g}"
            return response
        try:
            return await answer(request, profile, call)
        finally:
            self._in_flight[name] -= 1

    async def _answer(
        self, request: web.Request, profile: Profile, call: Call
    ) -> web.StreamResponse:
        call.raw = await request.read()
        try:
            chat = decode_request(call.raw)
        except msgspec.DecodeError as exc:
            profile.errors += 1
            return _error_response(400, f"invalid request body: {exc}", *_ERROR_KINDS[400])
        call.model = chat.model
        users = [m for m in chat.messages if m.role == "user"]
        call.text = text_of(users[-1].content) if users else ""
        if chat.stream:
            return await self.deliver_stream(
                request,
                profile,
                call,
                lambda n: self._chunks(chat, n, profile),
                openai_error,
                {"x-request-id": "fake-{number}"},
            )
        return await self.deliver(
            request, profile, call, lambda n: self._completion(chat, n, profile), openai_error
        )

    async def deliver(
        self,
        request: web.Request,
        profile: Profile,
        call: Call,
        make: Callable[[int], web.Response],
        refuse: Refuse,
    ) -> web.StreamResponse:
        """The profile's latency, then its injected error (by `refuse`, with `Retry-After` for
        429/503/529) or the answer `make(number)` (the request's number on this server), which
        a `fake_faults` fault may break."""
        number, refused = await self._latency_then_error(profile, refuse)
        if refused is not None:
            return refused
        answer = make(number)
        fault = call.fault = profile.fault(self._rng)
        if fault is None:
            return answer
        profile.errors += 1
        if fault == "hang":
            await hang(request)
            return web.Response(status=499)  # nobody reads it: the client went away
        if fault == "reset":
            return await reset(request, bytes(answer.body))  # type: ignore[arg-type]
        return fault_response_or_none(fault, bytes(answer.body)) or answer  # type: ignore[arg-type]

    async def _latency_then_error(
        self, profile: Profile, refuse: Refuse
    ) -> tuple[int, web.Response | None]:
        """The profile's latency; then the request's number, and the injected error response
        (None: answer it)."""
        rng = self._rng
        delay = profile.latency_ms
        if profile.jitter_ms:
            delay += rng.uniform(-profile.jitter_ms, profile.jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        number = next(self._ids)
        if profile.error_rate and rng.random() < profile.error_rate:
            profile.errors += 1
            status = profile.error_status
            response = refuse(status, f"fake provider: injected {status}", profile.retry_after_s)
            if status in (429, 503, 529):
                response.headers["Retry-After"] = f"{profile.retry_after_s:g}"
            response.headers["x-request-id"] = f"fake-{number}"
            return number, response
        return number, None

    async def deliver_stream(
        self,
        request: web.Request,
        profile: Profile,
        call: Call,
        events: Callable[[int], list[bytes]],
        refuse: Refuse,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """A streamed answer: the profile's latency (time to the first event) and injected
        error as `deliver`, then the events `events(number)` (each a whole SSE event, bytes)
        written one by one, `token_delay_ms` apart; `stream_break_after` aborts the connection
        after that many events (a stream cut mid-answer)."""
        number, refused = await self._latency_then_error(profile, refuse)
        if refused is not None:
            return refused
        call.streamed = True
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        for name, value in (headers or {}).items():
            response.headers[name] = value.format(number=number)
        await response.prepare(request)
        pause = profile.token_delay_ms / 1000.0
        cut = int(profile.stream_break_after)
        for i, event in enumerate(events(number)):
            if cut and i >= cut:
                profile.errors += 1
                call.fault = "stream_break"
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return response
            if i and pause > 0:
                await asyncio.sleep(pause)
            await response.write(event)
        await response.write_eof()
        return response

    def _completion(self, chat: ChatRequest, number: int, profile: Profile) -> web.Response:
        return web.Response(
            body=encode(self._reply(chat, number, profile)),
            content_type="application/json",
            headers={"x-request-id": f"fake-{number}"},
        )

    def _chunks(self, chat: ChatRequest, number: int, profile: Profile) -> list[bytes]:
        """The same answer as `_completion`'s, as OpenAI streams it, then `data: [DONE]`."""
        answer = self._reply(chat, number, profile)
        return [*(sse(c) for c in chunks_of(answer, chat.include_usage)), sse("[DONE]")]

    def _reply(self, chat: ChatRequest, number: int, profile: Profile) -> Completion:
        last_user = ""
        prompt_words = 0
        for message in chat.messages:
            text = text_of(message.content)
            prompt_words += len(text.split())
            if message.role == "user":
                last_user = text
        out, finish = self._message(chat, number, profile, last_user)
        said = out.content if out.tool_calls is None else out.tool_calls[0].function.arguments
        out_words = len((said or "").split())
        return Completion(
            id=f"chatcmpl-fake-{number}",
            object="chat.completion",
            created=int(time.time()),
            model=chat.model,
            choices=[OutChoice(0, out, finish)],
            usage=OutUsage(prompt_words, out_words, prompt_words + out_words),
        )

    def _message(
        self, chat: ChatRequest, number: int, profile: Profile, last_user: str
    ) -> tuple[OutMessage, str]:
        """The answer's message and finish reason: a tool call, JSON, or (cut) text."""
        tool = _tool_to_call(chat, last_user)
        if tool is not None:
            name, parameters = tool
            arguments = INVALID_ARGUMENTS
            if not self.invalid_output(profile):
                arguments = encode(example_for(parameters)).decode()
            call = OutToolCall(f"call_fake_{number}", "function", OutFunction(name, arguments))
            return OutMessage("assistant", None, [call]), "tool_calls"
        text = f"[fake:{chat.model}] {last_user}"
        if chat.messages and chat.messages[-1].role == "tool":
            text = f"[fake:{chat.model}] tool result: {text_of(chat.messages[-1].content)}"
        wanted = _json_wanted(chat.response_format)
        if wanted is not None:
            if self.invalid_output(profile):
                return OutMessage("assistant", INVALID_JSON), "stop"
            value = {"answer": text} if wanted is _ANY_OBJECT else example_for(wanted)
            return OutMessage("assistant", encode(value).decode()), "stop"
        return _cut(text, chat)

    def next_number(self) -> int:
        """A new request number on this server (the `fake-{number}` in ids and request ids)."""
        return next(self._ids)

    def answer(self, raw: bytes, profile: Profile) -> Completion:
        """The completion the chat route answers the body `raw` with (under a new request
        number, without latency or injected faults): what the batch endpoints answer each
        request with (`fake_batch`). msgspec.DecodeError for a body the route refuses (400)."""
        return self._reply(decode_request(raw), self.next_number(), profile)

    def invalid_output(self, profile: Profile) -> bool:
        """Whether this answer is to be broken (`invalid_output_rate`): JSON that is not JSON,
        tool arguments that are no object."""
        rate = profile.invalid_output_rate
        return bool(rate) and self._rng.random() < rate

    async def list_models(self, request: web.Request) -> web.Response:
        return web.Response(body=self._model_list, content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            doc = decode_any(await request.read())
            if not isinstance(doc, dict):
                raise ValueError("body must be a JSON object")
            snapshot = self.configure(request.match_info["profile"], **doc)
        except (msgspec.DecodeError, ValueError) as exc:
            return _error_response(400, str(exc), "invalid_request_error", "invalid_config")
        return web.json_response(snapshot)

    async def reset_counters(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.config())


_ANY_OBJECT: dict[str, Any] = {}  # json_object without a schema: {"answer": text}


def _cut(text: str, chat: ChatRequest) -> tuple[OutMessage, str]:
    """The text cut at the first stop string, then to `max_tokens` words ("length")."""
    finish = "stop"
    if chat.stop:
        for stop in (chat.stop,) if isinstance(chat.stop, str) else chat.stop:
            cut = text.find(stop) if stop else -1
            if cut >= 0:
                text = text[:cut]
    limit = chat.max_tokens if chat.max_tokens is not None else chat.max_completion_tokens
    words = text.split()
    if limit is not None and len(words) > limit:
        text = " ".join(words[: max(limit, 0)])
        finish = "length"
    return OutMessage("assistant", text), finish


def _functions(tools: list[Any]) -> list[tuple[str, Any]]:
    """The (name, parameters) of each well-formed `{"type": "function", ...}` tool."""
    found = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            found.append((function["name"], function.get("parameters") or {}))
    return found


def _tool_to_call(chat: ChatRequest, last_user: str) -> tuple[str, Any] | None:
    """The function to call, or None: no tools, a tool result to answer, or no call asked."""
    functions = _functions(chat.tools or [])
    if not functions or (chat.messages and chat.messages[-1].role == "tool"):
        return None
    choice = chat.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        return next((f for f in functions if f[0] == name), functions[0])
    if choice == "required" or (choice in (None, "auto") and _TOOL_WORD.search(last_user)):
        return functions[0]
    return None


def _json_wanted(fmt: Any) -> Any:
    """The schema a JSON answer must match, `_ANY_OBJECT` for plain json_object, or None (text).
    OpenAI's `{"type": "json_schema", "json_schema": {"schema"}}` and llama.cpp's
    `{"type": "json_object", "schema"}` (or `json_schema` with a top-level `schema`)."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else fmt.get("schema")
    if isinstance(schema, dict):
        return schema
    return {} if fmt.get("type") == "json_schema" else _ANY_OBJECT


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event: `data` as JSON (bytes and str as they are), after an `event`
    line when named."""
    if isinstance(data, bytes):
        payload = data
    elif isinstance(data, str):
        payload = data.encode()
    else:
        payload = encode(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


def openai_error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
    """An error body in OpenAI's shape (a `Refuse`)."""
    kind, code = _ERROR_KINDS.get(status, ("server_error", "internal_error"))
    return _error_response(status, message, kind, code)


def _error_response(status: int, message: str, kind: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=encode(body), content_type="application/json")
