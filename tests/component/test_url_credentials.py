"""Issue 21, findings 9 and 4b, through the whole worker: a row whose endpoint carries
credentials. `ftp://user:secret@...` put the secret in the `bad_request` completion; credentials
in the URL beside an `api_key_secret` made aiohttp raise ValueError, an `internal_error` with no
fallback. Now the completion names the endpoint masked, the second row's fallback answers, and
no completion, log line or metric carries the password."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.models import ModelRow

from .conftest import Harness, run_app

SECRETS = ("s3cret-9f", "pa/ss-7c", "gw-pw-4e")


def _rows(h: Harness) -> list[ModelRow]:
    fake = h.provider.endpoint("default")
    return [
        ModelRow(
            model_id="ftp",
            provider="fake",
            endpoint="ftp://user:s3cret-9f@host/v1",
            upstream_model="u",
        ),
        ModelRow(
            model_id="slash",
            provider="openai",
            endpoint="https://user:pa/ss-7c@host/v1",  # a '/' in the password
            upstream_model="u",
        ),
        ModelRow(
            model_id="both",
            provider="openai_compatible",
            endpoint=fake.replace("://", "://gw:gw-pw-4e@"),
            upstream_model="u",
            api_key_secret="gw-key",
            fallback_provider="fake",
            fallback_endpoint=fake,
        ),
    ]


async def test_endpoint_credentials_never_reach_a_completion_a_log_or_a_metric(
    provider: FakeServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "gw-key").write_text("sk-gw-0123456789")
    env = {"LLM_WORKER_REQUEST_DEADLINE_S": "3", "LLM_WORKER_SECRETS_DIR": str(tmp_path)}
    with caplog.at_level(logging.DEBUG):
        async with run_app(provider, env, rows=_rows) as h:
            h.send(*({"id": m, "model": m, "prompt": "x"} for m in ("ftp", "slash", "both")))
            out: dict[str, Any] = await h.wait(["ftp", "slash", "both"])
            await h.settled()
            metrics = prometheus_client.generate_latest(h.app.metrics.registry).decode()
    for rid in ("ftp", "slash"):
        assert out[rid]["status"] == "error"
        assert out[rid]["error"]["type"] == "bad_request"
        assert (
            f"the registry endpoint of {rid}/primary cannot be called"
            in out[rid]["error"]["message"]
        )
        assert "***@host" in out[rid]["error"]["message"]
    assert out["both"]["status"] == "ok", out["both"]
    assert out["both"]["fallback_used"] is True
    everything = "\n".join([*(str(d) for d in h.completions()), caplog.text, metrics])
    for secret in SECRETS:
        assert secret not in everything
        assert secret.replace("/", "%2F") not in everything
