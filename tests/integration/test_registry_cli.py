"""`llm-worker registry add|set|remove|apply|export|failover|validate` as an operator runs them,
against a real PostgreSQL: every mistake is exit 2 naming the model and the column, and changes
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_worker.registry.models import ModelRow
from llm_worker.registry.store import get_row, list_rows, upsert_row

pytestmark = pytest.mark.integration


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "registry", *args],
        env={**base, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, the words in the message, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


def ids(dsn: str) -> list[str]:
    return [r.model_id for r in list_rows(dsn)]


def test_add_set_remove_validate_each_change(pg_dsn: str) -> None:
    r = cli(pg_dsn, "add", "m2", "--provider", "fake", "--upstream-model", "u2",
            "--endpoint", " http://y/v1 ")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "+ m2" in r.stdout and "1 added" in r.stdout
    m2 = get_row(pg_dsn, "m2")
    assert m2 is not None and m2.endpoint == "http://y/v1"  # stripped

    base = ("add", "m1", "--provider", "openai", "--upstream-model", "gpt-4o-mini")
    refused(
        cli(pg_dsn, "add", "m1", "--provider", "opneai", "--upstream-model", "u"),
        "model 'm1'", "provider: unknown provider 'opneai'; did you mean 'openai'?",
    )  # fmt: skip
    refused(cli(pg_dsn, *base, "--fallback-model-id", "nope"), "fallback_model_id", "'nope'")
    refused(cli(pg_dsn, *base, "--input-cost-per-1k", "-1"), "input_cost_per_1k")
    refused(cli(pg_dsn, *base, "--rpm-limit", "0"), "rpm_limit")
    refused(cli(pg_dsn, *base, "--dialect", "llama"), "dialect")
    refused(cli(pg_dsn, *base, "--max-tokens", "many"), "max_tokens", "'many'")
    refused(cli(pg_dsn, *base, "--endpoint", "vllm:8000/v1"), "endpoint", "absolute http(s)")
    assert ids(pg_dsn) == ["m2"]  # none of those was written

    dry = cli(pg_dsn, *base, "--fallback-model-id", "m2", "--dry-run")
    assert dry.returncode == 0 and "+ m1" in dry.stdout and "would be added" in dry.stdout
    assert ids(pg_dsn) == ["m2"]
    ok = cli(pg_dsn, *base, "--fallback-model-id", "m2", "--rpm-limit", "60", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["added"] == ["m1"]
    m1 = get_row(pg_dsn, "m1")
    assert m1 is not None and m1.fallback_model_id == "m2" and m1.rpm_limit == 60
    refused(cli(pg_dsn, *base), "already in the registry", "registry set m1")

    refused(cli(pg_dsn, "set", "m2", "--fallback-model-id", "m1"), "cycle", "m2 -> m1 -> m2")
    refused(cli(pg_dsn, "set", "m1", "--timeout-ms", "0"), "model 'm1'", "timeout_ms")
    refused(cli(pg_dsn, "set", "m1"), "nothing to set")
    dry = cli(pg_dsn, "set", "m1", "--timeout-ms", "900", "--dry-run")
    assert dry.returncode == 0 and "timeout_ms: 30000 -> 900" in dry.stdout
    assert get_row(pg_dsn, "m1") == m1
    ok = cli(pg_dsn, "set", "m1", "--timeout-ms", "900", "--rpm-limit", "none")
    assert ok.returncode == 0 and "rpm_limit: 60 -> none" in ok.stdout, ok.stderr
    m1 = get_row(pg_dsn, "m1")
    assert m1 is not None and m1.timeout_ms == 900 and m1.rpm_limit is None
    assert cli(pg_dsn, "set", "nope", "--timeout-ms", "5").returncode == 1

    refused(cli(pg_dsn, "remove", "m2"), "model 'm1'", "'m2'")  # m1 falls back to it
    assert cli(pg_dsn, "remove", "m1", "--dry-run").returncode == 0
    assert ids(pg_dsn) == ["m1", "m2"]
    gone = cli(pg_dsn, "remove", "m1")
    assert gone.returncode == 0 and "- m1" in gone.stdout
    assert ids(pg_dsn) == ["m2"]
    assert cli(pg_dsn, "remove", "m1").returncode == 1


FILE = """\
models:
  - model_id: chat
    provider: openai_compatible
    endpoint: http://vllm:8000/v1
    upstream_model: Qwen/Qwen2.5-7B-Instruct
    fallback_model_id: backup
    input_cost_per_1k: 0.5
  - model_id: backup
    provider: fake
    endpoint: http://fake:9000/v1
    upstream_model: u
"""


def test_apply_creates_updates_prunes_and_round_trips(pg_dsn: str, tmp_path: Path) -> None:
    upsert_row(pg_dsn, ModelRow(model_id="old", provider="fake", endpoint="", upstream_model="u"))
    path = tmp_path / "registry.yaml"
    path.write_text(FILE)

    dry = cli(pg_dsn, "apply", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ chat" in dry.stdout and "+ backup" in dry.stdout and "would be added" in dry.stdout
    assert ids(pg_dsn) == ["old"]

    first = cli(pg_dsn, "apply", str(path))
    assert first.returncode == 0, first.stderr
    assert "2 added, 0 changed, 0 removed, 0 unchanged, 1 not in the file" in first.stdout
    assert ids(pg_dsn) == ["backup", "chat", "old"]  # kept without --prune

    path.write_text(
        FILE.replace("upstream_model: u\n", "upstream_model: u\n    timeout_ms: 5000\n")
    )
    second = cli(pg_dsn, "apply", str(path), "--prune")
    assert second.returncode == 0, second.stderr
    assert "~ backup" in second.stdout and "timeout_ms: 30000 -> 5000" in second.stdout
    assert "- old" in second.stdout and "1 changed, 1 removed, 1 unchanged" in second.stdout
    assert ids(pg_dsn) == ["backup", "chat"]

    for fmt in ("yaml", "json"):
        out = tmp_path / f"export.{fmt}"
        assert cli(pg_dsn, "export", "--format", fmt, "-o", str(out)).returncode == 0
        again = cli(pg_dsn, "apply", str(out), "--prune")
        assert again.returncode == 0, again.stderr
        assert "0 added, 0 changed, 0 removed, 2 unchanged" in again.stdout
    exported = cli(pg_dsn, "export", "--format", "json")
    chat = json.loads(exported.stdout)["models"][1]
    assert chat["model_id"] == "chat" and chat["input_cost_per_1k"] == 0.5


@pytest.mark.parametrize(
    ("mistake", "words"),
    [
        ("    endpont: http://x/v1\n", ("model 'backup'", "unknown key 'endpont'", "'endpoint'")),
        ("    provider: opneai\n", ("model 'backup'", "did you mean 'openai'?")),
        ("    fallback_model_id: nowhere\n", ("model 'backup'", "fallback_model_id", "nowhere")),
        ("    fallback_model_id: chat\n", ("cycle", "chat -> backup -> chat")),
        ("    output_cost_per_1k: -2\n", ("model 'backup'", "output_cost_per_1k")),
    ],
)
def test_a_file_with_one_error_changes_nothing(
    pg_dsn: str, tmp_path: Path, mistake: str, words: tuple[str, ...]
) -> None:
    upsert_row(pg_dsn, ModelRow(model_id="old", provider="fake", endpoint="", upstream_model="u"))
    before = list_rows(pg_dsn)
    path = tmp_path / "registry.yaml"
    text = FILE.replace("    provider: fake\n", "") if "provider" in mistake else FILE
    path.write_text(text + mistake)  # the last model, backup, gets the mistake
    refused(cli(pg_dsn, "apply", str(path), "--prune"), "nothing changed", *words)
    assert list_rows(pg_dsn) == before


def test_list_json_failover_refusal_and_validate(pg_dsn: str) -> None:
    upsert_row(pg_dsn, ModelRow(model_id="lone", provider="fake", endpoint="", upstream_model="u"))
    upsert_row(
        pg_dsn,
        ModelRow(
            model_id="m1",
            provider="fake",
            endpoint="",
            upstream_model="u",
            fallback_model_id="lone",
        ),
    )
    for args in (("list", "--json"), ("--json", "list")):
        listed = cli(pg_dsn, *args)
        assert listed.returncode == 0, listed.stderr
        assert [r["model_id"] for r in json.loads(listed.stdout)] == ["lone", "m1"]

    refused(cli(pg_dsn, "failover", "lone"), "has no fallback", "--force")
    lone = get_row(pg_dsn, "lone")
    assert lone is not None and lone.enabled
    assert cli(pg_dsn, "failover", "m1").returncode == 0  # it has one
    assert cli(pg_dsn, "failover", "lone", "--force").returncode == 0
    lone = get_row(pg_dsn, "lone")
    assert lone is not None and not lone.enabled
    assert cli(pg_dsn, "restore", "lone").returncode == 0

    # rows written behind the CLI's back (SQL, an old version): validate finds them
    upsert_row(
        pg_dsn,
        ModelRow(model_id="typo", provider="opneai", endpoint="http://x/v1 ", upstream_model="u"),
    )
    checked = cli(pg_dsn, "validate")
    assert checked.returncode == 1
    assert "typo: provider: unknown provider 'opneai'; did you mean 'openai'?" in checked.stdout
    assert "typo: endpoint: 'http://x/v1 ' has surrounding whitespace" in checked.stdout
