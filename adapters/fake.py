"""The `fake` adapter: the OpenAI-compatible adapter pointed at the built-in fake provider.

The fake provider (`devkit.fake_server`, CLI `llm-worker fake-provider`) listens on
`DEFAULT_FAKE_PORT` unless told otherwise; a target's endpoint overrides the default, e.g.
`http://127.0.0.1:8089/v1` or, for a named profile, `http://127.0.0.1:8089/slow/v1`.
"""

from __future__ import annotations

from .openai_compatible import OpenAICompatibleAdapter

__all__ = ["DEFAULT_FAKE_ENDPOINT", "DEFAULT_FAKE_PORT", "FakeAdapter"]

DEFAULT_FAKE_PORT = 8089
DEFAULT_FAKE_ENDPOINT = f"http://127.0.0.1:{DEFAULT_FAKE_PORT}/v1"


class FakeAdapter(OpenAICompatibleAdapter):
    """Adapter `fake`: same wire format and features (JSON output, tools, images), default
    endpoint the local fake provider."""

    name = "fake"
    default_endpoint = DEFAULT_FAKE_ENDPOINT
