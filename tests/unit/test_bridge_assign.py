"""The real bridge (`worker/stream/kafka.py`) resumes what it is assigned.

librdkafka keeps an application's pause on a partition across unassign and assign: a partition
paused when it was revoked would never be read again once it comes back. The component suite's
fake bridge resumes by itself, so only these tests, which drive the real bridge's rebalance
callbacks with a consumer that keeps pauses as librdkafka does, see the bridge's own resume.
"""

from __future__ import annotations

from confluent_kafka import TopicPartition

from llm_worker.worker.config import Settings
from llm_worker.worker.stream.kafka import KafkaBridge, Key


class PauseKeepingConsumer:
    """The part of librdkafka's consumer the rebalance callbacks use: a pause is kept on the
    partition, whatever the assignment does, until `resume`."""

    def __init__(self) -> None:
        self.paused: set[Key] = set()
        self.calls: list[str] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("resume")
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}


def _bridge(consumer: PauseKeepingConsumer) -> tuple[KafkaBridge[object], list[list[Key]]]:
    bridge = KafkaBridge[object](Settings())
    assigned: list[list[Key]] = []

    def on_assign(keys: list[Key]) -> None:
        consumer.calls.append("on_assign")
        assigned.append(keys)

    bridge.set_rebalance_hooks(on_assign, lambda keys: {})
    return bridge, assigned


def _tps(*parts: int) -> list[TopicPartition]:
    return [TopicPartition("llm_prompts", p) for p in parts]


def test_a_partition_paused_when_revoked_is_read_again_when_it_comes_back() -> None:
    consumer = PauseKeepingConsumer()
    bridge, assigned = _bridge(consumer)
    bridge._assign_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]
    consumer.pause(_tps(0))  # the worker was full when the rebalance came
    bridge._revoke_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]
    assert bridge.assignment == frozenset()
    assert consumer.paused == {("llm_prompts", 0)}  # librdkafka keeps it

    bridge._assign_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]

    assert consumer.paused == set()
    assert bridge.assignment == {("llm_prompts", 0), ("llm_prompts", 1)}
    assert assigned[-1] == [("llm_prompts", 0), ("llm_prompts", 1)]


def test_the_resume_comes_before_the_worker_hears_of_the_assignment() -> None:
    """The worker may pause a partition from its assign hook (a full worker holds): a resume
    after the hook would undo that pause."""
    consumer = PauseKeepingConsumer()
    bridge, _ = _bridge(consumer)
    bridge._assign_cb(consumer, _tps(2))  # type: ignore[arg-type]
    assert consumer.calls == ["resume", "on_assign"]


def test_an_empty_assignment_resumes_nothing_and_still_tells_the_worker() -> None:
    consumer = PauseKeepingConsumer()
    bridge, assigned = _bridge(consumer)
    bridge._assign_cb(consumer, [])  # type: ignore[arg-type]
    assert consumer.calls == ["on_assign"]
    assert assigned == [[]]
