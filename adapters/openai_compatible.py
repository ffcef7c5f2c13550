"""OpenAI chat completions over aiohttp: OpenAI itself and every server speaking its wire format.

One call is one attempt: `POST {endpoint}/chat/completions`, where `endpoint` is the base URL
that already ends in `/v1`. HTTP and transport failures become `adapters.errors` classes; the
API key goes into the Authorization header only and is scrubbed from every error message.
The shared attempt (send, classify, redact) lives in `adapters._http`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import HTTPAdapter, Malformed, cap_tokens
from .base import Message, ProviderRequest, ProviderResult, Target

__all__ = ["OpenAIAdapter", "OpenAICompatibleAdapter"]


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None


class _AnswerMessage(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _AnswerMessage | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatCompletion(msgspec.Struct):
    choices: list[_Choice]
    id: str | None = None
    usage: _Usage | None = None
    model: Any = None  # informational: never fail an answer over it


_encode = msgspec.json.Encoder().encode
_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode


@lru_cache(maxsize=1024)
def _chat_url(endpoint: str) -> URL:
    return URL(endpoint.rstrip("/") + "/chat/completions")


class OpenAICompatibleAdapter(HTTPAdapter):
    """Adapter `openai_compatible`: vLLM, Ollama, llama.cpp, Groq, Together, OpenRouter..."""

    name = "openai_compatible"
    default_endpoint: ClassVar[str] = ""

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _chat_url(endpoint)

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The JSON request body (None fields omitted, max_tokens capped by the target)."""
        return _encode(
            _ChatBody(
                model=target.model,
                messages=self.messages(target, request),
                max_tokens=cap_tokens(request.max_tokens, target.max_tokens),
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop,
                seed=request.seed,
            )
        )

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        return headers

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = _decode_completion(payload)
        if not answer.choices:
            raise Malformed("no choices")
        choice = answer.choices[0]
        usage = answer.usage
        message = choice.message
        return ProviderResult(
            text=(message.content if message is not None else None) or "",
            finish_reason=choice.finish_reason,
            input_tokens=(usage.prompt_tokens or 0) if usage is not None else 0,
            output_tokens=(usage.completion_tokens or 0) if usage is not None else 0,
            request_id=request_id or answer.id,
            response_id=answer.id,
            response_model=answer.model if isinstance(answer.model, str) else None,
        )


class OpenAIAdapter(OpenAICompatibleAdapter):
    """Adapter `openai`: api.openai.com unless the target names another endpoint."""

    name = "openai"
    default_endpoint: ClassVar[str] = "https://api.openai.com/v1"
