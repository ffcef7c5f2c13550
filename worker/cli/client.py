"""A small client: publish prompts and wait for their completions (`llm-worker send`, bench)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from ..config import Settings
from ..stream.kafka_client import RecordSender, TopicTail

__all__ = ["CompletionWaiter", "publish", "wait_until"]

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class CompletionWaiter:
    """Reads `llm_completions` from (at most) the current end, keeping the ids it waits for;
    with `chunks`, the chunk topic too (streamed answers as they come).

    Open it *before* publishing, so no completion can slip past it.
    """

    def __init__(self, settings: Settings, *, chunks: bool = False) -> None:
        self._settings = settings
        more = (settings.chunks_topic,) if chunks else ()
        self._tail = TopicTail(settings, settings.completions_topic, *more)

    def wait(
        self,
        ids: Iterable[str],
        *,
        timeout: float,
        on_completion: Callable[[dict[str, Any]], None] | None = None,
        on_chunk: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Collect one completion per id (the first seen); stop at `timeout` seconds. Chunks of
        the ids waited for go to `on_chunk` as they are read."""
        wanted = set(ids)
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        decode = _dec.decode
        completions = self._settings.completions_topic
        # `wanted` shrinks as ids are answered: a count, not a set difference per poll
        while wanted and time.monotonic() < deadline:
            for topic, value in self._tail.items(1000, 0.2):
                try:
                    comp = decode(value)
                except msgspec.DecodeError:
                    continue
                cid = comp.get("id") if isinstance(comp, dict) else None
                if topic != completions:
                    if cid in wanted and on_chunk is not None:
                        on_chunk(comp)
                    continue
                if cid in wanted:  # the first completion per id; later ones are duplicates
                    wanted.discard(cid)
                    got[cid] = comp
                    if on_completion is not None:
                        on_completion(comp)
        return got

    def close(self) -> None:
        self._tail.close()

    def __enter__(self) -> CompletionWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PACE_SLEEP_S = 0.002
"""Below this, a paced publisher sleeps instead of polling: librdkafka's poll takes whole
milliseconds, so a shorter poll returns at once, and the wait spun a core (at 1,700/s the bench
process took 60-90% of a core, starving the worker and the broker it measured)."""


class _Polls(Protocol):
    def poll(self, timeout: float) -> Any: ...


def wait_until(producer: _Polls, when: float) -> None:
    """Until `when` (monotonic), serving the producer's delivery reports while the wait is
    long enough to."""
    while (ahead := when - time.monotonic()) > 0:
        if ahead >= PACE_SLEEP_S:
            producer.poll(ahead)  # returns at the first delivery report: look again
        else:
            time.sleep(ahead)


def publish(
    settings: Settings,
    prompts: Iterable[dict[str, Any] | bytes],
    *,
    on_progress: Callable[[int], None] | None = None,
    rate: float | None = None,
    sent_at: dict[str, float] | None = None,
) -> int:
    """Publish prompts (dicts are JSON-encoded, bytes go as they are); return how many.

    `rate` paces publishing (prompts/s); `sent_at` receives each dict prompt's send time.
    """
    producer = RecordSender(settings)
    n = 0
    start = time.monotonic()
    for p in prompts:
        if rate:
            wait_until(producer, start + n / rate)
        if sent_at is not None and isinstance(p, dict):
            sent_at[str(p.get("id"))] = time.time()
        value = p if isinstance(p, bytes) else _enc.encode(p)
        key = None if isinstance(p, bytes) else str(p.get("id", "")).encode()
        producer.send(settings.prompts_topic, value, key)
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(n)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} prompts were not acknowledged by the broker within 30 s")
    if on_progress is not None:
        on_progress(n)
    return n
