"""Endpoint URLs with credentials: masked by parsing wherever a URL is shown or used as a key
(issue 21, finding 9: `ftp://user:secret@...` put the secret in a `bad_request` message), and
sent as the row asks (finding 4b)."""

from __future__ import annotations

import base64

import pytest

from llm_worker.adapters.errors import BadRequest
from llm_worker.adapters.sessions import SessionPool
from llm_worker.adapters.urls import redact_url, strip_userinfo, url_secrets
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import resolve
from llm_worker.worker.config import ConfigError, endpoint_url_key, load_settings
from tests.unit.test_adapter_contract import API_KEY, PROFILES, PROMPT, Profile, serve
from tests.unit.test_attempt import Setup

# (endpoint, the secret that must not show, how it is shown)
CASES = [
    ("https://user:s3cret@host/v1", "s3cret", "https://***@host/v1"),
    ("ftp://user:s3cret@host/x", "s3cret", "ftp://***@host/x"),
    ("https://user:p@ss-word@host/v1", "ss-word", "https://***@host/v1"),  # '@' in it
    ("https://user:p%40ss-word@host:8443/v1", "ss-word", "https://***@host:8443/v1"),
    ("https://user:pa/ss-word@host/v1", "ss-word", "https://***@host/v1"),  # ends the authority
    ("https://user:pa?ss-word@host/v1", "ss-word", "https://***@host/v1"),
    ("https://user:pa#ss-word@host/v1", "ss-word", "https://***@host/v1"),
    ("https://sk-token-only@host/v1", "sk-token-only", "https://***@host/v1"),
    ("user:s3cret@host/v1", "s3cret", "***@host/v1"),  # no scheme at all
    ("http://[::1:s3cret@host/v1", "s3cret", "<unparseable URL>"),
]


@pytest.mark.parametrize(("url", "secret", "shown"), CASES)
def test_credentials_are_masked_whatever_they_hold(url: str, secret: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert secret not in strip_userinfo(url)
    assert secret not in endpoint_url_key(url)
    assert any(secret in s for s in url_secrets(url)) or shown == "<unparseable URL>"


@pytest.mark.parametrize(
    "url", ["https://api.openai.com/v1", "http://127.0.0.1:8000/v1/", "https://h/v1?api-version=1"]
)
def test_urls_without_credentials_are_left_as_they_are(url: str) -> None:
    assert redact_url(url) == strip_userinfo(url) == url
    assert url_secrets(url) == ()
    assert endpoint_url_key(url) == url.rstrip("/")


def test_the_key_of_an_endpoint_drops_its_credentials() -> None:
    # rate limits configured for the bare URL apply to a row that calls it with credentials
    assert endpoint_url_key("https://u:p@ss@api.example.com/v1/") == "https://api.example.com/v1"


@pytest.mark.parametrize(("url", "secret", "shown"), CASES)
def test_an_endpoint_that_cannot_be_called_is_named_without_its_secret(
    url: str, secret: str, shown: str
) -> None:
    url = url.replace("https://", "ftp://", 1)  # not http(s): refused by the pool
    with pytest.raises(ValueError, match="not an absolute http") as info:
        SessionPool.origin(url)
    assert secret not in str(info.value)
    assert "***" in str(info.value) or "unparseable" in str(info.value)


def test_endpoint_limits_are_logged_with_every_url_masked() -> None:
    raw = (
        '{"https://u:p@ss-1@a.example/v1": {"rpm": 5}, "https:\\/\\/u:ss-2@b.example": {"rpm": 1}}'
    )
    text = repr(load_settings({"LLM_WORKER_ENDPOINT_LIMITS": raw}))
    assert "ss-1" not in text and "ss-2" not in text
    assert '"https://***@a.example/v1":{"rpm":5}' in text
    assert '"https://***@b.example":{"rpm":1}' in text


@pytest.mark.parametrize("endpoint", ["ftp://user:s3cret@host/x", "https://user:s3/cret@host/v1"])
async def test_a_row_endpoint_that_cannot_be_called_is_a_bad_request_without_the_secret(
    endpoint: str,
) -> None:
    setup = Setup(sessions=SessionPool())
    row = ModelRow(model_id="m", provider="openai", endpoint=endpoint, upstream_model="u")
    cand = resolve({"m": row}, "m")[0]
    with pytest.raises(BadRequest) as info:
        setup.attempts.prepare(cand)
    assert "s3" not in str(info.value) and "cret" not in str(info.value)
    assert "the registry endpoint of m/primary cannot be called" in str(info.value)
    assert "***@host" in str(info.value)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
async def test_credentials_in_the_endpoint_url_with_an_api_key(profile: Profile) -> None:
    """Finding 4b: aiohttp's ValueError (URL credentials and an Authorization header) became
    an internal_error. Where the key goes in its own header both are sent (the URL's as Basic
    auth); where both would be the Authorization header it is a clear bad_request."""
    async with serve(profile) as up:
        endpoint = profile.endpoint(up.base.replace("://", "://gw-user:gw-s3cret@"))
        basic = "Basic " + base64.b64encode(b"gw-user:gw-s3cret").decode()
        if profile.key_header.lower() == "authorization":
            with pytest.raises(BadRequest) as info:
                await up.call(PROMPT, endpoint=endpoint)
            assert "carries credentials" in str(info.value)
            assert "s3cret" not in str(info.value) and API_KEY not in str(info.value)
            assert not up.received
            await up.call(PROMPT, endpoint=endpoint, api_key=None)  # the URL's alone: sent
            assert up.received[-1][1]["Authorization"] == basic
        else:
            await up.call(PROMPT, endpoint=endpoint)
            headers = up.received[-1][1]
            assert headers[profile.key_header] == profile.key_value()
            assert headers["Authorization"] == basic


@pytest.mark.parametrize("limit", ['{"rpm": -1}', '"lots"', '{"rph": 5}'])
def test_a_bad_endpoint_limit_is_refused_without_the_urls_credentials(limit: str) -> None:
    raw = '{"https://u:ss-3@a.example/v1": ' + limit + "}"
    with pytest.raises(ConfigError) as info:
        load_settings({"LLM_WORKER_ENDPOINT_LIMITS": raw}).limits("endpoint")
    assert "ss-3" not in str(info.value)
    assert "'https://***@a.example/v1'" in str(info.value)
