"""The batch client of a provider: `batch_client_for("openai")`.

OpenAI's wire also serves the fake provider (`adapters.fake`), which speaks OpenAI's format;
a provider with no batch API here has no client (None): its batch-lane prompts are answered
`batch_unavailable`.
"""

from __future__ import annotations

from .batch import BatchClient
from .batch_anthropic import AnthropicBatchClient
from .batch_gemini import GeminiBatchClient
from .batch_openai import OpenAIBatchClient
from .fake import FakeAdapter

__all__ = ["BATCH_PROVIDERS", "batch_client_for"]

BATCH_PROVIDERS = frozenset({"openai", "anthropic", "gemini", "fake"})


def batch_client_for(provider: str) -> BatchClient | None:
    """A new client for `provider`'s batch API (it opens its session on first use; close
    it), or None when the provider has none here."""
    if provider == "openai":
        return OpenAIBatchClient()
    if provider == "fake":
        return OpenAIBatchClient(FakeAdapter())
    if provider == "anthropic":
        return AnthropicBatchClient()
    if provider == "gemini":
        return GeminiBatchClient()
    return None
