"""The local Apache Kafka broker's cluster id: the storage tool takes it as an argument, so it
must never look like an option."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest

from llm_worker.devkit import kafka_config


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xf8: the first six bits are 62, which URL-safe base64 writes as "-"
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    plain = uuid.UUID(int=1)
    draws: Iterator[uuid.UUID] = iter([dashed, dashed, plain])
    monkeypatch.setattr(kafka_config.uuid, "uuid4", lambda: next(draws))
    cid = kafka_config.new_cluster_id()
    assert cid == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cid) == 22


def test_cluster_ids_are_kafka_shaped() -> None:
    ids = {kafka_config.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(c) == 22 and not c.startswith("-") for c in ids)
