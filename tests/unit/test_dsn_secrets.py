"""A PostgreSQL password never shows in what the worker prints about its DSN (issue 21): the
DSN is redacted by parsing it as libpq does, and libpq's own errors lose every form of it.

Each DSN below holds the password `secret` (as libpq reads it); the table covers the
characters that broke the old patterns: `?` and `#` (libpq keeps them inside the userinfo),
`%` (escaped, and unescaped: libpq refuses the DSN and quotes the token), `@`, `/`, `:`,
spaces and quotes, `sslpassword=`, and `key=value` strings with quoted values."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest

from llm_worker.registry.dsn import UNPARSEABLE, redact_dsn, redact_error
from llm_worker.worker.config import ConfigError, load_settings

# (dsn, the secrets it holds as written and as meant, the host that must still show or None)
CASES: list[tuple[str, tuple[str, ...], str | None]] = [
    ("postgresql://app:pa?ss#wd@db.internal:5432/reg", ("pa?ss#wd",), "db.internal"),
    ("postgresql://app:pa#ss?x=1@db.internal/reg", ("pa#ss?x=1",), "db.internal"),
    ("postgresql://app:p%40ss%2Fw%3Ar%20d@db.internal/reg", ("p@ss/w:r d",), "db.internal"),
    ("postgresql://app:100%25pure@db.internal/reg", ("100%pure",), "db.internal"),
    ("postgresql://app:100%pure-pw@db.internal/reg", ("100%pure-pw",), "db.internal"),
    ("postgresql://app:%zz-secret@[::1]:5432/reg", ("%zz-secret",), "::1"),
    ("postgresql://app:sp ace pw@db.internal/reg", ("sp ace pw",), "db.internal"),
    ("postgres://app:only:colons:here@db.internal/reg", ("only:colons:here",), "db.internal"),
    ("postgresql://app:p@ss/w0rd@db.internal/reg", ("p@ss/w0rd",), None),
    ("postgresql://app:pass/w0rd@db.internal/reg", ("pass/w0rd",), None),
    (
        "postgresql://app@db.internal/reg?sslmode=verify-full&sslpassword=key%20pass"
        "&password=se%23cret",
        ("key pass", "se#cret"),
        "db.internal",
    ),
    (
        "postgresql://app:pw-in-url@/reg?host=/run/pg&sslpassword=k3y-pass",
        ("pw-in-url", "k3y-pass"),
        "/run/pg",
    ),
    (
        "host=db.internal user=app password='sp ace\\'quote' dbname=reg",
        ("sp ace'quote",),
        "db.internal",
    ),
    (
        "host=db.internal password=plain-pw sslpassword='two words'",
        ("plain-pw", "two words"),
        "db.internal",
    ),
    ("host = db.internal  password = 'a\\\\b#c?d'", ("a\\b#c?d",), "db.internal"),
    ("host=db.internal password='unterminated pw", ("unterminated pw",), None),
    ("host=db.internal password=x=y=z sslpassword", ("x=y=z",), None),
]


def _forms(secret: str) -> set[str]:
    """The secret as meant, percent-encoded, and with quotes/backslashes escaped for key=value."""
    escaped = secret.replace("\\", "\\\\").replace("'", "\\'")
    return {secret, quote(secret, safe=""), quote(secret), escaped}


@pytest.mark.parametrize(("dsn", "secrets", "host"), CASES)
def test_the_shown_dsn_holds_no_password_and_still_names_the_host(
    dsn: str, secrets: tuple[str, ...], host: str | None
) -> None:
    shown = redact_dsn(dsn)
    for secret in secrets:
        for form in _forms(secret):
            assert form not in shown, (dsn, shown)
    if host is not None:
        assert host in shown, shown
    else:
        assert shown == UNPARSEABLE


@pytest.mark.parametrize(("dsn", "secrets", "host"), CASES)
def test_libpq_errors_about_the_dsn_hold_no_password(
    dsn: str, secrets: tuple[str, ...], host: str | None
) -> None:
    # the real client: a DSN it cannot parse raises at once, one it can parse fails to connect
    # (point every parseable one at a socket directory that does not exist)
    target = dsn.replace("db.internal", "/nonexistent-llm-worker").replace("[::1]:5432", "")
    with pytest.raises(psycopg.Error) as info:
        psycopg.connect(target, connect_timeout=1)
    raw = str(info.value)
    text = redact_error(info.value, target)
    for secret in secrets:
        for form in _forms(secret):
            assert form not in text, (target, raw, text)
    assert text.strip()


def test_a_dsn_without_a_password_is_shown_as_written() -> None:
    for dsn in (
        "postgresql://postgres:@/postgres?host=/tmp/x",
        "postgresql://app@db.internal:5432/reg?sslmode=require",
        "host=db.internal user=app dbname=reg",
    ):
        assert redact_dsn(dsn) == dsn


def test_an_unescaped_percent_is_reported_without_the_token() -> None:
    dsn = "postgresql://app:100%pure-pw@db.internal/reg"
    with pytest.raises(psycopg.Error) as info:
        psycopg.connect(dsn)
    assert "100%pure-pw" in str(info.value)  # libpq's own text quotes it
    assert redact_error(info.value, dsn) == 'invalid percent-encoded token: "***"'
    assert redact_dsn(dsn) == f"{UNPARSEABLE} (host db.internal)"


@pytest.mark.parametrize(("dsn", "secrets", "host"), CASES)
def test_settings_repr_and_config_errors_hold_no_password(
    dsn: str, secrets: tuple[str, ...], host: str | None
) -> None:
    s = load_settings({"DATABASE_URL": dsn}, only=("database_url",))
    for secret in secrets:
        assert secret not in repr(s)
    bad = dsn.replace("postgresql://", "mysql://").replace("postgres://", "mysql://")
    if bad.startswith("mysql://") and "=" not in bad:  # else it passes for key=value
        with pytest.raises(ConfigError) as info:
            load_settings({"DATABASE_URL": bad}, only=("database_url",))
        for secret in secrets:
            for form in _forms(secret):
                assert form not in str(info.value), str(info.value)


def test_every_log_line_of_run_loses_the_database_and_kafka_passwords(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The last line of defence: whatever logs them (a traceback quoting a libpq error, a
    library's own message), `llm-worker run`'s log lines do not carry the passwords."""
    import logging

    from llm_worker.worker.cli.main import _secrets
    from llm_worker.worker.ops.logs import configure_logging

    dsn = 'postgresql://app:db"pass\\word@db.internal/reg'
    s = load_settings(
        {"DATABASE_URL": dsn, "LLM_WORKER_KAFKA_SASL_PASSWORD": "kafka-pw-1"},
        only=("database_url", "kafka_extra"),
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for fmt in ("json", "text"):
            configure_logging("INFO", fmt, secrets=_secrets(s))
            log = logging.getLogger("llm_worker.test")
            log.info("connecting with %s and kafka-pw-1", 'db"pass\\word')
            try:
                raise RuntimeError(f"libpq said: {dsn}")
            except RuntimeError:
                log.exception("crashed")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert err.count("***") >= 6, err
    for form in ('db"pass\\word', 'db\\"pass\\\\word', "kafka-pw-1"):
        assert form not in err, err


def test_the_dev_stack_banner_shows_a_dsn_without_its_password() -> None:
    from llm_worker.devkit.dev import _next_steps

    local = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert local in _next_steps(load_settings({"DATABASE_URL": local}), 8080)
    theirs = "postgresql://app:pa?ss#wd@db.internal/reg"
    text = _next_steps(load_settings({"DATABASE_URL": theirs}), 8080)
    assert "pa?ss#wd" not in text and "postgresql://app:***@db.internal/reg" in text


def test_registry_commands_report_an_unreachable_database_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_worker.worker.cli.main import main

    for dsn in (
        "postgresql://app:pa?ss#wd-1@/reg?host=/nonexistent-llm-worker",
        "postgresql://app:100%pa?ss#wd-1@/reg?host=/nonexistent-llm-worker",
    ):
        monkeypatch.setenv("DATABASE_URL", dsn)
        assert main(["registry", "list"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("registry unavailable: cannot connect to PostgreSQL at "), err
        assert "pa?ss#wd-1" not in err and "Traceback" not in err
