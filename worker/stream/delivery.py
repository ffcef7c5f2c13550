"""Delivering one outcome record when the cheap path (`produce_nowait`) failed: produce and
wait for the acknowledgement, retrying with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..records import Outcome, output_too_large
from .kafka import DeliveryError, KafkaBridge

__all__ = ["deliver"]

log = logging.getLogger("llm_worker")


async def deliver(
    bridge: KafkaBridge,
    outcome: Outcome,
    error: DeliveryError | None = None,
    *,
    on_retry: Callable[[], None] = lambda: None,
) -> None:
    """Produce and wait for the acknowledgement, retrying with backoff until it comes.
    `error`: the failure of an earlier attempt, handled before the first produce."""
    delay = 0.1
    while True:
        if error is not None:
            on_retry()
            if error.too_large and outcome.completion is not None:
                output_too_large(outcome)
            else:
                log.warning(
                    "delivery to %s failed (%s); retrying in %.1f s", outcome.topic, error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            await bridge.produce(
                outcome.topic, outcome.value, key=outcome.key, headers=outcome.headers
            )
            return
        except DeliveryError as exc:
            error = exc
