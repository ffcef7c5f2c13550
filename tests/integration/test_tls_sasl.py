"""The worker's smoke test over TLS, configured the way the README tells a user to: Apache Kafka
with a SASL_SSL listener only (SCRAM-SHA-512, a certificate from a CA the test makes), and a
PostgreSQL server that refuses connections without TLS and asks for a password
(`sslmode=verify-full&sslrootcert=...`). `llm-worker migrate`, `registry list`, `run` and
`send` all go through them; then no output of any of them, and no record on the topics, holds
either password or a piece of one (raw or percent-encoded). The passwords carry `@ : / ? # %`,
which a URL must escape.

Trusting the wrong CA or giving a wrong SASL password fails at once with an error that says
why (the TLS handshake, the authentication) and still shows no password.

Apache Kafka only (Tansu has no TLS or SASL listener): on Tansu the tests skip. The PostgreSQL
is the Debian `postgresql` package's (the `pgserver` wheel has no OpenSSL); `.ci/run` installs
it when it is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llm_worker.devkit.devstack import free_port
from llm_worker.devkit.kafka_broker import KafkaBroker, KafkaBrokerError, SaslSsl
from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from tests.integration.chaos.harness import FakeProcess
from tests.integration.conftest import ON_TANSU
from tests.integration.tls_helpers import Certs, TlsPostgres, find_postgres_bindir, make_certs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        ON_TANSU,
        reason="SASL_SSL needs Apache Kafka: runs in the Apache Kafka pass "
        "(make test-kafka, LLM_WORKER_TEST_BROKER=kafka)",
    ),
    # one process runs the module: its broker and PostgreSQL are started once per module
    pytest.mark.xdist_group("tls_sasl"),
]

KAFKA_USER = "llm-worker"
KAFKA_PASSWORD = f"k@fka:p/w?#%{secrets.token_hex(8)}"
PG_PASSWORD = f"pg@s:s/w?#%&{secrets.token_hex(8)}"
WINDOW = 8
"""A piece of a password this long found anywhere counts as a leak."""


def _unavailable(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}, and CI must run every integration test")
    pytest.skip(what)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def kafka_tls(certs: Certs) -> Iterator[KafkaBroker]:
    tls = SaslSsl(certs.keystore, certs.keystore_password, {KAFKA_USER: KAFKA_PASSWORD})
    try:
        broker = KafkaBroker(sasl_ssl=tls).start()
    except KafkaBrokerError as exc:
        _unavailable(f"Apache Kafka is not available here: {exc}")
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def pg_tls(certs: Certs) -> Iterator[TlsPostgres]:
    bindir = find_postgres_bindir()
    if bindir is None:
        _unavailable(
            "no PostgreSQL server with TLS (/usr/lib/postgresql/*/bin/postgres): "
            "`apt-get install postgresql` (.ci/run does)"
        )
    assert bindir is not None
    server = TlsPostgres(bindir, certs, PG_PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


def _env(kafka: KafkaBroker, certs: Certs, dsn: str, **extra: str) -> dict[str, str]:
    """The environment a user writes for a SASL_SSL cluster and a TLS database (README)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLM_WORKER_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    uid = uuid.uuid4().hex[:8]
    return {
        **base,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "LLM_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LLM_WORKER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LLM_WORKER_KAFKA_SASL_USERNAME": KAFKA_USER,
        "LLM_WORKER_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "LLM_WORKER_KAFKA_SSL_CA_LOCATION": str(certs.ca),
        "DATABASE_URL": dsn,
        "LLM_WORKER_PROMPTS_TOPIC": f"prompts_{uid}",
        "LLM_WORKER_COMPLETIONS_TOPIC": f"completions_{uid}",
        "LLM_WORKER_DLQ_TOPIC": f"prompts_{uid}.dlq",
        "LLM_WORKER_GROUP_ID": f"worker-{uid}",
        "LLM_WORKER_TOPIC_PARTITIONS": "1",
        "LLM_WORKER_HTTP_PORT": str(free_port()),
        "LLM_WORKER_LOG_LEVEL": "DEBUG",  # the most a log can say
        **extra,
    }


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _leaks(text: str) -> list[str]:
    """Every piece of either password (raw or percent-encoded) that `text` contains."""
    found = []
    for secret in (KAFKA_PASSWORD, PG_PASSWORD):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            found += [form[i : i + WINDOW] for i in range(len(form) - WINDOW + 1)]
    return [piece for piece in found if piece in text]


def _read_topic(env: dict[str, str], topic: str) -> list[bytes]:
    """Every record of `topic`, read over SASL_SSL with the user's settings."""
    conf = {
        "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": KAFKA_USER,
        "sasl.password": KAFKA_PASSWORD,
        "ssl.ca.location": env["LLM_WORKER_KAFKA_SSL_CA_LOCATION"],
        "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
    }
    c = Consumer(conf)
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[bytes] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            msgs = [m for m in c.consume(100, 0.5) if m.error() is None]
            if msgs:
                out += [m.value() or b"" for m in msgs]
                quiet_since = time.monotonic()
        return out
    finally:
        c.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the worker was not ready after {timeout:.0f} s:\n{log.read_text()}")


def test_a_prompt_over_sasl_ssl_and_tls_postgres_leaks_no_password(
    kafka_tls: KafkaBroker, pg_tls: TlsPostgres, certs: Certs, tmp_path: Path
) -> None:
    env = _env(kafka_tls, certs, pg_tls.dsn())
    outputs: dict[str, str] = {}
    migrated = _cli(env, "migrate")
    outputs["migrate"] = migrated.stdout + migrated.stderr
    assert migrated.returncode == 0, outputs["migrate"]
    fake = FakeProcess()
    try:
        upsert_row(
            env["DATABASE_URL"],
            ModelRow(model_id="m1", provider="fake", endpoint=fake.endpoint(), upstream_model="u"),
        )
        listed = _cli(env, "registry", "list")
        outputs["registry list"] = listed.stdout + listed.stderr
        assert listed.returncode == 0 and "m1" in listed.stdout, outputs["registry list"]

        log = tmp_path / "worker.log"
        with log.open("wb") as fh:
            worker = subprocess.Popen(
                [sys.executable, "-m", "llm_worker.worker.cli", "run"],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            _wait_ready(worker, env["LLM_WORKER_HTTP_PORT"], log, 120)
            sent = _cli(env, "send", "hello over TLS", "--model", "m1", "--id", "tls-1")
            outputs["send"] = sent.stdout + sent.stderr
            assert sent.returncode == 0, outputs["send"]
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(60)
        outputs["worker"] = log.read_text(errors="replace")
        assert code == 0, outputs["worker"]
    finally:
        fake.close()
    doc = json.loads(sent.stdout.strip().splitlines()[-1])
    assert doc["id"] == "tls-1" and doc["status"] == "ok" and "hello over TLS" in doc["text"]
    for topic in ("LLM_WORKER_COMPLETIONS_TOPIC", "LLM_WORKER_PROMPTS_TOPIC"):
        outputs[topic] = b"\n".join(_read_topic(env, env[topic])).decode(errors="replace")
    assert "tls-1" in outputs["LLM_WORKER_COMPLETIONS_TOPIC"]
    assert '"level":"debug"' in outputs["worker"], "the worker logged nothing to search"
    leaked = {name: _leaks(text) for name, text in outputs.items() if _leaks(text)}
    assert not leaked, f"passwords in the output: {leaked}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("other-ca", "certificate verify failed"),
        ("wrong-password", "Authentication failed"),
    ],
)
def test_a_wrong_ca_or_password_for_kafka_is_a_clear_error(
    kafka_tls: KafkaBroker, certs: Certs, pg_tls: TlsPostgres, change: str, reason: str
) -> None:
    extra = (
        {"LLM_WORKER_KAFKA_SSL_CA_LOCATION": str(certs.other_ca)}
        if change == "other-ca"
        else {"LLM_WORKER_KAFKA_SASL_PASSWORD": PG_PASSWORD}  # a password, not this one's
    )
    env = _env(kafka_tls, certs, pg_tls.dsn(), LLM_WORKER_BROKER_WAIT_S="5", **extra)
    t0 = time.monotonic()
    r = _cli(env, "run", timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and time.monotonic() - t0 < 90, out
    assert reason in out and "Traceback" not in out, out
    assert not _leaks(out), out


def test_a_wrong_ca_for_postgres_is_a_clear_error(pg_tls: TlsPostgres, certs: Certs) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    env["DATABASE_URL"] = pg_tls.dsn(ca=certs.other_ca)
    r = _cli(env, "migrate")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "certificate verify failed" in out, out
    assert "Traceback" not in out and not _leaks(out), out
