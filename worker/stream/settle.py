"""Waiting for in-flight messages to finish, up to a deadline, then abandoning the rest: what a
revoke and a shutdown do. And the periodic commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .outbox import Outbox

__all__ = ["every", "finish_or_abandon"]

log = logging.getLogger("llm_worker")


async def finish_or_abandon(
    tasks: Callable[[], set[asyncio.Task[None]]],
    unfinished: Callable[[], int],
    outbox: Outbox,
    deadline: float,
) -> None:
    """Wait until the messages are finished, that is, their outcome records acknowledged, until
    `deadline` (loop time); then cancel what still runs.

    A message is either a task (waiting for its provider call, or retrying a delivery) or an
    outcome waiting for its delivery report; a task can turn into the latter. `tasks()` and
    `unfinished()` look at the messages concerned (one partition's, or all).
    """
    loop = asyncio.get_running_loop()
    while True:
        running = tasks()
        left = deadline - loop.time()
        if running:
            pending = (await asyncio.wait(running, timeout=left))[1] if left > 0 else running
            if pending:
                log.warning("abandoning %d in-flight messages at the deadline", len(pending))
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
            continue
        if not outbox.unacked or not unfinished() or left <= 0:
            if left <= 0 and outbox.unacked:
                log.warning("abandoning %d unacknowledged outcomes at the deadline", outbox.unacked)
            return
        outbox.acked.clear()
        try:
            async with asyncio.timeout(left):
                await outbox.acked.wait()
        except TimeoutError:
            pass


async def every(interval: float, fn: Callable[[], Awaitable[Any]], what: str) -> None:
    """Call `fn` every `interval` seconds until cancelled; a failure is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed (will retry): %s", what, exc)
