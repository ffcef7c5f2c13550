"""The producer's delivery reports on a real broker: the event loop polls the producer itself
(issue 26: no thread hands reports over), so reports must still come back, on the loop, for
records produced in a burst, for one produced after the bridge sat idle, and after a handler
that raised."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from llm_worker.worker.config import Settings
from llm_worker.worker.stream.kafka import POLL_IDLE_S, KafkaBridge
from llm_worker.worker.stream.transport import Ack
from tests.integration import kafka_helpers as kh

pytestmark = pytest.mark.integration


async def _until(cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "delivery reports did not come"
        await asyncio.sleep(0.01)


async def test_delivery_reports_come_back_on_the_loop_with_no_polling_thread(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings()
    await asyncio.to_thread(kh.create_topic, s.kafka_bootstrap_servers, s.completions_topic, 1)
    bridge = KafkaBridge[int](s)
    seen: list[tuple[int, bool, int]] = []  # token, delivered, the handler's thread
    raised = False

    def handler(acks: list[Ack[int]]) -> None:
        nonlocal raised
        seen.extend((a.token, a.error is None, threading.get_ident()) for a in acks)
        if not raised:
            raised = True
            raise RuntimeError("a handler that fails once")

    bridge.set_ack_handler(handler)
    before = {t.ident for t in threading.enumerate()}
    await bridge.start()
    try:
        added = [t.name for t in threading.enumerate() if t.ident not in before]
        assert added == ["kafka-consumer"]  # the consumer's thread; nothing polls the producer

        for i in range(500):  # a burst; the first report's handler raises
            bridge.produce_nowait(s.completions_topic, b"v%d" % i, None, None, i)
        await _until(lambda: len(seen) == 500)
        assert raised

        await asyncio.sleep(3 * POLL_IDLE_S)  # idle: the next poll is POLL_IDLE_S away
        bridge.produce_nowait(s.completions_topic, b"late", None, None, 500)
        await _until(lambda: len(seen) == 501)
    finally:
        await bridge.close()

    assert sorted(token for token, _, _ in seen) == list(range(501))
    assert all(ok for _, ok, _ in seen)
    assert {thread for _, _, thread in seen} == {threading.get_ident()}  # the loop's
