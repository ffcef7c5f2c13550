"""An unknown `LLM_WORKER_*` variable (a typo) stops every command that reads settings, naming
the closest settings; `LLM_WORKER_ALLOW_UNKNOWN_SETTINGS=true` makes it a warning (issue 24)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from llm_worker.worker.cli.main import main
from llm_worker.worker.config import ConfigError, load_settings, unknown_settings
from llm_worker.worker.settings import SETTINGS


def test_a_typo_is_refused_with_the_setting_it_meant() -> None:
    with pytest.raises(ConfigError) as bad:
        load_settings({"LLM_WORKER_MAX_INFLIGHT": "5"})
    assert str(bad.value) == (
        "unknown setting LLM_WORKER_MAX_INFLIGHT: did you mean LLM_WORKER_MAX_IN_FLIGHT?"
    )


@pytest.mark.parametrize(
    ("var", "meant"),
    [
        ("LLM_WORKER_HTTP_PROT", "LLM_WORKER_HTTP_PORT"),
        ("LLM_WORKER_LOGLEVEL", "LLM_WORKER_LOG_LEVEL"),
        ("LLM_WORKER_BREAKER_COOLDOWN", "LLM_WORKER_BREAKER_COOLDOWN_S"),
        ("LLM_WORKER_DATABASE_URL", "DATABASE_URL"),  # a fixed name with the prefix
    ],
)
def test_each_typo_names_its_setting(var: str, meant: str) -> None:
    assert unknown_settings({var: "1"}) == [f"unknown setting {var}: did you mean {meant}?"]


def test_several_close_names_are_all_offered() -> None:
    (line,) = unknown_settings({"LLM_WORKER_TENANT_RPS": "3"})
    assert line == (
        "unknown setting LLM_WORKER_TENANT_RPS: did you mean LLM_WORKER_TENANT_RPM or "
        "LLM_WORKER_TENANT_TPM?"
    )


def test_a_name_like_none_points_to_the_list() -> None:
    with pytest.raises(ConfigError, match=r"^unknown setting LLM_WORKER_FOO: no setting is named"):
        load_settings({"LLM_WORKER_FOO": "1"})


def test_every_known_family_is_accepted() -> None:
    """Every declared setting, the librdkafka passthrough, the secret files, the config file,
    OpenTelemetry's and other programs' variables are no typo."""
    known = {d.env: "1" for d in SETTINGS if d.from_prefix}
    known |= {
        "DATABASE_URL": "x",
        "DATABASE_URL_FILE": "/x",
        "KAFKA_BOOTSTRAP_SERVERS": "h:1",
        "LLM_WORKER_KAFKA_SECURITY_PROTOCOL": "SSL",
        "LLM_WORKER_KAFKA_SASL_PASSWORD_FILE": "/x",
        "LLM_WORKER_CONFIG_FILE": "/x",
        "LLM_WORKER_TEST_BROKER": "kafka",
        "LLM_WORKER_TEST_REPLICA_RATE": "1200",
        "LLM_WORKER_CHAOS_REPORT": "r.txt",
        "OTEL_SERVICE_NAME": "w",
        "OTHER_TOOL_MAX_INFLIGHT": "1",
    }
    assert unknown_settings(known) == []


def test_a_typo_in_the_config_file_is_refused_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "worker.env"
    f.write_text("LLM_WORKER_GROUPID=g\n")
    with pytest.raises(ConfigError, match="LLM_WORKER_GROUPID: did you mean LLM_WORKER_GROUP_ID"):
        load_settings({"LLM_WORKER_CONFIG_FILE": str(f)})


def test_the_escape_hatch_makes_it_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_worker.config"):
        s = load_settings(
            {
                "LLM_WORKER_ALLOW_UNKNOWN_SETTINGS": "true",
                "LLM_WORKER_MAX_INFLIGHT": "5",
                "LLM_WORKER_GROUP_ID": "read",
            }
        )
    assert s.group_id == "read" and s.allow_unknown_settings
    assert s.max_in_flight == 10_000  # the typo sets nothing
    assert [r.getMessage() for r in caplog.records] == [
        "unknown setting LLM_WORKER_MAX_INFLIGHT: did you mean LLM_WORKER_MAX_IN_FLIGHT? "
        "(ignored: LLM_WORKER_ALLOW_UNKNOWN_SETTINGS=true)"
    ]


def test_the_escape_hatch_false_or_malformed_still_refuses() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings({"LLM_WORKER_ALLOW_UNKNOWN_SETTINGS": "false", "LLM_WORKER_X": "1"})
    with pytest.raises(ConfigError, match="LLM_WORKER_ALLOW_UNKNOWN_SETTINGS='maybe' is not"):
        load_settings({"LLM_WORKER_ALLOW_UNKNOWN_SETTINGS": "maybe", "LLM_WORKER_X": "1"})


def test_every_command_that_reads_settings_refuses_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`migrate` reads DATABASE_URL alone, and still a typo stops it before it connects."""
    monkeypatch.setenv("LLM_WORKER_MAX_INFLIGHT", "5")
    for argv in (["run"], ["migrate"], ["registry", "list"], ["send", "hi"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [
            "configuration error: unknown setting LLM_WORKER_MAX_INFLIGHT: did you mean "
            "LLM_WORKER_MAX_IN_FLIGHT?"
        ], argv


def test_run_exits_2_with_one_line() -> None:
    """The installed command, as an operator runs it: exit 2, one line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "LLM_WORKER_MAX_INFLIGHT": "5"}
    done = subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: unknown setting LLM_WORKER_MAX_INFLIGHT: did you mean "
        "LLM_WORKER_MAX_IN_FLIGHT?"
    ]


def test_run_help_says_where_the_settings_are(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "docs/configuration.md" in out and "environment" in out
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "LLM_WORKER_HTTP_PORT"):
        assert f"\n  {var} " in out, var
    assert "LLM_WORKER_CONFIG_FILE" in out and "Exit status: 0 stopped; 2 " in out
