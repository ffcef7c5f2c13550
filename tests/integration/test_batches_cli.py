"""`llm-worker batches list|show|cancel` as an operator runs them, against a real PostgreSQL
whose batch-lane rows the test writes itself: jobs newest first under what waits, one job by
number, job_key or batch id, a cancel the collecting replica will see, and every refusal exit 2
in one line (no traceback, no password)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.pg_fixtures import temporary_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "batches", *args],
        env={**base, "DATABASE_URL": dsn},
        cwd=ROOT,  # this checkout's llm_worker
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line on stderr holding the words, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for word in words:
        assert word in r.stderr, (word, r.stderr)


def job_row(dsn: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT state, provider_state, cancel_requested_at IS NOT NULL FROM llm_batch_jobs"
            " WHERE id = %s",
            (job_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return {"state": row[0], "provider_state": row[1], "cancel_requested": row[2]}


JOB_SQL = (
    "INSERT INTO llm_batch_jobs (job_key, group_key, model_id, provider, endpoint,"
    " upstream_model, state, batch_id, provider_state, requests, succeeded, errored,"
    " created_at) VALUES (%s, %s, %s, %s, '', %s, %s, %s, %s, %s, %s, %s,"
    " now() - make_interval(secs => %s)) RETURNING id"
)
REQUEST_SQL = (
    "INSERT INTO llm_batch_requests (source, group_key, model_id, prompt_id, record,"
    " size_bytes, state, job_id, created_at)"
    " VALUES (%s, %s, %s, %s, '{}'::bytea, 2, %s, %s, now() - make_interval(secs => %s))"
)


@pytest.fixture
def lane(pg_dsn: str) -> Iterator[dict[str, int]]:
    """Three jobs, oldest first: `old` collected (3 requests: 2 ok, 1 errored; 1 answered and
    2 done), `live` submitted as batch_live (2 submitted), `new` still submitting; and two
    requests waiting, the oldest for 2 minutes."""
    ids: dict[str, int] = {}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for name, args in {
            "old": ("llmw-old", "g1", "chat-small", "openai", "gpt-4o-mini", "collected",
                    "batch_old", "completed", 3, 2, 1, 7200),
            "live": ("llmw-live", "g2", "chat-large", "anthropic", "claude", "submitted",
                     "batch_live", "in_progress", 2, 0, 0, 600),
            "new": ("llmw-new", "g1", "chat-small", "openai", "gpt-4o-mini", "submitting",
                    None, None, 1, 0, 0, 5),
        }.items():  # fmt: skip
            row = conn.execute(JOB_SQL, args).fetchone()
            assert row is not None
            ids[name] = int(row[0])
        requests = [
            ("old", "answered"), ("old", "done"), ("old", "done"),
            ("live", "submitted"), ("live", "submitted"), ("new", "submitted"),
        ]  # fmt: skip
        for n, (job, state) in enumerate(requests):
            conn.execute(REQUEST_SQL, (f"p/0/{n}", "g", "m", f"id{n}", state, ids[job], 60))
        for n, age in ((10, 120), (11, 30)):
            conn.execute(
                REQUEST_SQL, (f"p/0/{n}", "g1", "chat-small", f"id{n}", "waiting", None, age)
            )
    yield ids


def test_list_newest_first_under_what_waits(pg_dsn: str, lane: dict[str, int]) -> None:
    r = cli(pg_dsn, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("requests waiting: 2 (the oldest for 2m0"), lines[0]
    assert "1 collected" in lines[0] and "1 submitted" in lines[0] and "1 submitting" in lines[0]
    assert lines[1].split()[:2] == ["JOB", "STATE"]
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == [lane["new"], lane["live"], lane["old"]]
    new, live, old = rows
    assert new[1:7] == ["submitting", "-", "chat-small", "openai", "-", "1"]
    assert live[1:7] == ["submitted", "in_progress", "chat-large", "anthropic", "batch_live", "2"]
    assert live[7] == "(0/0)" and live[8].startswith("10m0")
    assert old[6:9] == ["3", "(2/1)", "2h00m"]

    one = cli(pg_dsn, "list", "--limit", "1")
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 3

    r = cli(pg_dsn, "list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["waiting"] == 2 and 119 <= doc["oldest_waiting_s"] < 180
    assert doc["jobs_by_state"] == {"collected": 1, "submitted": 1, "submitting": 1}
    assert [j["id"] for j in doc["jobs"]] == [lane["new"], lane["live"], lane["old"]]
    live_doc = doc["jobs"][1]
    assert live_doc["job_key"] == "llmw-live" and live_doc["batch_id"] == "batch_live"
    assert live_doc["requests"] == 2 and live_doc["provider"] == "anthropic"
    assert 599 <= live_doc["age_s"] < 660 and live_doc["submitted_at"] is None


def test_list_of_an_empty_lane(pg_dsn: str) -> None:
    r = cli(pg_dsn, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["requests waiting: 0; jobs: none", "no batch jobs"]
    assert json.loads(cli(pg_dsn, "list", "--json").stdout)["jobs"] == []


def test_show_by_number_job_key_or_batch_id(pg_dsn: str, lane: dict[str, int]) -> None:
    by_number = cli(pg_dsn, "show", str(lane["old"]))
    assert by_number.returncode == 0, by_number.stderr
    assert "job_key          llmw-old" in by_number.stdout
    assert "upstream_model   gpt-4o-mini" in by_number.stdout
    assert "request states   waiting 0, submitted 0, answered 1, done 2" in by_number.stdout
    for ref in ("llmw-old", "batch_old"):
        assert cli(pg_dsn, "show", ref).stdout == by_number.stdout

    r = cli(pg_dsn, "show", "batch_live", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["id"] == lane["live"] and doc["state"] == "submitted"
    assert doc["request_states"] == {"waiting": 0, "submitted": 2, "answered": 0, "done": 0}
    assert set(doc) >= {"job_key", "group_key", "endpoint", "error", "created_at", "age_s"}

    refused(cli(pg_dsn, "show", "nope"), "no batch job 'nope'", "batches list")


def test_cancel_marks_a_live_job_and_refuses_a_final_one(pg_dsn: str, lane: dict[str, int]) -> None:
    r = cli(pg_dsn, "cancel", "batch_live")
    assert r.returncode == 0, r.stderr
    assert f"job {lane['live']} (batch_live at anthropic): marked for cancelling" in r.stdout
    assert job_row(pg_dsn, lane["live"]) == {
        "state": "submitted",
        "provider_state": "in_progress",  # unchanged: the provider has not heard yet
        "cancel_requested": True,  # what the collecting replica acts on
    }
    again = cli(pg_dsn, "cancel", str(lane["live"]))
    assert again.returncode == 0 and "already requested" in again.stdout

    refused(cli(pg_dsn, "cancel", "llmw-old"), f"job {lane['old']}", "already collected")
    assert job_row(pg_dsn, lane["old"]) == {
        "state": "collected",
        "provider_state": "completed",
        "cancel_requested": False,
    }
    refused(cli(pg_dsn, "cancel", "404"), "no batch job '404'")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_database_to_fix_is_one_line_without_the_password(pg_server_dsn: str) -> None:
    secret = "hunter2-not-shown"
    dsn = f"postgresql://bob:{secret}@127.0.0.1:{_closed_port()}/db"
    for args in (("list",), ("show", "1"), ("cancel", "1")):
        r = cli(dsn, *args)
        refused(r, "check DATABASE_URL", "bob:***@127.0.0.1")
        assert secret not in r.stderr + r.stdout

    r = cli("postgresql://ignored@127.0.0.1:1/x", "list", "--database-url", dsn)
    refused(r, "check --database-url")
    assert secret not in r.stderr + r.stdout

    with temporary_database(pg_server_dsn, migrated=False) as bare:
        refused(cli(bare, "list"), "no batch lane tables", "llm-worker migrate")
