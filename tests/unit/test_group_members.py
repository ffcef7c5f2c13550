"""Counting the consumer group's members must not take the admin path that aborts
librdkafka 2.16 when the broker restarts mid-call (tools/repro_eonce_abort.py)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

from llm_worker.worker.stream.admin import group_members


class Admin:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def list_groups(self, group: str, timeout: float) -> list[Any]:
        self.calls.append("list_groups")
        other = SimpleNamespace(id="other", members=[object()] * 5)
        return [SimpleNamespace(id=group, members=[object()] * 3), other]

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> Any:
        self.calls.append("describe_consumer_groups")
        done: Future[Any] = Future()
        done.set_result(SimpleNamespace(members=[object()] * 2))
        return {groups[0]: done}


def test_a_classic_group_is_counted_without_the_coordinator_admin_request() -> None:
    admin = Admin()
    assert group_members(admin, "g", True) == 3  # type: ignore[arg-type]
    assert admin.calls == ["list_groups"]


def test_a_kip848_group_needs_describe_consumer_groups() -> None:
    admin = Admin()
    assert group_members(admin, "g", False) == 2  # type: ignore[arg-type]
    assert admin.calls == ["describe_consumer_groups"]
