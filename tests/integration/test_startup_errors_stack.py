"""A start-up failure through the real stack (issue 24): `llm-worker run` against the session
broker and a real PostgreSQL whose role needs a password, given the wrong one. It must exit 2
within seconds (no 60 s of retries: a wrong password is not mended by waiting), with one line
that names DATABASE_URL and the fix, no traceback, and the password nowhere in its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.integration.test_secret_leak import PasswordPostgres


def test_a_wrong_database_password_stops_run_at_once_naming_database_url(
    own_postgres: Any, worker_env: dict[str, str]
) -> None:
    pg = PasswordPostgres(own_postgres.dsn)
    right, wrong = f"right-{uuid.uuid4().hex[:10]}", f"wrong-{uuid.uuid4().hex[:10]}"
    pg.set_password(right)
    env = {
        **worker_env,
        "DATABASE_URL": pg.url(wrong, encode=True),
        "LLM_WORKER_REGISTRY_WAIT_S": "60",  # the default: it must not be waited out
        "LLM_WORKER_HTTP_PORT": "0",
        "LLM_WORKER_LOG_LEVEL": "INFO",
    }
    env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "llm_worker.worker.cli", "run"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - began
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert took < 30, f"took {took:.0f} s: retried a wrong password"
    assert "Traceback" not in output
    assert wrong not in output and right not in output
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["level"] == "error"
    message = last["msg"]
    assert message.startswith(
        f"cannot start: model registry not loaded from PostgreSQL at DATABASE_URL="
        f"postgresql://{pg.role}:***@"
    ), message
    assert "password authentication failed" in message
    assert message.endswith("set DATABASE_URL with the right user and password"), message
