"""Exactly-once mode's producer identity and transaction timeout: a worker restarted on the same
host takes the `transactional.id` of its previous life (so it fences the transaction that life
left open, and `read_committed` readers move on within seconds), processes side by side get
distinct ids, and a crashed producer's open transaction is ended by the broker in 15 s, not
librdkafka's 60 s."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llm_worker.worker.config import ConfigError, load_settings
from llm_worker.worker.stream.kafka_conf import (
    consumer_config,
    producer_config,
    transaction_timeout_ms,
    transactional_id,
)

HOLD = """
import sys, time
from llm_worker.worker.config import load_settings
from llm_worker.worker.stream.kafka_conf import transactional_id
print(transactional_id(load_settings({"LLM_WORKER_GROUP_ID": "g"}), lock_dir=sys.argv[1]),
      flush=True)
time.sleep(60)
"""


def _holder(lock_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_killed_worker_s_successor_takes_its_id_and_a_live_one_s_neighbour_does_not(
    tmp_path: Path,
) -> None:
    host = socket.gethostname()
    first, first_id = _holder(tmp_path)
    second, second_id = _holder(tmp_path)
    try:
        assert first_id == f"g-{host}-0"
        assert second_id == f"g-{host}-1"  # side by side: distinct ids, no mutual fencing
        first.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops its lock
        first.wait(10)
        third, third_id = _holder(tmp_path)
        third.kill()
        third.wait(10)
        assert third_id == first_id  # the restart fences the killed process's transaction
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait(10)


def test_the_id_is_stable_within_a_process_and_an_explicit_one_wins(tmp_path: Path) -> None:
    s = load_settings({"LLM_WORKER_GROUP_ID": "stable"})
    got = transactional_id(s, lock_dir=str(tmp_path))
    assert got == transactional_id(s, lock_dir=str(tmp_path))
    assert str(os.getpid()) not in got.rsplit("-", 1)[1]
    named = load_settings({"LLM_WORKER_TRANSACTIONAL_ID": "worker-a"})
    assert transactional_id(named, lock_dir=str(tmp_path)) == "worker-a"


def test_without_a_lock_directory_the_id_carries_the_pid_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = load_settings({"LLM_WORKER_GROUP_ID": "nolock"})
    with caplog.at_level(logging.WARNING, "llm_worker.kafka"):
        got = transactional_id(s, lock_dir=str(tmp_path / "missing"))
    assert got == f"nolock-{socket.gethostname()}-p{os.getpid()}"
    assert "LLM_WORKER_TRANSACTIONAL_ID" in caplog.text


def _eos(**env: str) -> dict[str, object]:
    s = load_settings(
        {
            "LLM_WORKER_PROCESSING_GUARANTEE": "exactly_once",
            "LLM_WORKER_TRANSACTIONAL_ID": "t",
            **env,
        }
    )
    return producer_config(s)


def test_transactions_time_out_in_15_s_by_default() -> None:
    assert _eos()["transaction.timeout.ms"] == 15_000
    at_least_once = producer_config(load_settings({}))
    assert "transaction.timeout.ms" not in at_least_once
    assert "transactional.id" not in at_least_once


def test_the_timeout_stays_above_the_commit_interval_and_the_client_s_own_timeouts() -> None:
    assert _eos(LLM_WORKER_COMMIT_INTERVAL_MS="10000")["transaction.timeout.ms"] == 30_000
    assert _eos(LLM_WORKER_KAFKA_MESSAGE_TIMEOUT_MS="40000")["transaction.timeout.ms"] == 40_000
    assert _eos(LLM_WORKER_KAFKA_SOCKET_TIMEOUT_MS="20000")["transaction.timeout.ms"] == 20_100


def test_a_set_timeout_is_kept_and_reaches_the_producer_only() -> None:
    env = {"LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS": "90000"}
    assert _eos(**env)["transaction.timeout.ms"] == 90_000
    consumer = consumer_config(load_settings({**env, "LLM_WORKER_TRANSACTIONAL_ID": "t"}))
    assert "transaction.timeout.ms" not in consumer  # librdkafka warns about it otherwise


@pytest.mark.parametrize("value", ["500", "abc", "-1"])
def test_a_set_timeout_that_cannot_hold_a_commit_is_refused_by_name(value: str) -> None:
    s = load_settings(
        {"LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS": value, "LLM_WORKER_COMMIT_INTERVAL_MS": "500"}
    )
    with pytest.raises(ConfigError, match=r"LLM_WORKER_KAFKA_TRANSACTION_TIMEOUT_MS.*500"):
        transaction_timeout_ms(s)
