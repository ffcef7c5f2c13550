"""Azure OpenAI: OpenAI's chat completions behind per-deployment URLs and an `api-key` header.

The endpoint is the resource's base URL, e.g. `https://myres.openai.azure.com`; the target's
model is the deployment name. One call is one attempt:

    POST {endpoint}/openai/deployments/{model}/chat/completions?api-version={version}

`version` is the endpoint's own `api-version=` query parameter when it has one, else
`DEFAULT_API_VERSION`. An endpoint that already ends in `/openai` is not doubled, one that
already names a deployment (`.../openai/deployments/{name}`) keeps it, and a full
`.../chat/completions` URL copied from the portal is used as it is. Body and answer are
OpenAI's; a content-filter refusal (error code `content_filter`, or finish reason
`content_filter` with no content) is `ContentFiltered`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import ClassVar

from yarl import URL

from .base import ProviderResult, Target
from .errors import ContentFiltered
from .openai_compatible import OpenAICompatibleAdapter
from .urls import redact_url

__all__ = ["DEFAULT_API_VERSION", "AzureOpenAIAdapter"]

DEFAULT_API_VERSION = "2024-10-21"


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

    def url_for(self, endpoint: str, target: Target) -> URL:
        return deployment_url(endpoint, target.model)

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["api-key"] = target.api_key.reveal()
        return headers

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        result = super().parse_result(target, payload, request_id, headers)
        if result.finish_reason == "content_filter" and not result.text:
            raise self.error(
                ContentFiltered,
                target,
                "the answer was withheld by Azure's content filter (content_filter)",
                status=200,
                request_id=result.request_id,
            )
        return result
