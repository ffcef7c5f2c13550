"""Offset commits that never hold the consumer thread.

librdkafka's synchronous commit blocks every other call on the consumer, `consume` included,
until the coordinator answers. With the broker away that is until the group session times out
(45 s by default), and then the next commit blocks again: after a broker restart, a worker
committing every second read almost nothing, and could not serve the rejoin the commit was
waiting for (seen in CI on Apache Kafka, broker restarted under load). So commits are sent
with `asynchronous=True`, and librdkafka's answer comes back through the `on_commit` callback,
which it calls inside a `consume` on the consumer thread. `PendingCommits` matches each answer
to the commit it belongs to and settles the caller's future on its event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from .transport import Key

__all__ = ["CommitAnswer", "PendingCommits"]

log = logging.getLogger("llm_worker.kafka")

CommitAnswer = asyncio.Future[bool]
"""True: committed; False: nothing was committed (librdkafka had no offset to commit);
an exception (`KafkaException`): the commit failed."""

_Offsets = tuple[tuple[str, int, int], ...]


def _offsets(parts: list[TopicPartition] | dict[Key, int]) -> _Offsets:
    if isinstance(parts, dict):
        return tuple(sorted((t, p, o) for (t, p), o in parts.items()))
    return tuple(sorted((tp.topic, tp.partition, tp.offset) for tp in parts))


def _settle(answer: CommitAnswer, ok: bool, value: bool | BaseException) -> None:
    if answer.done():  # the caller stopped waiting
        return
    if ok:
        answer.set_result(bool(value))
    else:
        assert isinstance(value, BaseException)
        answer.set_exception(value)


class PendingCommits:
    """Commits sent and not yet answered, oldest first. Both methods run on the consumer
    thread (`sent` where the commit is made, `answered` as librdkafka's `on_commit`)."""

    def __init__(self) -> None:
        self._out: collections.deque[
            tuple[_Offsets, CommitAnswer | None, asyncio.AbstractEventLoop | None]
        ] = collections.deque()

    def __len__(self) -> int:
        return len(self._out)

    def sent(
        self,
        offsets: dict[Key, int],
        answer: CommitAnswer | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """A commit of `offsets` went out; its answer settles `answer` on `loop` (None: the
        answer is only logged)."""
        self._out.append((_offsets(offsets), answer, loop))

    def answered(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit: the oldest commit of the same offsets (answers come
        in the order the commits went, but match by offsets all the same), else the oldest."""
        key = _offsets(parts)
        pick = next((i for i, (k, _, _) in enumerate(self._out) if k == key), 0)
        if not self._out:
            return
        _, answer, loop = self._out[pick]
        del self._out[pick]
        failed = [tp.error for tp in parts if tp.error is not None]
        outcome: bool | BaseException
        if err is not None and err.code() == KafkaError._NO_OFFSET:
            ok, outcome = True, False
        elif err is not None or failed:
            ok, outcome = False, KafkaException(err if err is not None else failed[0])
        else:
            ok, outcome = True, True
        if answer is None:
            if ok:
                log.info("committed on revoke: %s", [(t, p, o) for t, p, o in key])
            else:
                log.warning("commit on revoke failed (read again by the next owner): %s", outcome)
            return
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_settle, answer, ok, outcome)
