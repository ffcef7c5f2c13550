"""Pacing a bench publisher: wait for a prompt's time without spinning a core."""

from __future__ import annotations

import time

from confluent_kafka import Producer

__all__ = ["PACE_SLEEP_S", "wait_until"]

PACE_SLEEP_S = 0.002
"""Below this, a paced publisher sleeps instead of polling: librdkafka's poll takes whole
milliseconds, so a shorter poll returns at once, and the wait spun a core (at 1,700/s the bench
process took 60-90% of a core, starving the worker and the broker it measures)."""


def wait_until(producer: Producer, when: float) -> None:
    """Until `when` (monotonic), serving delivery reports while the wait is long enough."""
    while (ahead := when - time.monotonic()) > 0:
        if ahead >= PACE_SLEEP_S:
            producer.poll(ahead)  # returns at the first delivery report: look again
        else:
            time.sleep(ahead)
