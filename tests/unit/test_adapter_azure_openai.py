"""Azure OpenAI: deployment URLs, api-version, the api-key header, content filtering."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llm_worker.adapters.azure_openai import DEFAULT_API_VERSION, AzureOpenAIAdapter, deployment_url
from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.errors import BadRequest, ContentFiltered

from .test_adapter_contract import Azure, Upstream, replying, serve

PROFILE = Azure()
DEPLOYMENT_PATH = "/openai/deployments/test-model/chat/completions"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve(PROFILE) as up:
        yield up


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (
            "https://myres.openai.azure.com",
            "https://myres.openai.azure.com/openai/deployments/gpt4o/chat/completions"
            f"?api-version={DEFAULT_API_VERSION}",
        ),
        (
            "https://myres.openai.azure.com/openai/?api-version=2024-02-01",
            "https://myres.openai.azure.com/openai/deployments/gpt4o/chat/completions"
            "?api-version=2024-02-01",
        ),
        (
            "https://myres.openai.azure.com/openai/deployments/other?api-version=2024-06-01",
            "https://myres.openai.azure.com/openai/deployments/other/chat/completions"
            "?api-version=2024-06-01",
        ),
        (
            "https://gw.example/openai/deployments/x/chat/completions?api-version=2025-01-01-preview",
            "https://gw.example/openai/deployments/x/chat/completions"
            "?api-version=2025-01-01-preview",
        ),
        (
            "https://gw.example/azure/?tenant=a",
            "https://gw.example/azure/openai/deployments/gpt4o/chat/completions"
            f"?tenant=a&api-version={DEFAULT_API_VERSION}",
        ),
    ],
)
def test_deployment_url(endpoint: str, url: str) -> None:
    assert str(deployment_url(endpoint, "gpt4o")) == url


async def test_api_version_comes_from_the_endpoint(upstream: Upstream) -> None:
    await upstream.call(endpoint=upstream.base + "/?api-version=2024-02-01")
    path, headers, _ = upstream.received[-1]
    assert path == DEPLOYMENT_PATH + "?api-version=2024-02-01"
    assert "Authorization" not in headers
    assert headers["api-key"] == PROFILE.key_value()


async def test_without_an_endpoint_there_is_nowhere_to_go() -> None:
    target = Upstream(PROFILE).target(endpoint="")
    assert AzureOpenAIAdapter().endpoint_for(target) == ""
    with pytest.raises(BadRequest, match="no endpoint"):
        await Upstream(PROFILE).call(endpoint="")


async def test_a_relative_endpoint_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="invalid endpoint"):
        await Upstream(PROFILE).call(endpoint="myres.openai.azure.com")


async def test_content_filter_error_is_content_filtered(upstream: Upstream) -> None:
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy. Please modify your prompt and retry.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation"},
        }
    }
    upstream.reply = replying(body, 400, {"apim-request-id": "apim-1"})
    with pytest.raises(ContentFiltered) as info:
        await upstream.call()
    assert not info.value.retryable
    assert info.value.request_id == "apim-1"


async def test_filtered_answer_without_content_is_content_filtered(upstream: Upstream) -> None:
    body = PROFILE.success("", "content_filter", (30, 0))
    body["choices"][0]["message"]["content"] = None
    upstream.reply = replying(body, 200, {"apim-request-id": "apim-2"})
    with pytest.raises(ContentFiltered) as info:
        await upstream.call()
    assert (info.value.status, info.value.request_id) == (200, "apim-2")


async def test_partly_filtered_answer_is_returned(upstream: Upstream) -> None:
    upstream.reply = replying(PROFILE.success("Once upon", "content_filter", (30, 2)))
    result = await upstream.call(ProviderRequest(prompt="a story"))
    assert (result.text, result.finish_reason) == ("Once upon", "content_filter")
