"""Hugging Face: Text Generation Inference (TGI) and Inference Endpoints, in two wire forms.

The endpoint chooses the form:

- path ends in `/generate`: TGI's native API. `POST {endpoint}` with `{"inputs": <prompt>,
  "parameters": {"max_new_tokens", "temperature", "top_p", "stop", "seed", "details": true}}`;
  messages are flattened into `role: content` lines ending with an `assistant:` cue. The answer
  is `generated_text` with `details.finish_reason` (`length` → "length", `eos_token` and
  `stop_sequence` → "stop") and `details.generated_tokens`; input tokens come from
  `details.prefill` when TGI returned it, else its `x-prompt-tokens` header.
  TGI rejects `temperature: 0` (greedy is its default) and `top_p` outside (0, 1), so such values
  are left out rather than sent.
- otherwise: the OpenAI-style Messages API, `POST {endpoint}/v1/chat/completions` (or
  `{endpoint}/chat/completions` when the endpoint already ends in `/v1`), as the
  OpenAI-compatible adapter speaks it. Without an endpoint: the Inference Providers router.

Both send `Authorization: Bearer <token>`. TGI's errors are `{"error": "...", "error_type":
"..."}`; 503 while a model loads (with `estimated_time`, used as the retry hint) and 424 (the
model failed to generate) are `ServerError`, so the worker retries them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import ClassVar

import aiohttp
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
    strip_v1,
)
from .base import Message, ProviderRequest, ProviderResult, Target
from .errors import ProviderError, ServerError
from .openai_compatible import OpenAICompatibleAdapter

__all__ = ["DEFAULT_HF_ENDPOINT", "HuggingFaceAdapter", "flatten", "is_generate_endpoint"]

DEFAULT_HF_ENDPOINT = "https://router.huggingface.co/v1"

_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_CONTEXT_HINTS = (
    *CONTEXT_HINTS,
    "`inputs` tokens + `max_new_tokens`",
    "`inputs` must have less than",
)


class _Parameters(msgspec.Struct, kw_only=True, omit_defaults=True):
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    details: bool


class _GenerateBody(msgspec.Struct):
    inputs: str
    parameters: _Parameters


class _Details(msgspec.Struct):
    finish_reason: str | None = None
    generated_tokens: int | None = None
    prefill: list[msgspec.Raw] = []


class _Generation(msgspec.Struct):
    generated_text: str
    details: _Details | None = None


_encode = msgspec.json.Encoder().encode
_decode_generation = msgspec.json.Decoder(_Generation | list[_Generation]).decode


@lru_cache(maxsize=1024)
def is_generate_endpoint(endpoint: str) -> bool:
    """True when the endpoint is TGI's native `/generate` route (False for a URL that does
    not parse: the attempt then refuses it as an invalid endpoint URL)."""
    try:
        return URL(endpoint).path.rstrip("/").endswith("/generate")
    except ValueError:
        return False


@lru_cache(maxsize=1024)
def _chat_url(endpoint: str) -> URL:
    return URL(strip_v1(endpoint) + "/v1/chat/completions")


def flatten(messages: Iterable[Message]) -> str:
    """`role: content` lines and a closing `assistant:` cue, for a model without a chat API."""
    lines = [f"{m.role}: {m.content}" for m in messages]
    lines.append("assistant:")
    return "\n".join(lines)


def _int_header(headers: Mapping[str, str], name: str) -> int:
    try:
        return max(int(headers.get(name) or 0), 0)
    except ValueError:
        return 0


class _TGIErrors(HTTPAdapter):
    """Error bodies and classes shared by both forms."""

    context_hints: ClassVar[tuple[str, ...]] = _CONTEXT_HINTS

    def read_error(self, payload: bytes) -> ErrorBody:
        info = json_error(payload)
        doc = decode_json(payload)
        if isinstance(doc, dict):
            wait = doc.get("estimated_time")
            if isinstance(wait, int | float) and not isinstance(wait, bool) and wait >= 0:
                info = info._replace(retry_after=float(wait))
        return info

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if status == 424:
            return ServerError
        return super().error_class(status, info)


class _ChatForm(_TGIErrors, OpenAICompatibleAdapter):
    name = "huggingface"
    default_endpoint: ClassVar[str] = DEFAULT_HF_ENDPOINT

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _chat_url(endpoint)


class _GenerateForm(_TGIErrors):
    name = "huggingface"

    def url_for(self, endpoint: str, target: Target) -> URL:
        return URL(endpoint)

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        return headers

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        if request.messages is None and request.prompt is not None:
            inputs = request.prompt
        else:
            inputs = flatten(self.messages(target, request))
        temperature = request.temperature
        top_p = request.top_p
        return _encode(
            _GenerateBody(
                inputs=inputs,
                parameters=_Parameters(
                    max_new_tokens=cap_tokens(request.max_tokens, target.max_tokens),
                    temperature=temperature if temperature is None or temperature > 0 else None,
                    top_p=top_p if top_p is None or 0 < top_p < 1 else None,
                    stop=request.stop,
                    seed=request.seed,
                    details=True,
                ),
            )
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_generation(payload)
        if isinstance(answer, list):
            if not answer:
                raise Malformed("empty list")
            answer = answer[0]
        details = answer.details
        reason = details.finish_reason if details is not None else None
        generated = details.generated_tokens if details is not None else None
        prefill = len(details.prefill) if details is not None else 0
        return ProviderResult(
            text=answer.generated_text,
            finish_reason=_FINISH.get(reason, reason) if reason is not None else None,
            input_tokens=prefill or _int_header(headers, "x-prompt-tokens"),
            output_tokens=generated or _int_header(headers, "x-generated-tokens"),
            request_id=request_id,
        )


class HuggingFaceAdapter:
    """Adapter `huggingface`: TGI's `/generate` or the OpenAI-style Messages API, by endpoint."""

    name = "huggingface"

    def __init__(self) -> None:
        self._chat = _ChatForm()
        self._generate = _GenerateForm()

    def endpoint_for(self, target: Target) -> str:
        """The base URL an attempt for `target` goes to (for `SessionPool.get`)."""
        return target.endpoint or DEFAULT_HF_ENDPOINT

    def form_for(self, target: Target) -> HTTPAdapter:
        endpoint = target.endpoint
        if endpoint and is_generate_endpoint(endpoint):
            return self._generate
        return self._chat

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        return self.form_for(target).unsupported(target, request)

    async def complete(
        self, session: aiohttp.ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        return await self.form_for(target).complete(session, target, request)
