"""The worker as a process: `run_app(settings)` is `llm-worker run` (signals, GC tuning, the
open-files limit, the exit code); `run_async` runs a coroutine on uvloop when it is there."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import Any

from .app import App
from .config import Settings

__all__ = [
    "EXIT_FATAL",
    "EXIT_OVERDUE",
    "exit_leaving_stuck_threads",
    "raise_open_files_limit",
    "run_app",
    "run_async",
    "tune_gc",
]

log = logging.getLogger("llm_worker")

EXIT_FATAL = 3
"""Exit code after a fatal Kafka client error: the orchestrator restarts the process."""

EXIT_OVERDUE = 4
"""Exit code when the shutdown overran its deadline by `OVERDUE_GRACE_S` (something hung)."""

BACKSTOP_S = 5.0
"""After the watchdog's own time: the exit (code 1) when not even its thread could run."""

OVERDUE_GRACE_S = 25.0
"""Past `shutdown_timeout_s`, what closing may take (leaving the group: 10 s, the flush and the
final commit's floors) before the process exits anyway, printing every thread's stack."""

STUCK_JOIN_S = 2.0
"""At exit, how long the threads left get to end before the process leaves without them."""


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: thousands of calls in flight are
    thousands of sockets (the soft limit is often 1,024). Returns the limit in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            pass
    return soft


def tune_gc(gen0_threshold: int) -> None:
    """Fewer, larger young-generation collections: every message allocates a few hundred short-
    lived objects, and the default threshold (700) spends about a fifth of the CPU in the
    collector at full load (docs/BENCHMARKS.md). Objects alive after start-up are frozen."""
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _gen0, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run on uvloop when it is installed (about a third less CPU per message)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def run_app(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; a second signal exits at once. Returns the exit code."""
    app = App(settings)
    raise_open_files_limit()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info(
                "%s received: shutting down (deadline %.0f s)", signame, settings.shutdown_timeout_s
            )
            watchdog.arm()
            app.worker.stop()
        else:
            log.warning("%s received again: exiting now", signame)
            for task in asyncio.all_tasks(loop):
                task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    watchdog = _Watchdog(settings.shutdown_timeout_s + OVERDUE_GRACE_S)
    started = False
    try:
        await app.start()  # a failure to start: the caller says it in one line (exit 2)
        started = True
        tune_gc(settings.gc_gen0_threshold)
        await app.worker.run()
        if app.worker.fatal is not None:
            log.error("exiting after a fatal Kafka error: %s", app.worker.fatal)
            return EXIT_FATAL
    finally:
        watchdog.arm()  # the run is over: closing is bounded from here on
        await app.close()
        if started:
            log.info("worker stopped", extra={"stats": app.worker.stats()})
    return 0


class _Watchdog:
    """Ends the process when a shutdown overruns its deadline: a librdkafka call that never
    returns (a consumer close or a commit after broker restarts) must not keep a stopped worker
    alive until the orchestrator's SIGKILL. Every thread's stack goes to stderr first."""

    def __init__(self, after_s: float) -> None:
        self._after_s = after_s
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self._after_s, self._overdue)
            self._timer.daemon = True
            self._timer.start()
            # The backstop, for when no Python thread can run at all: a C call that holds the
            # interpreter's lock for ever (confluent-kafka calls into librdkafka holding it from
            # a rebalance callback). faulthandler's own thread needs no Python: it writes every
            # thread's stack and exits with code 1, BACKSTOP_S after the timer above.
            faulthandler.dump_traceback_later(
                self._after_s + BACKSTOP_S, repeat=False, file=sys.stderr, exit=True
            )

    def _overdue(self) -> None:
        log.critical(
            "shutdown still not finished %.0f s after it began: exiting now (threads below)",
            self._after_s,
        )
        _flush_logs()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(EXIT_OVERDUE)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers + log.handlers:
        try:
            handler.flush()
        except Exception:  # pragma: no cover - a broken stream cannot be helped now
            pass
    sys.stdout.flush()
    sys.stderr.flush()


def exit_leaving_stuck_threads(code: int) -> int:
    """After the worker has closed: if a librdkafka call still blocks one of its threads (it was
    given up on at its timeout), exit now with `code` instead of letting the interpreter wait
    for that thread forever. Returns `code` when no such thread is left."""
    deadline = time.monotonic() + STUCK_JOIN_S  # idle pool threads take a moment to end
    for t in threading.enumerate():
        if not t.daemon and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    stuck = [n for n in stuck if n != threading.current_thread().name]
    if not stuck:
        return code
    log.warning("exiting without waiting for threads still inside a Kafka call: %s", stuck)
    _flush_logs()
    os._exit(code)
