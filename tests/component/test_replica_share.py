"""The replica's share of the cluster-wide rate limits, through the real `App` and its group
watcher: when the member count and this replica's share of the partitions disagree, the member
count wins. Three members on four partitions take a third each (together the whole limit); the
one holding two partitions must not take half, nor a quarter."""

from __future__ import annotations

import pytest

from llm_worker.devkit.fake_server import FakeServer

from .conftest import run_app, wait_for
from .fakes import FakeBridge


async def test_three_members_on_four_partitions_each_take_a_third(provider: FakeServer) -> None:
    env = {"LLM_WORKER_TOPIC_PARTITIONS": "4"}
    async with run_app(provider, env, rows=lambda h: [h.row("m1", rpm_limit=180)]) as h:
        others = [FakeBridge(h.settings, h.broker) for _ in range(2)]
        for other in others:
            await other.start()
        await wait_for(lambda: len(h.bridge.assignment) == 2, what="two of four partitions")
        # the watcher looks at the group after each rebalance (and a second for it to settle)
        await wait_for(lambda: h.app.ready()[1]["group_members"] == 3, what="three members")
        share = h.app.limiter.share
        for other in others:
            await other.close()
    assert share == pytest.approx(1 / 3)  # not 2/4 (its partitions), not 1/4 (one each)
