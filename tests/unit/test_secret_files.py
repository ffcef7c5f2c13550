"""`DATABASE_URL` and the Kafka credentials can come from files (issue 21): `<VAR>_FILE`
names the file, as with the postgres image, or a file named `<VAR>` sits in
`LLM_WORKER_SECRETS_DIR`. A file that cannot be used stops the command with exit 2 and a
message naming the variable, never a traceback, never the secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_worker.worker.cli.main import main
from llm_worker.worker.config import ConfigError, load_settings
from llm_worker.worker.secret_files import SECRET_FILE_VARS

DSN = "postgresql://app:pa%20ss?#w0rd@db.internal:5432/reg"
KAFKA_PASSWORD = "kafka pass#word "


def test_database_url_from_a_file_drops_one_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text(DSN + "\n")
    s = load_settings({"DATABASE_URL_FILE": str(path)})
    assert s.database_url == DSN
    assert "ss?#w0rd" not in repr(s) and "db.internal" in repr(s)


def test_the_kafka_password_from_a_file_keeps_its_spaces(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(KAFKA_PASSWORD + "\r\n")
    user = tmp_path / "user"
    user.write_text("svc-llm\n")
    s = load_settings(
        {
            "LLM_WORKER_KAFKA_SASL_PASSWORD_FILE": str(path),
            "LLM_WORKER_KAFKA_SASL_USERNAME_FILE": str(user),
        }
    )
    assert s.kafka_extra["sasl.password"] == KAFKA_PASSWORD
    assert s.kafka_extra["sasl.username"] == "svc-llm"
    assert not any(k.endswith(".file") for k in s.kafka_extra)  # not handed to librdkafka
    assert KAFKA_PASSWORD not in repr(s)


def test_a_kafka_property_that_is_a_file_path_is_still_passed_on() -> None:
    s = load_settings({"LLM_WORKER_KAFKA_SASL_OAUTHBEARER_ASSERTION_JWT_TEMPLATE_FILE": "/t.json"})
    assert s.kafka_extra["sasl.oauthbearer.assertion.jwt.template.file"] == "/t.json"


def test_the_secrets_directory_holds_them_when_the_environment_does_not(tmp_path: Path) -> None:
    (tmp_path / "DATABASE_URL").write_text(DSN + "\n")
    (tmp_path / "LLM_WORKER_KAFKA_SASL_PASSWORD").write_text(KAFKA_PASSWORD)
    s = load_settings({"LLM_WORKER_SECRETS_DIR": str(tmp_path)})
    assert s.database_url == DSN and s.kafka_extra["sasl.password"] == KAFKA_PASSWORD
    env = {"LLM_WORKER_SECRETS_DIR": str(tmp_path), "DATABASE_URL": "postgresql://h/db"}
    assert load_settings(env).database_url == "postgresql://h/db"  # the variable wins


@pytest.mark.parametrize("var", SECRET_FILE_VARS)
def test_a_variable_and_its_file_together_are_refused(tmp_path: Path, var: str) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(ConfigError, match=f"{var} and {var}_FILE are both set"):
        load_settings({var: "y", f"{var}_FILE": str(path)})


@pytest.mark.parametrize("var", SECRET_FILE_VARS)
@pytest.mark.parametrize("problem", ["missing", "directory", "empty", "not utf-8"])
def test_an_unusable_file_names_the_variable(tmp_path: Path, var: str, problem: str) -> None:
    path = tmp_path / "secret"
    if problem == "directory":
        path.mkdir()
    elif problem == "empty":
        path.write_text("\n")
    elif problem == "not utf-8":
        path.write_bytes(b"pw-\xff-secret")
    with pytest.raises(ConfigError) as info:
        load_settings({f"{var}_FILE": str(path)})
    text = str(info.value)
    assert text.startswith(f"{var}_FILE='{path}'") and "secret'" not in text.split("=", 1)[0]
    assert "pw-" not in text


def test_a_command_that_needs_no_kafka_ignores_its_files(tmp_path: Path) -> None:
    env = {"LLM_WORKER_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "nope"), "DATABASE_URL": DSN}
    assert load_settings(env, only=("database_url",)).database_url == DSN
    with pytest.raises(ConfigError, match="LLM_WORKER_KAFKA_SASL_PASSWORD_FILE"):
        load_settings(env)


def test_migrate_exits_2_naming_the_file_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in list(os.environ):
        if var.startswith("LLM_WORKER_") or var.startswith("DATABASE_URL"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "missing"))
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL_FILE=" in err and "No such file or directory" in err


def test_a_real_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_WORKER_", "DATABASE"))}
    env["DATABASE_URL_FILE"] = str(tmp_path)  # a directory
    proc = subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"DATABASE_URL_FILE={str(tmp_path)!r} cannot be read" in proc.stderr
