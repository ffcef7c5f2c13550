"""Values that come from operators or from untrusted input must not break the stream (issue 8):
a malformed registry endpoint, secret names that leave the secrets directory, oversized keys
and headers, and model names that would grow metric series without bound."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.secrets import MissingSecret, SecretStore
from llm_worker.adapters.sessions import SessionPool
from llm_worker.devkit.fake_server import FakeServer, start_fake_server
from llm_worker.registry.errors import UnknownModel
from llm_worker.registry.models import ModelRow, endpoint_problem
from llm_worker.registry.resolve import Candidate, resolve, validate
from llm_worker.worker.calling.caller import Caller
from llm_worker.worker.config import load_settings
from llm_worker.worker.messages import decode_prompt
from llm_worker.worker.ops.metrics import Metrics
from llm_worker.worker.ops.outcomes import OutcomeRecorder
from llm_worker.worker.pipeline import Pipeline
from llm_worker.worker.records import InputRecord, Outcome


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with await start_fake_server(shutdown_timeout=0.2, latency_ms=1) as running:
        yield running


@pytest.mark.parametrize("endpoint", ["vllm:8000/v1", "ftp://x/v1", "http://", "http://h:port/v1"])
async def test_a_malformed_primary_endpoint_fails_over_to_the_fallback(
    server: FakeServer, endpoint: str
) -> None:
    row = ModelRow(
        model_id="m",
        provider="openai_compatible",
        endpoint=endpoint,
        upstream_model="up",
        fallback_provider="fake",
        fallback_endpoint=server.endpoint(),
        fallback_model="fb",
    )
    async with SessionPool() as sessions:
        caller = Caller(sessions, SecretStore(None, env={}), Metrics(), max_attempts=2)
        result = await caller.call(
            resolve({"m": row}, "m"), ProviderRequest(prompt="hi"), deadline=time.monotonic() + 5
        )
    assert result.candidate.fallback and result.result.text.startswith("[fake:fb]")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("", True),
        ("http://vllm:8000/v1", True),
        ("https://api.openai.com/v1", True),
        ("vllm:8000/v1", False),
        ("localhost/v1", False),
        ("http://h:notaport/v1", False),
    ],
)
def test_endpoint_problem(url: str, ok: bool) -> None:
    assert (endpoint_problem(url) is None) == ok


def test_registry_validate_names_a_malformed_endpoint() -> None:
    rows = {
        "m": ModelRow(model_id="m", provider="openai", endpoint="vllm:8000/v1", upstream_model="x")
    }
    problems = validate(rows)
    assert any("m: endpoint: 'vllm:8000/v1' is not an absolute http(s) URL" in p for p in problems)


@pytest.mark.parametrize(
    "name", ["../passwd", "/etc/passwd", "a/b", "a/../a/b", "..", ".", ".hidden", ""]
)
def test_secret_names_cannot_leave_the_secrets_directory(tmp_path: Path, name: str) -> None:
    """Every name points at a file that exists (a real subdirectory `a/` with a file `b`, a
    file next to the directory, a hidden file), and an environment variable of the same
    name is set: the refusal comes from the name, not from a missing file."""
    inner = tmp_path / "secrets"
    (inner / "a").mkdir(parents=True)
    (inner / "a" / "b").write_text("key-in-a-subdirectory")
    (inner / ".hidden").write_text("hidden-key")
    (tmp_path / "passwd").write_text("not-a-key")
    env = {"A_B": "env-a-b", "A_______A_B": "env", "_HIDDEN": "env-hidden", "": "empty"}
    store = SecretStore(inner, env=env)
    with pytest.raises(MissingSecret) as info:
        store.get(name)
    assert "not a valid secret name" in str(info.value)


@pytest.mark.parametrize(
    "name", ["DATABASE_URL", "database-url", "llm_worker_kafka_sasl_password", "PGPASSWORD"]
)
def test_the_workers_own_secrets_are_not_api_keys(tmp_path: Path, name: str) -> None:
    """A registry row naming the database URL or the Kafka password (in the secrets
    directory or the environment) must not get it sent to a provider as its key."""
    (tmp_path / name).write_text("postgresql://app:db-password@db/reg")
    env = {"DATABASE_URL": "dsn", "LLM_WORKER_KAFKA_SASL_PASSWORD": "pw", "PGPASSWORD": "pw"}
    with pytest.raises(MissingSecret) as info:
        SecretStore(tmp_path, env=env).get(name)
    assert "reserved" in str(info.value)


def test_a_good_secret_name_is_read(tmp_path: Path) -> None:
    (tmp_path / "openai-prod.v2").write_text("sk-123\n")
    assert SecretStore(tmp_path, env={}).get("openai-prod.v2").reveal() == "sk-123"


def test_key_and_headers_count_against_the_size_limit() -> None:
    rej = decode_prompt(b'{"id":"a","model":"m","prompt":"p"}', max_bytes=1000,
                        max_metadata_bytes=100, extra_bytes=990)  # fmt: skip
    assert not isinstance(rej, type(None)) and getattr(rej, "reason", None) == "payload_too_large"
    assert "key and headers" in rej.message  # type: ignore[union-attr]


class _Registry:
    def resolve(self, model_id: str) -> list[Candidate]:
        raise UnknownModel(model_id)


def test_unknown_model_names_share_one_metric_series() -> None:
    settings = load_settings({})
    metrics = Metrics()
    pipeline = Pipeline(settings, _Registry(), None, metrics)  # type: ignore[arg-type]
    recorder = OutcomeRecorder(metrics)
    delivered = []
    for i in range(200):
        rec = InputRecord(
            topic="t",
            partition=0,
            offset=i,
            value=f'{{"id":"r{i}","model":"random-{i}","prompt":"p"}}'.encode(),
        )
        out = pipeline.begin(rec)
        assert isinstance(out, Outcome)
        delivered.append((rec, out, None))
    recorder.record(delivered)
    text = generate_latest(metrics.registry).decode()
    series = [line for line in text.splitlines() if line.startswith("llm_worker_completions_total")]
    assert series == ['llm_worker_completions_total{model="unknown",status="error"} 200.0']
