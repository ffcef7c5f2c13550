"""Azure OpenAI: OpenAI's chat completions behind per-deployment URLs and an `api-key` header.

The endpoint is the resource's base URL, e.g. `https://myres.openai.azure.com`; the target's
model is the deployment name. One call is one attempt:

    POST {endpoint}/openai/deployments/{model}/chat/completions?api-version={version}

`version` is the endpoint's own `api-version=` query parameter when it has one, else
`DEFAULT_API_VERSION`. An endpoint that already ends in `/openai` is not doubled, one that
already names a deployment (`.../openai/deployments/{name}`) keeps it, and a full
`.../chat/completions` URL copied from the portal is used as it is. Body and answer are
OpenAI's (the token cap as `max_completion_tokens`, which the reasoning deployments require);
a content-filter refusal (error code `content_filter`, or finish reason `content_filter` with
neither content nor tool calls) is `ContentFiltered`, streamed or not. `reasoning_effort` needs
api-version `REASONING_API_VERSION` or later: an older one is refused before the call, naming
it. A stream asks for its usage chunk (`stream_options`) from `STREAM_USAGE_API_VERSION` on;
older versions refuse the field, so their streams carry no token counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

from yarl import URL

from .base import OnDelta, ProviderRequest, ProviderResult, Target
from .errors import ContentFiltered
from .features import IMAGES, JSON_OBJECT, JSON_SCHEMA, REASONING, TOOLS
from .http_client import Session
from .openai_compatible import OpenAICompatibleAdapter
from .urls import redact_url

__all__ = [
    "DEFAULT_API_VERSION",
    "REASONING_API_VERSION",
    "STREAM_USAGE_API_VERSION",
    "AzureOpenAIAdapter",
]

DEFAULT_API_VERSION = "2024-10-21"
REASONING_API_VERSION = "2024-12-01-preview"
"""The first api-version whose chat completions take `reasoning_effort` (Azure's reasoning
models how-to); later ones, preview or GA, sort after it."""
STREAM_USAGE_API_VERSION = "2024-09-01-preview"
"""The first api-version that takes `stream_options` (`include_usage`); 2024-10-21, the GA
default, has it."""


@lru_cache(maxsize=1024)
def deployment_url(endpoint: str, deployment: str) -> URL:
    """The chat-completions URL for `deployment` on the resource at `endpoint`."""
    url = URL(endpoint)
    if not url.absolute:
        raise ValueError(f"not an absolute URL: {redact_url(endpoint)!r}")
    query = dict(url.query)
    query.setdefault("api-version", DEFAULT_API_VERSION)
    path = url.path.rstrip("/")
    base = url.with_path(path).with_query(None).with_fragment(None)
    if path.endswith("/chat/completions"):
        return base.with_query(query)
    if "/openai/deployments/" in path + "/":
        return (base / "chat" / "completions").with_query(query)
    if not path.endswith("/openai"):
        base = base / "openai"
    return (base / "deployments" / deployment / "chat" / "completions").with_query(query)


class AzureOpenAIAdapter(OpenAICompatibleAdapter):
    """Adapter `azure_openai`: an Azure OpenAI resource; the target's model is the deployment."""

    name = "azure_openai"
    default_endpoint: ClassVar[str] = ""
    request_id_headers: ClassVar[tuple[str, ...]] = ("x-request-id", "apim-request-id")
    features: ClassVar[frozenset[str]] = frozenset(
        {JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES, REASONING}
    )
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def url_for(self, endpoint: str, target: Target) -> URL:
        return deployment_url(endpoint, target.model)

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        why = super().unsupported(target, request)
        if why is not None or request.reasoning_effort is None or not target.endpoint:
            return why
        try:
            version = deployment_url(target.endpoint, target.model).query["api-version"]
        except ValueError:
            return None  # the call itself reports the bad endpoint
        if version[:10] < REASONING_API_VERSION[:10]:
            return (
                f"`reasoning_effort` is not supported by provider {self.name} at api-version "
                f"{version} (model {target.model}): it needs {REASONING_API_VERSION} or later"
            )
        return None

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["api-key"] = target.api_key.reveal()
        return headers

    def stream_options(self, target: Target) -> dict[str, Any] | None:
        try:
            version = deployment_url(self.endpoint_for(target), target.model).query["api-version"]
        except ValueError:
            return None  # the call itself reports the bad endpoint
        if version[:10] < STREAM_USAGE_API_VERSION[:10]:
            return None
        return super().stream_options(target)

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        return self._unfiltered(target, super().parse_result(target, payload, request_id, headers))

    async def stream(
        self,
        session: Session,
        target: Target,
        request: ProviderRequest,
        on_delta: OnDelta,
    ) -> ProviderResult:
        """As OpenAI's; a streamed answer the filter withheld is `ContentFiltered` too."""
        return self._unfiltered(target, await super().stream(session, target, request, on_delta))

    def _unfiltered(self, target: Target, result: ProviderResult) -> ProviderResult:
        if result.finish_reason == "content_filter" and not (result.text or result.tool_calls):
            raise self.error(
                ContentFiltered,
                target,
                "the answer was withheld by Azure's content filter (content_filter)",
                status=200,
                request_id=result.request_id,
            )
        return result
