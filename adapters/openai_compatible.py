"""OpenAI chat completions over aiohttp: OpenAI itself and every server speaking its wire format.

One call is one attempt: `POST {endpoint}/chat/completions`, where `endpoint` is the base URL
that already ends in `/v1`. HTTP and transport failures become `adapters.errors` classes; the
API key goes into the Authorization header only and is scrubbed from every error message.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, ClassVar

import aiohttp
import msgspec
from yarl import URL

from .base import Message, ProviderRequest, ProviderResult, Target
from .errors import (
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    ProviderError,
    ProviderTimeout,
    ServerError,
    error_for_status,
)
from .retry import parse_retry_after

__all__ = ["OpenAIAdapter", "OpenAICompatibleAdapter"]

_SNIPPET = 200


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


_encode = msgspec.json.Encoder().encode
_decode_completion = msgspec.json.Decoder(_ChatCompletion).decode
_decode_any = msgspec.json.Decoder().decode

_TAGS = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_CONTEXT_HINTS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
)
_FILTER_HINTS = ("content_filter", "content_policy", "content management policy")


@lru_cache(maxsize=1024)
def _timeout(timeout_ms: int) -> aiohttp.ClientTimeout:
    seconds = max(timeout_ms, 1) / 1000.0
    return aiohttp.ClientTimeout(total=seconds, connect=seconds)


@lru_cache(maxsize=1024)
def _chat_url(endpoint: str) -> URL:
    return URL(endpoint.rstrip("/") + "/chat/completions")


def _cap_tokens(asked: int | None, cap: int | None) -> int | None:
    if asked is None:
        return cap
    if cap is None:
        return asked
    return min(asked, cap)


def _snippet(body: bytes) -> str:
    """A short, single-line, tag-free excerpt of an unparseable body."""
    text = body[: _SNIPPET * 8].decode("utf-8", errors="replace")
    text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    if len(text) > _SNIPPET:
        text = text[: _SNIPPET - 3].rstrip() + "..."
    return text


def _error_detail(body: bytes) -> tuple[str, str]:
    """(message for humans, lower-cased text to classify on) from an error body.

    Understands OpenAI's `{"error": {"message", "type", "code"}}`, vLLM's flat
    `{"message", "type", "code"}` and FastAPI's `{"detail": ...}`; anything else is a snippet.
    """
    try:
        doc = _decode_any(body) if body else None
    except (msgspec.DecodeError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        err: Any = doc.get("error", doc)
        if isinstance(err, str):
            err = {"message": err}
        if isinstance(err, dict):
            message = err.get("message") or doc.get("detail")
            if message is not None and not isinstance(message, str):
                message = str(msgspec.json.encode(message), "utf-8")
            kind, code = err.get("type"), err.get("code")
            tags = "/".join(str(t) for t in (kind, code) if t not in (None, ""))
            text = message or ""
            if len(text) > _SNIPPET:
                text = text[: _SNIPPET - 3].rstrip() + "..."
            if tags:
                text = f"{text} ({tags})" if text else tags
            if text:
                return text, f"{message or ''} {tags}".lower()
    snippet = _snippet(body)
    return snippet, snippet.lower()


class OpenAICompatibleAdapter:
    """Adapter `openai_compatible`: vLLM, Ollama, llama.cpp, Groq, Together, OpenRouter..."""

    name = "openai_compatible"
    default_endpoint: ClassVar[str] = ""

    def endpoint_for(self, target: Target) -> str:
        """The base URL an attempt for `target` goes to (for `SessionPool.get`)."""
        return target.endpoint or self.default_endpoint

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        """The JSON request body (None fields omitted, max_tokens capped by the target)."""
        if request.messages is not None:
            messages = request.messages
        elif request.prompt is not None:
            messages = (Message("user", request.prompt),)
        else:
            raise BadRequest(
                "request has neither messages nor prompt", provider=self.name, model=target.model
            )
        return _encode(
            _ChatBody(
                model=target.model,
                messages=messages,
                max_tokens=_cap_tokens(request.max_tokens, target.max_tokens),
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

    async def complete(
        self, session: aiohttp.ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        endpoint = self.endpoint_for(target)
        if not endpoint:
            raise BadRequest("target has no endpoint", provider=self.name, model=target.model)
        body = self.build_body(target, request)
        try:
            async with session.post(
                _chat_url(endpoint),
                data=body,
                headers=self.headers_for(target),
                timeout=_timeout(target.timeout_ms),
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                status = resp.status
                headers = resp.headers
        except TimeoutError as exc:
            raise self._error(
                ProviderTimeout, target, f"no answer within {target.timeout_ms} ms"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise self._error(BadRequest, target, "invalid endpoint URL") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise self._error(ConnectionFailed, target, _describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise self._error(ServerError, target, _describe(exc)) from exc

        request_id = headers.get("x-request-id")
        if 200 <= status < 300:
            return self._result(target, payload, status, request_id)
        message, classify_on = _error_detail(payload)
        cls = error_for_status(status)
        if issubclass(cls, BadRequest):
            if any(hint in classify_on for hint in _CONTEXT_HINTS):
                cls = ContextLengthExceeded
            elif any(hint in classify_on for hint in _FILTER_HINTS):
                cls = ContentFiltered
        raise self._error(
            cls,
            target,
            message or f"HTTP {status}",
            status=status,
            request_id=request_id,
            retry_after=parse_retry_after(headers),
        )

    def _result(
        self, target: Target, payload: bytes, status: int, request_id: str | None
    ) -> ProviderResult:
        try:
            answer = _decode_completion(payload)
            choice = answer.choices[0]
        except (msgspec.DecodeError, IndexError) as exc:
            raise self._error(
                BadRequest,
                target,
                f"malformed response: {_snippet(payload) or 'empty body'}",
                status=status,
                request_id=request_id,
            ) from exc
        usage = answer.usage
        message = choice.message
        return ProviderResult(
            text=(message.content if message is not None else None) or "",
            finish_reason=choice.finish_reason,
            input_tokens=(usage.prompt_tokens or 0) if usage is not None else 0,
            output_tokens=(usage.completion_tokens or 0) if usage is not None else 0,
            request_id=request_id or answer.id,
        )

    def _error(
        self,
        cls: type[ProviderError],
        target: Target,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderError:
        if target.api_key is not None:
            key = target.api_key.reveal()
            if key:
                message = message.replace(key, "***")
                if request_id:
                    request_id = request_id.replace(key, "***")
        return cls(
            message,
            provider=self.name,
            model=target.model,
            status=status,
            request_id=request_id,
            retry_after=retry_after,
        )


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


class OpenAIAdapter(OpenAICompatibleAdapter):
    """Adapter `openai`: api.openai.com unless the target names another endpoint."""

    name = "openai"
    default_endpoint: ClassVar[str] = "https://api.openai.com/v1"
