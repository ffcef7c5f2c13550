"""The adapter interface: a normalized request in, a normalized result (or a typed error) out.

Adapters do no retries and hold no sessions of their own: the caller passes the pooled
`aiohttp.ClientSession` for the endpoint, and the retry loop lives in the worker.
"""

from __future__ import annotations

from typing import Protocol

import aiohttp
import msgspec

from ._body import DEFAULT_MAX_RESPONSE_BYTES
from .secrets import Secret

__all__ = ["Adapter", "Message", "ProviderRequest", "ProviderResult", "Target"]


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class ProviderRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller asked for, provider-neutral. Exactly one of messages/prompt is set."""

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where one attempt goes: resolved from a registry row (primary or fallback)."""

    provider: str  # adapter name: openai, openai_compatible, anthropic, ..., fake
    endpoint: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str  # the provider's model name (registry `upstream_model` / `fallback_model`)
    endpoint_name: str  # stable label for metrics and completions, e.g. "primary:openai"
    api_key: Secret | None = None
    timeout_ms: int = 30_000
    max_tokens: int | None = None  # the registry row's cap / default
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # a longer answer is not read


class ProviderResult(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    finish_reason: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    request_id: str | None = None
    response_id: str | None = None  # the answer's own id (chatcmpl-..., msg_...), if it has one
    response_model: str | None = None  # the model that answered, as the provider names it


class Adapter(Protocol):
    name: str

    def endpoint_for(self, target: Target) -> str:
        """The base URL this adapter calls for `target` (its default when the row has none)."""
        ...

    async def complete(
        self, session: aiohttp.ClientSession, target: Target, request: ProviderRequest
    ) -> ProviderResult:
        """One attempt. Raises `adapters.errors.ProviderError` subclasses, nothing else."""
        ...
