"""Commit answers matched to the commits they belong to (`worker/stream/commits.py`)."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from llm_worker.worker.stream.commits import CommitAnswer, PendingCommits


def _tps(*offsets: tuple[int, int]) -> list[TopicPartition]:
    return [TopicPartition("t", p, o) for p, o in offsets]


async def _settled(answer: CommitAnswer) -> bool | BaseException:
    await asyncio.wait({answer}, timeout=1)
    exc = answer.exception()
    return exc if exc is not None else answer.result()


async def test_each_answer_settles_the_commit_of_its_offsets() -> None:
    loop = asyncio.get_running_loop()
    pending = PendingCommits()
    first, second = loop.create_future(), loop.create_future()
    pending.sent({("t", 0): 5, ("t", 1): 7}, first, loop)
    pending.sent({("t", 0): 9}, second, loop)
    pending.answered(None, _tps((0, 9)))  # out of order: matched by offsets
    assert await _settled(second) is True
    assert not first.done()
    pending.answered(None, _tps((1, 7), (0, 5)))
    assert await _settled(first) is True
    assert len(pending) == 0


async def test_a_failed_commit_raises_and_nothing_to_commit_is_false() -> None:
    loop = asyncio.get_running_loop()
    pending = PendingCommits()
    failed, empty = loop.create_future(), loop.create_future()
    pending.sent({("t", 0): 5}, failed, loop)
    pending.sent({("t", 0): 6}, empty, loop)
    pending.answered(KafkaError(KafkaError._WAIT_COORD), _tps((0, 5)))
    pending.answered(KafkaError(KafkaError._NO_OFFSET), [])  # no offsets named: the oldest
    got = await _settled(failed)
    assert isinstance(got, KafkaException)
    assert got.args[0].code() == KafkaError._WAIT_COORD
    assert await _settled(empty) is False


async def test_a_revoke_commit_is_logged_and_a_late_answer_to_a_caller_gone_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    pending = PendingCommits()
    gone = loop.create_future()
    pending.sent({("t", 2): 3}, None, None)
    pending.sent({("t", 0): 1}, gone, loop)
    gone.cancel()  # the caller stopped waiting
    with caplog.at_level("INFO", logger="llm_worker.kafka"):
        pending.answered(None, _tps((0, 1)))
        pending.answered(None, [TopicPartition("t", 2, 3)])
        pending.answered(None, [TopicPartition("t", 2, 3)])  # no commit left: ignored
        await asyncio.sleep(0)
    assert "committed on revoke: [('t', 2, 3)]" in caplog.text
    assert len(pending) == 0
