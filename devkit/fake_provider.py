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
                                           "truncated_rate"}, any subset
    POST /admin/reset                      zero every counter

The answer is deterministic: `"[fake:{model}] " + <last user message>`, cut to `max_tokens`
words (finish_reason "length", else "stop"); usage counts words. Latency is drawn uniformly
from `latency_ms ± jitter_ms`; with probability `error_rate` the answer is an OpenAI error body
with `error_status` (429, 503 and 529 carry `Retry-After`). Otherwise the `*_rate` faults of
`fake_faults` may strike: a connection reset mid-response, a hang until the client's timeout,
a malformed or a truncated JSON body.

Every request is also kept in a log (`FakeProvider.calls(profile)`, the last `max_log` per
server): when it arrived and was answered (the server's monotonic clock), its status, model,
last user message, Authorization header, and how many of its profile's requests were in
flight when it arrived. Tests measure rates and waits from it: what reached the provider
rather than what the caller hoped. `max_concurrency` answers 429 above that many at once.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import random
import re
import time
from collections.abc import Mapping
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
    OutMessage,
    OutUsage,
    decode_any,
    decode_request,
    encode,
    text_of,
)

__all__ = ["PROFILE_PATTERN", "Call", "FakeProvider", "Profile"]

PROFILE_PATTERN = "[A-Za-z0-9_.-]{1,64}"
_PROFILE_NAME = re.compile(f"^{PROFILE_PATTERN}$")
_SETTINGS = (
    "latency_ms",
    "jitter_ms",
    "error_rate",
    "error_status",
    "retry_after_s",
    "max_concurrency",
    *FAULT_SETTINGS,
)
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
        "status",
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

    @property
    def at(self) -> float:
        return self.arrived

    def __repr__(self) -> str:
        return (
            f"Call({self.profile} {self.model!r} {self.text!r} status={self.status} "
            f"at {self.arrived:.3f}-{self.answered})"
        )


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
        name = request.match_info.get("profile", "default")
        call = Call(name, time.monotonic(), request.headers.get("Authorization"))
        self._log.append(call)
        try:
            response = await self._chat(name, request, call)
        except BaseException:
            call.answered = time.monotonic()
            raise
        call.answered, call.status = time.monotonic(), response.status
        return response

    async def _chat(self, name: str, request: web.Request, call: Call) -> web.StreamResponse:
        try:
            profile = self.profile(name)
        except ValueError as exc:
            return _error_response(404, str(exc), "not_found_error", "profile_not_found")
        profile.requests += 1
        busy = call.in_flight = self._in_flight[name] = self._in_flight.get(name, 0) + 1
        if profile.max_concurrency and busy > profile.max_concurrency:
            self._in_flight[name] -= 1
            profile.errors += 1
            response = _error_response(
                429, "fake provider: too many requests at once", *_ERROR_KINDS[429]
            )
            response.headers["Retry-After"] = f"{profile.retry_after_s:g}"
            return response
        try:
            return await self._answer(request, profile, call)
        finally:
            self._in_flight[name] -= 1

    async def _answer(
        self, request: web.Request, profile: Profile, call: Call
    ) -> web.StreamResponse:
        try:
            chat = decode_request(await request.read())
        except msgspec.DecodeError as exc:
            profile.errors += 1
            return _error_response(400, f"invalid request body: {exc}", *_ERROR_KINDS[400])
        call.model = chat.model
        users = [m for m in chat.messages if m.role == "user"]
        call.text = text_of(users[-1].content) if users else ""
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
            kind, code = _ERROR_KINDS.get(status, ("server_error", "internal_error"))
            response = _error_response(status, f"fake provider: injected {status}", kind, code)
            if status in (429, 503, 529):
                response.headers["Retry-After"] = f"{profile.retry_after_s:g}"
            response.headers["x-request-id"] = f"fake-{number}"
            return response
        answer = self._completion(chat, number)
        fault = call.fault = profile.fault(rng)
        if fault is None:
            return answer
        profile.errors += 1
        if fault == "hang":
            await hang(request)
            return web.Response(status=499)  # nobody reads it: the client went away
        if fault == "reset":
            return await reset(request, bytes(answer.body))  # type: ignore[arg-type]
        return fault_response_or_none(fault, bytes(answer.body)) or answer  # type: ignore[arg-type]

    def _completion(self, chat: ChatRequest, number: int) -> web.Response:
        last_user = ""
        prompt_words = 0
        for message in chat.messages:
            text = text_of(message.content)
            prompt_words += len(text.split())
            if message.role == "user":
                last_user = text
        text = f"[fake:{chat.model}] {last_user}"
        finish = "stop"
        if chat.stop:
            for stop in (chat.stop,) if isinstance(chat.stop, str) else chat.stop:
                cut = text.find(stop) if stop else -1
                if cut >= 0:
                    text = text[:cut]
        limit = chat.max_tokens if chat.max_tokens is not None else chat.max_completion_tokens
        words = text.split()
        if limit is not None and len(words) > limit:
            words = words[: max(limit, 0)]
            text = " ".join(words)
            finish = "length"
        answer = Completion(
            id=f"chatcmpl-fake-{number}",
            object="chat.completion",
            created=int(time.time()),
            model=chat.model,
            choices=[OutChoice(0, OutMessage("assistant", text), finish)],
            usage=OutUsage(prompt_words, len(words), prompt_words + len(words)),
        )
        return web.Response(
            body=encode(answer),
            content_type="application/json",
            headers={"x-request-id": f"fake-{number}"},
        )

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


def _error_response(status: int, message: str, kind: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=encode(body), content_type="application/json")
