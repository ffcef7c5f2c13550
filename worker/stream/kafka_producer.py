"""The bridge's producer, replaced by a new one when the broker has forgotten its producer id.

A broker that loses its idempotent-producer state (Tansu keeps it in memory, so a restart
forgets every producer id) answers each produce with UNKNOWN_PRODUCER_ID. librdkafka then
bumps the epoch on its own and sends again, and again: the broker knows no epoch of that id,
so nothing is delivered until each record's `message.timeout.ms` (300 s by default) fails it,
and the retried record meets the same producer. A new producer asks the broker for a new id
and delivers at once.

The sign is the producer's `eos.producer_epoch` statistic: a healthy producer bumps its epoch
rarely (after a timed-out or reordered batch); this one many times a second. When it rose by
`BUMPS_TO_REPLACE` or more between two statistics documents, the slot asks the loop to replace
the producer. The old one is purged: its records come back as failed deliveries, which their
owners produce again on the new one, and the loop's polls serve the old producer until it
holds nothing. A transactional producer is never replaced (its id is its fencing identity;
the transaction code aborts and starts again instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from confluent_kafka import Producer

__all__ = ["BUMPS_TO_REPLACE", "ProducerSlot"]

log = logging.getLogger("llm_worker.kafka")

BUMPS_TO_REPLACE = 10
"""Epoch bumps between two statistics documents (5 s apart by default) that replace it."""


class _Eos(msgspec.Struct):
    producer_id: int = -1
    producer_epoch: int = -1


class _ProducerStats(msgspec.Struct):
    eos: _Eos = msgspec.field(default_factory=_Eos)


_decode = msgspec.json.Decoder(_ProducerStats).decode


class ProducerSlot:
    """Holds the current producer. `poll` and `replace` run on the loop (where every produce
    call is made, so none lands on a producer being retired); `flush` runs on a thread of its
    own, and serves callbacks there."""

    def __init__(
        self,
        conf: dict[str, Any],
        *,
        replaceable: bool,
        on_stats: Callable[[str], None] | None,
        wants_replacing: Callable[[], None],
    ) -> None:
        self._on_stats = on_stats
        self._wants_replacing = wants_replacing
        self._replaceable = replaceable
        self._conf = {**conf, "stats_cb": self._stats}
        self._epoch: tuple[int, int] | None = None  # (producer id, epoch) at the last statistics
        self._retiring: list[Producer] = []
        self.replaced = 0
        """How many producers were replaced."""
        self.current = Producer(self._conf)

    def _stats(self, raw: str) -> None:
        """librdkafka's statistics (inside `poll` on the loop, or inside a `flush`)."""
        if self._on_stats is not None:
            self._on_stats(raw)
        if not self._replaceable:
            return
        try:
            eos = _decode(raw).eos
        except (msgspec.DecodeError, ValueError):
            return
        last, self._epoch = self._epoch, (eos.producer_id, eos.producer_epoch)
        same = last is not None and last[0] == eos.producer_id >= 0
        if same and last is not None and eos.producer_epoch - last[1] >= BUMPS_TO_REPLACE:
            self._wants_replacing()

    def replace(self) -> None:
        """A new producer takes the records from now on; the old one's come back as failed."""
        old = self.current
        self._epoch = None
        self.current = Producer(self._conf)
        self._retiring.append(old)
        self.replaced += 1
        old.purge()  # in queue and in flight: their delivery reports carry _PURGE_* errors
        log.warning(
            "the broker no longer knows the producer's id (its epoch was bumped over and over "
            "without a delivery): replaced the producer; %d records go again on the new one",
            len(old),
        )

    def poll(self, timeout: float) -> None:
        """Serve delivery reports: the current producer's, then any retiring one's."""
        self.current.poll(timeout)
        for old in list(self._retiring):
            old.poll(0)
            if len(old) == 0:
                self._retiring.remove(old)

    def awaiting(self) -> int:
        """Records produced whose delivery reports have not been served (retiring ones too)."""
        return len(self.current) + sum(len(old) for old in self._retiring)

    def flush(self, timeout: float) -> int:
        """Wait for the current producer's deliveries; returns how many are left (all)."""
        left: int = self.current.flush(timeout)
        for old in list(self._retiring):
            left += old.flush(0)
        return left
