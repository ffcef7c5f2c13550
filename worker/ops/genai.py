"""The GenAI semantic conventions for one provider attempt (`chat {model}` CLIENT spans):
which attributes a request and its answer (or error) carry.

Prompt and completion text (`gen_ai.input.messages`, `gen_ai.output.messages`) and the
prompt's stop sequences (`gen_ai.request.stop_sequences`: text of the prompt's, of any size and
number) only with `content=True` (`LLM_WORKER_TRACE_CONTENT`), the stop sequences cut to fit
`value_length` characters together. Ids and model names an answer reports are dropped
when they contain the API key used for the call: a provider that echoes keys must not put one
on a span.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import ProviderRequest, ProviderResult, Target
from llm_worker.adapters.errors import ProviderError
from llm_worker.adapters.scrub import scrub
from llm_worker.registry.resolve import Candidate

__all__ = [
    "GEN_AI_PROVIDER",
    "Servers",
    "bounded_sequences",
    "call_attributes",
    "endpoint_attributes",
    "request_attributes",
    "result_attributes",
]

GEN_AI_PROVIDER = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "openai_compatible": "openai",
    "fake": "openai",
    "huggingface": "huggingface",
}
"""`gen_ai.provider.name` per adapter. The convention names the API flavour as the client sees
it: OpenAI-compatible servers (vLLM, Ollama, ...) and the built-in fake speak OpenAI's API and
are `openai` (`server.address`, `gen_ai.response.model` and `llm_worker.provider` tell them
apart); TGI has no registered value and gets the friendly name `huggingface`."""


class Servers:
    """`server.address`/`server.port` of the URL a target's adapter calls, parsed once."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], tuple[str | None, int | None]] = {}

    def of(self, target: Target) -> tuple[str | None, int | None]:
        key = (target.provider, target.endpoint)
        server = self._known.get(key)
        if server is None:
            try:
                url = urllib.parse.urlsplit(get_adapter(target.provider).endpoint_for(target))
                server = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
            except (KeyError, ValueError):
                server = (None, None)
            self._known[key] = server
        return server


def _messages(request: ProviderRequest) -> str:
    if request.messages is not None:
        turns = [(m.role, m.content) for m in request.messages]
    else:
        turns = [("user", request.prompt or "")]
    return json.dumps(
        [{"role": r, "parts": [{"type": "text", "content": c}]} for r, c in turns],
        ensure_ascii=False,
    )


def bounded_sequences(values: tuple[str, ...], length: int) -> tuple[str, ...]:
    """The first of `values`, the last one cut, whose characters add up to at most `length`."""
    kept: list[str] = []
    room = length
    for value in values:
        if room <= 0:
            break
        kept.append(value[:room])
        room -= len(kept[-1])
    return tuple(kept)


def endpoint_attributes(
    cand: Candidate, target: Target, server: tuple[str | None, int | None]
) -> dict[str, Any]:
    """What every attempt on this endpoint carries the same (the tracer keeps them per
    endpoint): `request_attributes` is these and `call_attributes`."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GEN_AI_PROVIDER.get(target.provider, target.provider),
        "gen_ai.request.model": target.model,
        "llm_worker.provider": target.provider,
        "llm_worker.endpoint": cand.endpoint_name,
    }
    if cand.fallback:
        attrs["llm_worker.fallback"] = True
    host, port = server
    if host is not None:
        attrs["server.address"] = host
        attrs["server.port"] = port
    return attrs


def call_attributes(
    target: Target,
    request: ProviderRequest,
    attempt: int,
    retry_of: ProviderError | None,
    *,
    content: bool,
    value_length: int,
) -> dict[str, Any]:
    """What this attempt says of its request."""
    attrs: dict[str, Any] = {"llm_worker.attempt": attempt}
    max_tokens = request.max_tokens if request.max_tokens is not None else target.max_tokens
    if max_tokens is not None and target.max_tokens is not None:
        max_tokens = min(max_tokens, target.max_tokens)
    for attr, value in (
        ("gen_ai.request.max_tokens", max_tokens),
        ("gen_ai.request.temperature", request.temperature),
        ("gen_ai.request.top_p", request.top_p),
        ("gen_ai.request.seed", request.seed),
    ):
        if value is not None:
            attrs[attr] = value
    if retry_of is not None:
        attrs["llm_worker.retry_of"] = retry_of.type
    if content:
        attrs["gen_ai.input.messages"] = _messages(request)
        if request.stop:
            stop = bounded_sequences(request.stop, value_length)
            attrs["gen_ai.request.stop_sequences"] = stop
    return attrs


def request_attributes(
    cand: Candidate,
    target: Target,
    request: ProviderRequest,
    attempt: int,
    retry_of: ProviderError | None,
    server: tuple[str | None, int | None],
    *,
    content: bool,
    value_length: int,
) -> dict[str, Any]:
    """The CLIENT span's attributes at its start."""
    return {
        **endpoint_attributes(cand, target, server),
        **call_attributes(
            target, request, attempt, retry_of, content=content, value_length=value_length
        ),
    }


def result_attributes(
    target: Target,
    result: ProviderResult | None,
    error: ProviderError | None,
    *,
    content: bool,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if result is not None:
        key = target.api_key.reveal() if target.api_key is not None else None
        for attr, value in (
            ("gen_ai.response.id", result.response_id or result.request_id),
            ("gen_ai.response.model", result.response_model),
        ):
            if value and (not key or scrub(value, key) == value):  # no echo of the key, in any form
                attrs[attr] = value
        attrs["gen_ai.usage.input_tokens"] = result.input_tokens
        attrs["gen_ai.usage.output_tokens"] = result.output_tokens
        if result.finish_reason:
            attrs["gen_ai.response.finish_reasons"] = (result.finish_reason,)
        if content:
            out = {
                "role": "assistant",
                "parts": [{"type": "text", "content": result.text}],
                "finish_reason": result.finish_reason or "",
            }
            attrs["gen_ai.output.messages"] = json.dumps([out], ensure_ascii=False)
    elif error is not None:
        attrs["error.type"] = error.type
        if error.status:
            attrs["http.response.status_code"] = error.status
    return attrs
