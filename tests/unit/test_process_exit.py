"""A stopped worker leaves, whatever librdkafka does: a thread stuck in a Kafka call that was
given up on at its timeout does not keep the process alive (the interpreter would join it at
exit forever), and a shutdown that overruns its deadline ends the process with every thread's
stack. Real child processes: what is measured is whether and how they exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from llm_worker.worker.process import EXIT_OVERDUE

STUCK = """
import threading, time
threading.Thread(target=time.sleep, args=(3600,), name="kafka-consumer").start()
"""


def _run(code: str, timeout: float = 30.0) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


@pytest.mark.parametrize("code", [0, 3])
def test_a_thread_stuck_in_a_kafka_call_does_not_hold_the_exit(code: int) -> None:
    rc, err, took = _run(
        STUCK
        + f"""
import logging
from llm_worker.worker.process import exit_leaving_stuck_threads
logging.basicConfig()
exit_leaving_stuck_threads({code})
"""
    )
    assert rc == code
    assert took < 15, took
    assert "kafka-consumer" in err  # the log names the thread it did not wait for


def test_without_a_stuck_thread_the_exit_code_is_returned() -> None:
    rc, err, _ = _run(
        """
import sys, threading
from llm_worker.worker.process import exit_leaving_stuck_threads
t = threading.Thread(target=lambda: None, name="done")
t.start()
sys.exit(exit_leaving_stuck_threads(0) + 7)
"""
    )
    assert (rc, err) == (7, "")


def test_an_overdue_shutdown_exits_with_every_threads_stack() -> None:
    rc, err, took = _run(
        STUCK
        + """
import logging, time
from llm_worker.worker.process import _Watchdog
logging.basicConfig()
dog = _Watchdog(1.0)
dog.arm()
dog.arm()  # once armed, a second signal does not restart the clock
time.sleep(3600)
"""
    )
    assert rc == EXIT_OVERDUE
    assert took < 15, took
    assert "shutdown still not finished" in err
    assert err.count("Thread 0x") >= 2, err  # the stuck thread and the main one, at least


def test_an_overdue_shutdown_exits_even_when_no_python_thread_can_run() -> None:
    """A C call that holds the interpreter's lock for ever (as confluent-kafka did, calling
    librdkafka from a rebalance callback during a close) stops every Python thread, the
    watchdog's too: faulthandler's backstop still writes the stacks and exits (code 1)."""
    rc, err, took = _run(
        """
import ctypes, logging
from llm_worker.worker.process import _Watchdog
logging.basicConfig()
_Watchdog(0.5).arm()
ctypes.PyDLL(None).sleep(3600)  # a C call that keeps the GIL: no Python thread runs again
"""
    )
    assert rc == 1
    assert took < 15, took
    assert "Thread 0x" in err and "Timeout" in err, err  # faulthandler's dump
