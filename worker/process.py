"""The worker as a process: `run_app(settings)` is `llm-worker run` (signals, GC tuning, the
open-files limit, the exit code); `run_async` runs a coroutine on uvloop when it is there."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from .app import App
from .config import Settings

__all__ = ["EXIT_FATAL", "raise_open_files_limit", "run_app", "run_async", "tune_gc"]

log = logging.getLogger("llm_worker")

EXIT_FATAL = 3
"""Exit code after a fatal Kafka client error: the orchestrator restarts the process."""


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
            app.worker.stop()
        else:
            log.warning("%s received again: exiting now", signame)
            for task in asyncio.all_tasks(loop):
                task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await app.start()
        tune_gc(settings.gc_gen0_threshold)
        await app.worker.run()
        if app.worker.fatal is not None:
            log.error("exiting after a fatal Kafka error: %s", app.worker.fatal)
            return EXIT_FATAL
    finally:
        await app.close()
        log.info("worker stopped", extra={"stats": app.worker.stats()})
    return 0
