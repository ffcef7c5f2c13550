"""`KafkaBroker.start` starts a node again when one of its ports is still taken (a node just
SIGKILLed on it), and only then: any other start-up failure stands at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_worker.devkit import kafka_broker
from llm_worker.devkit.kafka_broker import KafkaBroker
from llm_worker.devkit.kafka_jars import KafkaBrokerError

BIND = "Caused by: java.net.BindException: Address already in use"


def _broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failures: list[str]
) -> tuple[KafkaBroker, list[int]]:
    """A broker whose launches are counted and whose start-up waits fail with `failures`, in
    order, then succeed."""
    broker = KafkaBroker(port=19092)
    broker._classpath = "found"  # no Java, no jars looked for
    broker._dir = tmp_path  # formatted already
    launches: list[int] = []

    def wait_ready(timeout: float = 90.0) -> None:
        if failures:
            raise KafkaBrokerError(
                f"the Kafka broker exited with 1 while starting:\n{failures.pop(0)}"
            )

    monkeypatch.setattr(broker, "_launch", lambda: launches.append(1))
    monkeypatch.setattr(broker, "wait_ready", wait_ready)
    monkeypatch.setattr(kafka_broker, "BIND_RETRY_S", 0.0)
    return broker, launches


def test_a_taken_port_is_tried_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broker, launches = _broker(monkeypatch, tmp_path, [BIND, BIND])
    assert broker.start() is broker
    assert len(launches) == 3


def test_a_port_taken_for_good_ends_in_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker, launches = _broker(monkeypatch, tmp_path, [BIND] * 10)
    with pytest.raises(KafkaBrokerError, match="Address already in use"):
        broker.start()
    assert len(launches) == kafka_broker.BIND_RETRIES + 1


def test_another_failure_is_not_tried_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker, launches = _broker(monkeypatch, tmp_path, ["java.lang.OutOfMemoryError: heap"])
    with pytest.raises(KafkaBrokerError, match="OutOfMemoryError"):
        broker.start()
    assert len(launches) == 1
