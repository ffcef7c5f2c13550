"""The Apache Kafka launcher of the local stack (`devkit/kafka_broker.py`), on its own broker
whichever broker the session uses: acknowledged records survive a clean restart and a crash
(SIGKILL) on the same port, `close()` leaves no process, and a missing Java, Maven or
distribution is an error that names what to install.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from llm_worker.devkit.kafka_broker import KafkaBrokerError, find_java, kafka_libs
from tests.integration import kafka_helpers as kh
from tests.integration.conftest import start_kafka_broker

pytestmark = pytest.mark.integration


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Every record of `topic`, from the start to the high watermark of each partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "log_level": 0})
    try:
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[bytes] = []
        pos = dict.fromkeys(ends, 0)
        while any(pos[p] < ends[p] for p in ends):
            for m in c.consume(500, 1.0):
                if m.error() is None:
                    out.append(m.value())
                    pos[m.partition()] = m.offset() + 1
        return out
    finally:
        c.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except OSError:
        return "Z"


def test_records_survive_restart_and_crash_and_close_leaves_no_process() -> None:
    broker = start_kafka_broker()
    try:
        port, topic = broker.port, f"durable_{uuid.uuid4().hex[:8]}"
        kh.create_topic(broker.bootstrap, topic, 2)
        first = [f"a-{i}".encode() for i in range(500)]
        kh.produce(broker.bootstrap, topic, first)  # idempotent producer, flushed: acked

        broker.restart()  # a clean shutdown and start, same port, same data
        assert broker.port == port
        assert sorted(_read_all(broker.bootstrap, topic, 2)) == sorted(first)

        second = [f"b-{i}".encode() for i in range(500)]
        kh.produce(broker.bootstrap, topic, second)
        broker.kill()  # SIGKILL: no clean shutdown
        broker.start()
        assert sorted(_read_all(broker.bootstrap, topic, 2)) == sorted(first + second)
        proc = broker._proc
        assert proc is not None
        pid = proc.pid
    finally:
        broker.close()
    assert not _alive(pid), "the broker's JVM outlived close()"
    assert broker.data_dir is None


def test_missing_java_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", "/nonexistent-jdk")
    with pytest.raises(KafkaBrokerError, match=r"Java 17\+.*install a JDK"):
        find_java()


def test_missing_maven_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: jars must be fetched
    monkeypatch.setenv("PATH", str(tmp_path))  # and no mvn to fetch them with
    with pytest.raises(KafkaBrokerError, match=r"install Maven.*or set KAFKA_HOME"):
        kafka_libs()


def test_kafka_home_that_is_not_a_distribution_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KafkaBrokerError, match="not an unpacked Apache Kafka distribution"):
        kafka_libs(kafka_home=str(tmp_path))
