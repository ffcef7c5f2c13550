"""Rate limits from the environment reach the limiter, and a provider's 429 `Retry-After`
is honoured: the retry waits, and the endpoint pauses for everyone.

Times come from the fake provider's own request log (when each call arrived there), and the
asserts are lower bounds: a slow machine only makes the gaps longer.
"""

from __future__ import annotations

import json

from llm_worker.devkit.fake_server import FakeServer

from .conftest import run_app, wait_for

SLACK_S = 0.15
"""How much earlier than the limit allows a call may seem to arrive: the first call's own
trip to the provider (its clock starts at the limiter, ours at the provider)."""


def _arrivals(calls: list, prefix: str) -> list[float]:  # type: ignore[type-arg]
    return [c.arrived for c in calls if c.text.startswith(prefix)]


async def test_retry_after_delays_the_retry_and_pauses_the_endpoint(
    provider: FakeServer,
) -> None:
    provider.set_profile("r", error_rate=1.0, error_status=429, retry_after_s=1.0)
    async with run_app(provider, rows=lambda h: [h.row("m1", "r")]) as h:
        h.send({"id": "a", "model": "m1", "prompt": "first"})
        await wait_for(lambda: h.app.limiter.stats().penalties == 1, what="the 429")
        provider.set_profile("r", error_rate=0.0)
        h.send({"id": "b", "model": "m1", "prompt": "second"})  # another request, same endpoint
        out = await h.wait(["a", "b"])
    _, retry = _arrivals(h.calls("r"), "first")
    (other,) = _arrivals(h.calls("r"), "second")
    refused_at = h.calls("r")[0].answered
    assert refused_at is not None
    assert retry - refused_at >= 1.0 - 0.01  # the retry waited for Retry-After
    assert other - refused_at >= 1.0 - 0.01  # and so did the other request to that endpoint
    assert out["a"]["status"] == "ok" and out["a"]["attempts"] == 2
    assert out["b"]["status"] == "ok" and out["b"]["attempts"] == 1


async def test_tenant_limits_from_the_environment(provider: FakeServer) -> None:
    env = {
        "LLM_WORKER_TENANT_RPM": "60",  # every tenant: 1/s, a burst of 1
        "LLM_WORKER_TENANT_LIMITS": json.dumps({"vip": {"rpm": 600}}),  # vip: 10/s
    }
    async with run_app(provider, env, rows=lambda h: [h.row("m1")]) as h:
        h.send(
            *({"id": f"a{i}", "model": "m1", "prompt": f"a{i}", "tenant": "a"} for i in range(3))
        )
        h.send(
            *({"id": f"v{i}", "model": "m1", "prompt": f"v{i}", "tenant": "vip"} for i in range(3))
        )
        h.send(*({"id": f"n{i}", "model": "m1", "prompt": f"n{i}"} for i in range(3)))
        await h.wait([f"{t}{i}" for t in "avn" for i in range(3)])
        stats = h.app.limiter.stats()
    a = _arrivals(h.calls(), "a")
    assert a[2] - a[0] >= 2.0 - SLACK_S, a  # 1/s
    assert stats.delayed == 2  # only tenant a's 2nd and 3rd waited: vip and no tenant not


async def test_tenant_tokens_per_minute(provider: FakeServer) -> None:
    env = {"LLM_WORKER_TENANT_TPM": "660"}  # 11 tokens/s
    async with run_app(provider, env, rows=lambda h: [h.row("m1")]) as h:
        # each request is estimated at 11 tokens: 1 for the prompt, 10 for max_tokens
        h.send(
            *(
                {"id": f"t{i}", "model": "m1", "prompt": f"{i}", "max_tokens": 10, "tenant": "t"}
                for i in range(3)
            )
        )
        await h.wait([f"t{i}" for i in range(3)])
    arrived = [c.arrived for c in h.calls()]
    assert arrived[2] - arrived[0] >= 2.0 - SLACK_S, arrived


async def test_endpoint_limits_are_shared_by_every_row_on_the_endpoint(
    provider: FakeServer,
) -> None:
    endpoint = provider.endpoint("shared")
    env = {"LLM_WORKER_ENDPOINT_LIMITS": json.dumps({endpoint + "/": {"rpm": 60}})}
    rows = lambda h: [h.row("m1", "shared"), h.row("m2", "shared"), h.row("free")]  # noqa: E731
    async with run_app(provider, env, rows=rows) as h:
        h.send(
            {"id": "1", "model": "m1", "prompt": "s1"},
            {"id": "2", "model": "m2", "prompt": "s2"},
            {"id": "3", "model": "m1", "prompt": "s3"},
            *({"id": f"f{i}", "model": "free", "prompt": f"f{i}"} for i in range(3)),
        )
        await h.wait(["1", "2", "3", "f0", "f1", "f2"])
        stats = h.app.limiter.stats()
    shared = sorted(c.arrived for c in h.calls("shared"))
    assert shared[2] - shared[0] >= 2.0 - SLACK_S, shared
    assert stats.delayed == 2  # the other endpoint never waited


async def test_row_limits_apply_and_requests_wait_instead_of_failing(
    provider: FakeServer,
) -> None:
    env = {"LLM_WORKER_REQUEST_DEADLINE_S": "0.5"}  # shorter than the wait for capacity
    async with run_app(provider, env, rows=lambda h: [h.row("m1", rpm_limit=60)]) as h:
        h.send(*({"id": f"r{i}", "model": "m1", "prompt": f"r{i}"} for i in range(3)))
        out = await h.wait([f"r{i}" for i in range(3)])
    assert all(d["status"] == "ok" for d in out.values())
    arrived = [c.arrived for c in h.calls()]
    assert arrived[2] - arrived[0] >= 2.0 - SLACK_S, arrived
