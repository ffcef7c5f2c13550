"""A failing run must not leak an API key: not in logs, metrics, topics, settings, errors or
the spans exported to a collector.

The providers here are hostile: they echo the key they received back in JSON error bodies,
HTML error pages, malformed 200 bodies and request-id headers; one never answers, one port
refuses. The worker logs at DEBUG in JSON; afterwards every place a key could surface is
searched for the key and for any long piece of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import prometheus_client
import psycopg
import pytest
from aiohttp import web
from psycopg import sql

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.calling.caller import Caller, CallFailed
from llm_worker.worker.config import Settings
from llm_worker.worker.ops.logs import JsonFormatter
from tests.integration import kafka_helpers as kh
from tests.integration.otlp_receiver import Receiver, attr_value, otlp_receiver
from tests.unit.test_adapter_contract import (
    MODEL,
    PROFILES,
    Anthropic,
    Profile,
    Upstream,
    free_port,
    serve,
)

pytestmark = pytest.mark.integration

WINDOW = 12
"""A piece of a secret this long found anywhere counts as a leak."""

MODES = {  # how the hostile server answers → the error type the completion must carry
    "echo401": "auth_error",
    "echo500": "server_error",
    "echo200": "server_error",  # a 2xx body that does not parse: retryable, held to the deadline
}


def _pieces(secret: str) -> set[str]:
    return {secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1)}


class Hostile:
    """Plays every provider at `/<profile id>/<mode>/...`, echoing the key it was sent."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.profiles = {p.id: p for p in PROFILES}
        self.seen: dict[tuple[str, str], list[str]] = {}  # (profile, mode) → keys received
        up.reply = self.answer

    def endpoint(self, profile: Profile, mode: str) -> str:
        return profile.endpoint(f"{self.up.base}/{profile.id}/{mode}")

    async def answer(self, request: web.Request) -> web.StreamResponse:
        _, pid, mode, *_ = request.path.split("/")
        profile = self.profiles[pid]
        key = request.headers.get(profile.key_header, "").removeprefix(profile.key_prefix)
        self.seen.setdefault((pid, mode), []).append(key)
        if mode == "slow":
            await asyncio.sleep(60)  # cancelled when the worker gives up on the request
        echo_headers = {profile.request_id_header: f"req-{key}"}
        if mode == "echo401":
            body = profile.error(401, f"Incorrect API key provided: {key}")
            if isinstance(profile, Anthropic):
                body["request_id"] = f"req_{key}"
            return web.json_response(body, status=401, headers=echo_headers)
        if mode == "echo500":
            page = f"<html><body><h1>Internal error</h1><p>while using key {key}</p></body></html>"
            return web.Response(
                status=500, text=page, content_type="text/html", headers=echo_headers
            )
        if mode == "echo200":
            return web.Response(text=f"your key is {key}", headers=echo_headers)
        if mode == "long401":  # the key starts just before the 200-character excerpt ends
            body = profile.error(401, "x" * 160 + f" key={key} was rejected")
            return web.json_response(body, status=401)
        if mode == "escaped401":  # a gateway that escapes: every other character as \u00XX
            escaped = "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(key))
            body = profile.error(401, "x" * 170 + " key=KEY was rejected")
            text = json.dumps(body).replace("KEY", escaped, 1)
            return web.Response(text=text, status=401, content_type="application/json")
        raise AssertionError(f"unknown mode {mode}")


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    async with serve(Profile("openai_compatible")) as up:
        yield Hostile(up)


class LogCapture(logging.Handler):
    """Every record at DEBUG, formatted by the worker's JsonFormatter (and plain as well)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._json = JsonFormatter()
        self._plain = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self._json.format(record))
        self.lines.append(self._plain.format(record))
        if record.exc_info:
            self.lines.append(self._plain.formatException(record.exc_info))


@pytest.fixture
def debug_logs() -> Iterator[LogCapture]:
    root = logging.getLogger()
    handler = LogCapture()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def failures(monkeypatch: pytest.MonkeyPatch) -> list[CallFailed]:
    """The exceptions behind every error completion (a spy on `Caller.call`)."""
    caught: list[CallFailed] = []
    original = Caller.call

    async def spy(self: Caller, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except CallFailed as exc:
            caught.append(exc)
            raise

    monkeypatch.setattr(Caller, "call", spy)
    return caught


def _exception_texts(exc: BaseException) -> Iterator[str]:
    """str/repr/args of the exception, of the provider error it carries and of their causes."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield str(e)
        yield repr(e)
        yield repr(e.args)
        yield "".join(traceback.format_exception(e))
        yield repr({k: v for k, v in vars(e).items() if not isinstance(v, BaseException)})
        todo.extend(
            x
            for x in (getattr(e, "error", None), e.__cause__, e.__context__)
            if isinstance(x, BaseException)
        )


def _leaks(secrets: Iterable[str], texts: Iterable[str | bytes]) -> list[str]:
    pieces = {piece: secret for secret in secrets for piece in _pieces(secret)}
    found = []
    for text in texts:
        s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for piece in pieces:
            if piece in s:
                found.append(f"{piece!r} in {s[:300]!r}")
                break
    return found


def _record_parts(record: kh.Record) -> list[bytes]:
    """Value, key and every header of a Kafka record."""
    headers = [name.encode() + b"=" + (value or b"") for name, value in record.headers.items()]
    return [record.value or b"", record.key or b"", *headers]


@pytest.fixture
async def collector() -> AsyncIterator[Receiver]:
    async with otlp_receiver() as receiver:
        yield receiver


def _span_texts(collector: Receiver) -> Iterator[str]:
    """Every attribute of every span, its events and its links, and the status message."""
    for _, span in collector.spans():
        yield span.name
        yield span.status.message
        for attrs in (
            span.attributes,
            *(e.attributes for e in span.events),
            *(link.attributes for link in span.links),
        ):
            for a in attrs:
                yield f"{a.key}={attr_value(a.value)}"


def _dsn_with_password(dsn: str, password: str) -> str | None:
    """The embedded server trusts local connections: give its URL a password to hide."""
    if dsn.startswith("postgresql://postgres:@"):
        return dsn.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)
    return None


async def test_failing_providers_never_leak_the_key(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hostile: Hostile,
    debug_logs: LogCapture,
    failures: list[CallFailed],
    collector: Receiver,
) -> None:
    file_key = f"sk-file-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
    env_key = f"sk-env-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
    sasl_password = f"sasl-{uuid.uuid4().hex}"
    db_password = f"pgpw-{uuid.uuid4().hex}"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "leaky-file-key").write_text(file_key + "\n", encoding="utf-8")
    env_name = f"LEAKY_ENV_KEY_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env_name, env_key)  # read by the SecretStore the App builds
    monkeypatch.setenv("LLM_WORKER_KAFKA_SASL_PASSWORD", sasl_password)  # → sasl.password
    env_secret = env_name.lower()  # no such file: the store falls back to $LEAKY_ENV_KEY_...
    guarded = [file_key, env_key, sasl_password]

    overrides: dict[str, Any] = {
        "secrets_dir": str(secrets_dir),
        "max_attempts": 2,
        # every span exported, prompt and answer text included
        "otel_env": {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url},
        "trace_content": True,
    }
    dsn = _dsn_with_password(pg_dsn, db_password)
    if dsn is not None:
        overrides["database_url"] = dsn
        guarded.append(db_password)
    s = make_settings(**overrides)
    assert s.kafka_extra.get("sasl.password") == sasl_password

    rows: list[tuple[ModelRow, str, str]] = []  # row, expected error type, key it sends
    for i, profile in enumerate(PROFILES):
        for n, (mode, etype) in enumerate(MODES.items()):
            from_file = (i + n) % 2 == 0
            secret, key = ("leaky-file-key", file_key) if from_file else (env_secret, env_key)
            row = ModelRow(
                model_id=f"{profile.id}-{mode}",
                provider=profile.provider,
                endpoint=hostile.endpoint(profile, mode),
                upstream_model=MODEL,
                api_key_secret=secret,
                timeout_ms=10_000,
            )
            rows.append((row, etype, key))
    slow = ModelRow(
        model_id="anthropic-slow",
        provider="anthropic",
        endpoint=hostile.endpoint(Anthropic(), "slow"),
        upstream_model=MODEL,
        api_key_secret="leaky-file-key",
        timeout_ms=300,
    )
    refused = ModelRow(
        model_id="openai-refused",
        provider="openai",
        endpoint=f"http://127.0.0.1:{free_port()}/v1",
        upstream_model=MODEL,
        api_key_secret="leaky-file-key",
        timeout_ms=2_000,
    )
    rows += [(slow, "timeout", file_key), (refused, "connection_error", file_key)]
    for row, _, _ in rows:
        upsert_row(pg_dsn, row)

    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 2)
    prompts = [
        {"id": f"leak-{row.model_id}-{i}", "model": row.model_id, "prompt": f"q{i} {row.model_id}"}
        for row, _, _ in rows
        for i in range(2)
    ]
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, prompts)
    await asyncio.to_thread(kh.produce, bs, s.prompts_topic, [b"{not json, to the DLQ"])

    app = App(s, http=False)
    async with app.running():
        completions = await asyncio.to_thread(
            kh.consume, bs, s.completions_topic, len(prompts), 180
        )
        dead = await asyncio.to_thread(kh.consume, bs, s.dlq_topic, 1, 60)
        exposition = prometheus_client.generate_latest(app.metrics.registry)

    # the run failed the way it should, so every place below had a chance to carry the key
    docs = {r.json()["id"]: r.json() for r in completions}
    assert sorted(docs) == sorted(p["id"] for p in prompts)
    expected = {row.model_id: etype for row, etype, _ in rows}
    for doc in docs.values():
        assert doc["status"] == "error", doc
        assert doc["error"]["type"] == expected[doc["model"]], doc
        if doc["model"].endswith(("echo401", "echo500", "echo200")):
            assert "***" in doc["error"]["message"], doc  # the echo arrived, scrubbed
    assert len(dead) == 1 and dead[0].headers["llm_worker.reason"] == b"invalid_json"
    # the spy saw the exception behind every error completion
    assert {d["error"]["message"] for d in docs.values()} <= {str(f.error) for f in failures}
    assert b"llm_worker_provider_calls_total" in exposition
    assert debug_logs.lines
    # the servers really were sent the keys
    for row, _, key in rows:
        if row is refused:
            continue
        pid, mode = row.endpoint.removeprefix(hostile.up.base).split("/")[1:3]
        assert hostile.seen[(pid, mode)], row.model_id
        assert set(hostile.seen[(pid, mode)]) == {key}, row.model_id

    # the attempts that met the echoing servers were traced (as errors, with their types)
    traced = set(_span_texts(collector))
    assert {f"error.type={t}" for t in MODES.values()} <= traced

    places: dict[str, list[str | bytes]] = {
        "logs": list(debug_logs.lines),
        "metrics": [exposition, prometheus_client.generate_latest()],
        "completions": [part for r in completions for part in _record_parts(r)],
        "dlq": [part for r in dead for part in _record_parts(r)],
        "settings": [repr(app.settings), str(app.settings)],
        "exceptions": [text for exc in failures for text in _exception_texts(exc)],
        "spans": [*collector.bodies, *_span_texts(collector)],
    }
    for place, texts in places.items():
        assert texts, place
        assert _leaks(guarded, texts) == [], place


@pytest.mark.parametrize("mode", ["long401", "escaped401"])
async def test_a_key_cut_by_the_message_excerpt_does_not_leak(
    make_settings: Callable[..., Settings],
    pg_dsn: str,
    tmp_path: Path,
    hostile: Hostile,
    mode: str,
) -> None:
    key = f"sk-cut-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "cut-key").write_text(key, encoding="utf-8")
    s = make_settings(secrets_dir=str(secrets_dir), max_attempts=1)
    profile = PROFILES[0]
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="cut",
            provider=profile.provider,
            endpoint=hostile.endpoint(profile, mode),
            upstream_model=MODEL,
            api_key_secret="cut-key",
            timeout_ms=10_000,
        ),
    )
    bs = s.kafka_bootstrap_servers
    await asyncio.to_thread(kh.create_topic, bs, s.prompts_topic, 1)
    prompt = {"id": "cut-1", "model": "cut", "prompt": "hello"}
    await asyncio.to_thread(kh.produce_prompts, bs, s.prompts_topic, [prompt])
    async with App(s, http=False).running():
        out = await asyncio.to_thread(kh.consume, bs, s.completions_topic, 1, 60)
    assert len(out) == 1
    doc = out[0].json()
    assert doc["status"] == "error" and doc["error"]["type"] == "auth_error"
    assert hostile.seen[(profile.id, mode)] == [key]
    assert _leaks([key], [out[0].value, doc["error"]["message"]]) == []


# -- the PostgreSQL password (issue 21, finding 3) ----------------------------------------------


class PasswordPostgres:
    """A PostgreSQL of the test's own where one role must log in with a password (scram)."""

    def __init__(self, dsn: str) -> None:
        self.admin = dsn  # trusted: the unix socket, no password
        self.socket = parse_qs(urlsplit(dsn).query)["host"][0]
        self.role = f"leak_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(self.role))
            )
            row = conn.execute("SHOW hba_file").fetchone()
            assert row is not None
            hba = Path(row[0])
            hba.write_text(f"local all {self.role} scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")

    def set_password(self, password: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(self.role), sql.Literal(password)
                )
            )

    def url(self, password: str, *, encode: bool, query: str = "") -> str:
        written = quote(password, safe="") if encode else password
        return f"postgresql://{self.role}:{written}@/postgres?host={self.socket}{query}"

    def keyvalue(self, password: str) -> str:
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        return f"host={self.socket} dbname=postgres user={self.role} password='{quoted}'"


@pytest.fixture
def password_pg(own_postgres: Any) -> PasswordPostgres:
    return PasswordPostgres(own_postgres.dsn)


def _password_forms(password: str) -> list[str]:
    return sorted({password, quote(password, safe=""), quote(password)})


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run_until(env: dict[str, str], marker: str | None, tmp: Path) -> tuple[int, str, str]:
    """`llm-worker run` until its log shows `marker` (then SIGTERM) or it exits by itself."""
    out, err = tmp / "out", tmp / "err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_worker.worker.cli", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
        )
        try:
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if marker is not None and marker in err.read_text("utf-8", "replace"):
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.2)
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return code, out.read_text("utf-8", "replace"), err.read_text("utf-8", "replace")


def _db_cases(pg: PasswordPostgres) -> list[tuple[str, str, str, bool]]:
    """(name, the role's password, DATABASE_URL, whether it logs in)."""
    tag = uuid.uuid4().hex[:12]
    qmark, pct, quotes = f"pw?x#y:{tag}", f"p@ss/w:rd %{tag}", f"sp ace'q\\b-{tag}"
    return [
        ("url with ? and #", qmark, pg.url(qmark, encode=False), True),
        ("url with ? and #, wrong", qmark, pg.url(qmark + "-wrong", encode=False), False),
        ("url percent-encoded", pct, pg.url(pct, encode=True), True),
        ("url percent-encoded, wrong", pct, pg.url("x" + pct, encode=True), False),
        ("url with a bare %", f"100%zz-{tag}", pg.url(f"100%zz-{tag}", encode=False), False),
        ("url with spaces", f"s p-{tag}", pg.url(f"s p-{tag}", encode=False), False),
        ("key=value, quoted", quotes, pg.keyvalue(quotes), True),
        ("key=value, wrong", quotes, pg.keyvalue(quotes + " "), False),
        (
            "url with sslpassword",
            pct,
            pg.url(pct, encode=True, query=f"&sslpassword=ssl%23pw-{tag}"),
            True,
        ),
    ]


def _db_secrets(password: str, dsn: str) -> list[str]:
    """Every form of the role's password and of any other password the DSN holds."""
    from llm_worker.registry.dsn import dsn_secrets

    found = set(_password_forms(password))
    for secret in dsn_secrets(dsn):
        if len(secret) >= WINDOW:
            found.add(secret)
    return sorted(found)


def test_migrate_never_prints_the_database_password(
    password_pg: PasswordPostgres, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_WORKER_", "DATABASE"))}
    for name, password, dsn, logs_in in _db_cases(password_pg):
        password_pg.set_password(password)
        secrets = _db_secrets(password, dsn)
        via_file = tmp_path / "database-url"
        via_file.write_text(dsn + "\n", encoding="utf-8")
        for env in ({**base, "DATABASE_URL": dsn}, {**base, "DATABASE_URL_FILE": str(via_file)}):
            proc = _cli(env, "migrate")
            assert proc.returncode == (0 if logs_in else 1), (name, proc.stderr)
            if logs_in:
                assert "database is up to date" in proc.stdout, name
            else:
                assert "cannot migrate" in proc.stderr and "Traceback" not in proc.stderr, name
            assert _leaks(secrets, [proc.stdout, proc.stderr]) == [], name


def test_run_never_logs_the_database_password(
    password_pg: PasswordPostgres, worker_env: dict[str, str], tmp_path: Path
) -> None:
    cases = {name: (pw, dsn, ok) for name, pw, dsn, ok in _db_cases(password_pg)}
    for name in (
        "url with ? and #",
        "key=value, quoted",
        "url percent-encoded, wrong",
        "url with a bare %",
    ):
        password, dsn, logs_in = cases[name]
        password_pg.set_password(password)
        env = {
            **worker_env,
            "DATABASE_URL": dsn,
            "LLM_WORKER_LOG_LEVEL": "DEBUG",
            "LLM_WORKER_REGISTRY_WAIT_S": "3",
            "LLM_WORKER_HTTP_PORT": str(free_port()),
        }
        run_dir = tmp_path / uuid.uuid4().hex[:6]
        run_dir.mkdir()
        code, out, err = _run_until(env, "registry: loaded" if logs_in else None, run_dir)
        if logs_in:
            assert "registry: loaded" in err and code == 0, (name, err[-3000:])
        else:
            assert code == 2 and "model registry not loaded" in err, (name, err[-3000:])
            assert "Traceback" not in err, name
        assert _leaks(_db_secrets(password, dsn), [out, err]) == [], name
