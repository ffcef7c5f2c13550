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

    # applying the rebalance, which the callbacks do themselves
    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"assign {[tp.partition for tp in partitions]}")

    def unassign(self) -> None:
        self.calls.append("unassign")

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"incremental_assign {[tp.partition for tp in partitions]}")

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(f"incremental_unassign {[tp.partition for tp in partitions]}")


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
    assert consumer.calls == ["resume", "on_assign", "assign [2]"]


def test_an_empty_assignment_resumes_nothing_and_still_tells_the_worker() -> None:
    consumer = PauseKeepingConsumer()
    bridge, assigned = _bridge(consumer)
    bridge._assign_cb(consumer, [])  # type: ignore[arg-type]
    assert consumer.calls == ["on_assign", "assign []"]
    assert assigned == [[]]


def test_the_callbacks_apply_each_rebalance_themselves_eagerly_with_range() -> None:
    """confluent-kafka applies a rebalance a callback left alone, after asking librdkafka for
    the protocol while holding the GIL; during a close that question can go unanswered for
    ever (librdkafka #4041: a clean-clone CI run froze in `Consumer.close`). The callbacks
    apply it themselves, so that question is never asked."""
    consumer = PauseKeepingConsumer()
    bridge, _ = _bridge(consumer)
    bridge._assign_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]
    bridge._revoke_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]
    bridge._assign_cb(consumer, _tps(1))  # type: ignore[arg-type]
    bridge._lost_cb(consumer, _tps(1))  # type: ignore[arg-type]
    applied = [c for c in consumer.calls if "assign" in c and c != "on_assign"]
    assert applied == ["assign [0, 1]", "unassign", "assign [1]", "unassign"]


def test_cooperative_rebalances_are_applied_incrementally() -> None:
    consumer = PauseKeepingConsumer()
    bridge, _ = _bridge(consumer)
    bridge._incremental = True
    bridge._assign_cb(consumer, _tps(0, 1))  # type: ignore[arg-type]
    bridge._revoke_cb(consumer, _tps(1))  # type: ignore[arg-type]
    applied = [c for c in consumer.calls if "assign" in c and c != "on_assign"]
    assert applied == ["incremental_assign [0, 1]", "incremental_unassign [1]"]


def test_a_failing_revoke_hook_still_applies_the_revocation() -> None:
    consumer = PauseKeepingConsumer()
    bridge = KafkaBridge[object](Settings())

    def on_revoke(keys: list[Key]) -> dict[Key, int]:
        raise RuntimeError("a bug while settling")

    bridge.set_rebalance_hooks(lambda keys: None, on_revoke)
    bridge._revoke_cb(consumer, _tps(0))  # type: ignore[arg-type]
    assert consumer.calls == ["unassign"]


def test_which_configs_rebalance_incrementally() -> None:
    from llm_worker.worker.stream.kafka_conf import consumer_config, incremental_rebalancing

    assert not incremental_rebalancing(consumer_config(Settings()))  # range, the worker's own
    assert incremental_rebalancing({"partition.assignment.strategy": "cooperative-sticky"})
    assert not incremental_rebalancing({"partition.assignment.strategy": "range,roundrobin"})
    assert incremental_rebalancing({"group.protocol": "consumer"})  # KIP-848: the broker assigns
