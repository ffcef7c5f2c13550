"""Google's Gemini API (generativelanguage.googleapis.com) over aiohttp.

One call is one attempt: `POST {endpoint}/v1beta/models/{model}:generateContent`, the endpoint
defaulting to `https://generativelanguage.googleapis.com` (one that already ends in an API
version such as `/v1beta` or `/v1` keeps it; a `models/` prefix on the model is dropped), with
the key in `x-goog-api-key` (never in the URL).

Messages become `contents` with roles "user" and "model" (assistant); system messages go to
`systemInstruction`. The answer is the first candidate's text parts (thought parts skipped);
`STOP` → "stop", `MAX_TOKENS` → "length", a safety-type finish or a blocked prompt
(`promptFeedback.blockReason`) raises `ContentFiltered`. Errors are Google's
`{"error": {"code", "message", "status", "details"}}`: `RESOURCE_EXHAUSTED` is `RateLimited`
(its `RetryInfo.retryDelay` is the retry hint), an invalid key (a 400 from Google) `AuthError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import (
    CONTEXT_HINTS,
    ErrorBody,
    HTTPAdapter,
    Malformed,
    cap_tokens,
    decode_json,
    json_error,
    shorten,
)
from .base import ProviderRequest, ProviderResult, Target
from .errors import AuthError, BadRequest, ContentFiltered, ProviderError, RateLimited

__all__ = ["DEFAULT_GEMINI_ENDPOINT", "GeminiAdapter"]

DEFAULT_GEMINI_ENDPOINT = "https://generativelanguage.googleapis.com"

_VERSIONS = ("/v1beta", "/v1", "/v1alpha")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = frozenset(
    {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
)
_ROLES = {"assistant": "model", "model": "model"}
_BAD_KEY_HINTS = ("api_key_invalid", "api key not valid", "api key expired")


class _Part(msgspec.Struct):
    text: str


class _Content(msgspec.Struct, omit_defaults=True):
    parts: tuple[_Part, ...]
    role: str | None = None


class _GenerationConfig(msgspec.Struct, rename="camel", omit_defaults=True):
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] | None = None
    seed: int | None = None


class _GenerateBody(msgspec.Struct, rename="camel", omit_defaults=True):
    contents: tuple[_Content, ...]
    system_instruction: _Content | None = None
    generation_config: _GenerationConfig | None = None


class _AnswerPart(msgspec.Struct):
    text: str | None = None
    thought: bool = False


class _AnswerContent(msgspec.Struct):
    parts: list[_AnswerPart] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _AnswerContent | None = None
    finish_reason: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _GenerateResponse(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: _UsageMetadata | None = None
    prompt_feedback: _PromptFeedback | None = None
    response_id: str | None = None
    model_version: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_response = msgspec.json.Decoder(_GenerateResponse).decode
_EMPTY_CONFIG = _GenerationConfig()


@lru_cache(maxsize=1024)
def _generate_url(endpoint: str, model: str) -> URL:
    base = endpoint.rstrip("/")
    if not base.endswith(_VERSIONS):
        base += "/v1beta"
    model = model.removeprefix("models/")
    return URL(base) / "models" / f"{model}:generateContent"


def _seconds(duration: Any) -> float | None:
    """A protobuf JSON duration ("37s", "1.5s") in seconds."""
    if not isinstance(duration, str) or not duration.endswith("s"):
        return None
    try:
        value = float(duration[:-1])
    except ValueError:
        return None
    return value if value >= 0 else None


class GeminiAdapter(HTTPAdapter):
    """Adapter `gemini`: the Gemini API unless the target names another endpoint."""

    name = "gemini"
    default_endpoint: ClassVar[str] = DEFAULT_GEMINI_ENDPOINT
    context_hints: ClassVar[tuple[str, ...]] = (
        *CONTEXT_HINTS,
        "exceeds the maximum number of tokens",
    )

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _generate_url(endpoint, target.model)

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["x-goog-api-key"] = target.api_key.reveal()
        return headers

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        system: list[_Part] = []
        contents: list[_Content] = []
        for message in self.messages(target, request):
            if message.role == "system":
                system.append(_Part(message.text))
            else:
                role = _ROLES.get(message.role, "user")
                contents.append(_Content((_Part(message.text),), role))
        if not contents:
            raise self.error(BadRequest, target, "request has no user or assistant message")
        config = _GenerationConfig(
            max_output_tokens=cap_tokens(request.max_tokens, target.max_tokens),
            temperature=request.temperature,
            top_p=request.top_p,
            stop_sequences=request.stop,
            seed=request.seed,
        )
        return _encode(
            _GenerateBody(
                contents=tuple(contents),
                system_instruction=_Content(tuple(system)) if system else None,
                generation_config=None if config == _EMPTY_CONFIG else config,
            )
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_response(payload)
        request_id = request_id or answer.response_id
        feedback = answer.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise self._filtered(target, f"prompt blocked ({feedback.block_reason})", request_id)
        if not answer.candidates:
            raise Malformed("no candidates")
        candidate = answer.candidates[0]
        reason = candidate.finish_reason
        if reason in _BLOCKED:
            raise self._filtered(target, f"answer blocked ({reason})", request_id)
        content = candidate.content
        parts = content.parts if content is not None else []
        usage = answer.usage_metadata
        return ProviderResult(
            text="".join(p.text for p in parts if p.text and not p.thought),
            finish_reason=_FINISH.get(reason, reason.lower()) if reason else None,
            input_tokens=usage.prompt_token_count if usage is not None else 0,
            output_tokens=usage.candidates_token_count if usage is not None else 0,
            request_id=request_id,
            response_id=answer.response_id,
            response_model=answer.model_version if isinstance(answer.model_version, str) else None,
        )

    def _filtered(self, target: Target, why: str, request_id: str | None) -> ProviderError:
        return self.error(ContentFiltered, target, why, status=200, request_id=request_id)

    def read_error(self, payload: bytes) -> ErrorBody:
        doc = decode_json(payload)
        if isinstance(doc, list) and doc and isinstance(doc[0], dict):
            doc = doc[0]  # some Google front ends wrap the error in a list
        err = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            return json_error(payload)
        message: str = err["message"]
        status = err.get("status")
        kind = status if isinstance(status, str) else ""
        reasons: list[str] = []
        retry_after = None
        details = err.get("details")
        for detail in details if isinstance(details, list) else ():
            if not isinstance(detail, dict):
                continue
            if isinstance(detail.get("reason"), str):
                reasons.append(detail["reason"])
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                retry_after = _seconds(detail.get("retryDelay"))
        text = shorten(message)
        if kind:
            text = f"{text} ({kind})" if text else kind
        classify_on = " ".join([message, kind, *reasons]).lower()
        return ErrorBody(text, classify_on, kind=kind, retry_after=retry_after)

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if info.kind == "RESOURCE_EXHAUSTED":
            return RateLimited
        if status in (400, 401, 403) and any(h in info.classify_on for h in _BAD_KEY_HINTS):
            return AuthError
        return super().error_class(status, info)
