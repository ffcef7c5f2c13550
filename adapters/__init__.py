"""Provider adapters: one module per wire format, one error taxonomy, one retry policy.

    get_adapter("openai_compatible").complete(session, target, request) -> ProviderResult

Errors live in `adapters.errors`, the retry policy in `adapters.retry`, pooled HTTP sessions
in `adapters.sessions`, and the built-in fake provider in `devkit.fake_server`.
"""

from __future__ import annotations

from collections.abc import Callable

from .anthropic import AnthropicAdapter
from .azure_openai import AzureOpenAIAdapter
from .base import Adapter, Message, ProviderRequest, ProviderResult, Target
from .errors import ProviderError
from .fake import FakeAdapter
from .gemini import GeminiAdapter
from .huggingface import HuggingFaceAdapter
from .openai_compatible import OpenAIAdapter, OpenAICompatibleAdapter
from .secrets import MissingSecret, Secret, SecretStore
from .sessions import SessionPool

__all__ = [
    "ADAPTER_NAMES",
    "Adapter",
    "AnthropicAdapter",
    "AzureOpenAIAdapter",
    "FakeAdapter",
    "GeminiAdapter",
    "HuggingFaceAdapter",
    "Message",
    "MissingSecret",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "ProviderError",
    "ProviderRequest",
    "ProviderResult",
    "Secret",
    "SecretStore",
    "SessionPool",
    "Target",
    "get_adapter",
]

_FACTORIES: dict[str, Callable[[], Adapter]] = {
    OpenAIAdapter.name: OpenAIAdapter,
    OpenAICompatibleAdapter.name: OpenAICompatibleAdapter,
    AzureOpenAIAdapter.name: AzureOpenAIAdapter,
    AnthropicAdapter.name: AnthropicAdapter,
    HuggingFaceAdapter.name: HuggingFaceAdapter,
    GeminiAdapter.name: GeminiAdapter,
    FakeAdapter.name: FakeAdapter,
}

ADAPTER_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))
"""The names accepted in the registry's `provider` column (that have an adapter today)."""

_instances: dict[str, Adapter] = {}


def get_adapter(name: str) -> Adapter:
    """The shared adapter for a provider name; KeyError listing the known names otherwise."""
    adapter = _instances.get(name)
    if adapter is None:
        factory = _FACTORIES.get(name)
        if factory is None:
            raise KeyError(f"unknown provider {name!r}; known: {', '.join(ADAPTER_NAMES)}")
        adapter = _instances[name] = factory()
    return adapter
