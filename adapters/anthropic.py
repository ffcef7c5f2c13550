"""Anthropic's Messages API over aiohttp.

One call is one attempt: `POST {endpoint}/v1/messages` (the endpoint defaults to
`https://api.anthropic.com`; one that already ends in `/v1` is not doubled), with the key in
`x-api-key` and `anthropic-version: 2023-06-01`.

System messages move to the top-level `system` field (joined by a blank line); `max_tokens`,
which Anthropic requires, is the request's value capped by the target, else the target's, else
1024. `stop` becomes `stop_sequences`; `seed` has no Anthropic equivalent and is dropped.
Errors arrive as `{"type": "error", "error": {"type", "message"}, "request_id"}`; 529 and
`overloaded_error` are `Overloaded`, "prompt is too long" is `ContextLengthExceeded`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import CONTEXT_HINTS, ErrorBody, HTTPAdapter, cap_tokens, strip_v1
from .base import Message, ProviderRequest, ProviderResult, Target
from .errors import BadRequest, Overloaded, ProviderError

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicAdapter"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class _MessagesBody(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: tuple[Message, ...]
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _MessageResponse(msgspec.Struct):
    content: list[_Block]
    id: str | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None
    model: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(_MessageResponse).decode


@lru_cache(maxsize=1024)
def _messages_url(endpoint: str) -> URL:
    return URL(strip_v1(endpoint) + "/v1/messages")


class AnthropicAdapter(HTTPAdapter):
    """Adapter `anthropic`: api.anthropic.com unless the target names another endpoint."""

    name = "anthropic"
    default_endpoint: ClassVar[str] = "https://api.anthropic.com"
    request_id_headers: ClassVar[tuple[str, ...]] = ("request-id", "x-request-id")
    context_hints: ClassVar[tuple[str, ...]] = (
        *CONTEXT_HINTS,
        "prompt is too long",
        "exceed context limit",
    )

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _messages_url(endpoint)

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if target.api_key is not None:
            headers["x-api-key"] = target.api_key.reveal()
        return headers

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        system: list[str] = []
        turns: list[Message] = []
        for message in self.messages(target, request):
            if message.role == "system":
                system.append(message.text)
            else:
                turns.append(message)
        if not turns:
            raise self.error(BadRequest, target, "request has no user or assistant message")
        max_tokens = cap_tokens(request.max_tokens, target.max_tokens)
        return _encode(
            _MessagesBody(
                model=target.model,
                max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
                messages=tuple(turns),
                system="\n\n".join(system) if system else None,
                temperature=request.temperature,
                top_p=request.top_p,
                stop_sequences=request.stop,
            )
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_message(payload)
        text = "".join(b.text for b in answer.content if b.type == "text" and b.text)
        usage = answer.usage
        reason = answer.stop_reason
        return ProviderResult(
            text=text,
            finish_reason=_FINISH.get(reason, reason) if reason is not None else None,
            input_tokens=(usage.input_tokens or 0) if usage is not None else 0,
            output_tokens=(usage.output_tokens or 0) if usage is not None else 0,
            request_id=request_id or answer.id,
            response_id=answer.id,
            response_model=answer.model if isinstance(answer.model, str) else None,
        )

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if info.kind == "overloaded_error" and status >= 500:
            return Overloaded
        return super().error_class(status, info)
