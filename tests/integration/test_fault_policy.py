"""A slow or failing moment must not become error completions (issue 9), seen from outside.

Real broker, real Postgres, the worker in-process, the fake provider in-process. Prompts flow
at a steady rate while the provider slows down or fails for a few seconds; what reached the
provider is counted from its own request log and counters.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import prometheus_client
import pytest

from llm_worker.devkit.fake_server import FakeServer
from llm_worker.registry.store import upsert_row
from llm_worker.worker.app import App
from llm_worker.worker.calling.breaker import BreakerConfig
from llm_worker.worker.config import Settings
from tests.integration.test_failover import Stream, wait_for
from tests.integration.test_features import (
    BREAKER,
    Completions,
    _breaker_key,
    _row,
    _send,
    _topics,
    _with_fallback,
)

pytestmark = pytest.mark.integration


def _outcomes(stream: Stream) -> Counter[str]:
    return Counter(
        d["status"] if d["status"] == "ok" else d["error"]["type"] for _, d in stream.got
    )


async def _baseline(fake: FakeServer, profile: str) -> None:
    """Until `profile` has been called for longer than the latency judge's `min_baseline_s`
    (a worker's first seconds are not judged) and at least 150 times."""
    young = BreakerConfig().min_baseline_s + 1.0

    def ready() -> bool:
        log = fake.log(profile)
        return len(log) >= 150 and time.monotonic() - log[0].at >= young

    await wait_for(ready, timeout=30)


def _arrivals(fake: FakeServer, profile: str, start: float, end: float) -> int:
    """Requests that reached `profile` between two `time.monotonic()` readings."""
    return sum(1 for r in fake.log(profile) if start <= r.at < end)


async def test_the_only_endpoint_slowing_down_for_a_while_costs_no_prompt(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """20 ms, then 1.5 s for 5 s, then 20 ms again: the latency judge notices, but with
    nowhere else to go every call still goes to the endpoint, and every prompt is answered."""
    s = make_settings()  # the default breaker and latency settings
    fake.set_profile("p", latency_ms=20)
    row = _row("m1", fake.endpoint("p"))
    upsert_row(pg_dsn, row)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await _baseline(fake, "p")
        fake.set_profile("p", latency_ms=1500)
        t_slow = time.monotonic()
        await asyncio.sleep(5.0)
        fake.set_profile("p", latency_ms=20)
        t_back = time.monotonic()
        await wait_for(lambda: _arrivals(fake, "p", t_back, time.monotonic()) >= 200, timeout=30)
    assert {d["id"] for _, d in stream.got} == set(stream.sent)  # none lost
    assert _outcomes(stream) == {"ok": len(stream.got)}  # none failed
    judge = app.breakers.get(_breaker_key(row))
    assert judge.latency.demotions >= 1  # the slowness was seen...
    assert judge.opened == 0  # ...and never refused a call
    assert _arrivals(fake, "p", t_slow + 1.0, t_back) >= 100  # calls kept going meanwhile


@pytest.mark.parametrize("mode", [None, "fail"], ids=["default", "fail"])
async def test_the_only_endpoint_failing_for_a_while(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer, mode: str | None
) -> None:
    """Every call fails for 5 s, then the provider is back. By default the prompts are held
    (partitions paused) and all answered `ok` after the recovery; `fail` mode (the control)
    answers some with `circuit_open`, after a cooldown each, and loses none."""
    chosen = {} if mode is None else {"breaker_when_all_open": mode}
    s = make_settings(**BREAKER, **chosen)
    fake.set_profile("w", latency_ms=5)
    row = _row("m1", fake.endpoint("w"))
    upsert_row(pg_dsn, row)
    key = _breaker_key(row)
    await _topics(s)
    app = App(s, http=False)
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await wait_for(lambda: len(stream.got) >= 100, timeout=30)
        fake.set_profile("w", error_rate=1.0, error_status=500)
        await asyncio.sleep(5.0)
        fake.set_profile("w", error_rate=0.0)
        wall_back = time.time()
        await asyncio.sleep(3.0)
    exposition = prometheus_client.generate_latest(app.metrics.registry).decode()
    assert {d["id"] for _, d in stream.got} == set(stream.sent)  # none lost
    outcomes = _outcomes(stream)
    assert app.breakers.get(key).opened >= 1  # the errors opened the breaker
    if mode is None:
        assert outcomes == {"ok": len(stream.got)}, outcomes
        assert app.caller.holds.seconds["circuit_open"] > 0
        held = 'llm_worker_held_seconds_total{reason="circuit_open"}'
        assert held in exposition
    else:
        assert outcomes["circuit_open"] > 0 and set(outcomes) == {"ok", "circuit_open"}, outcomes
    after = stream.after(wall_back + 1.0)  # sent a second after the recovery
    assert after and all(d["status"] == "ok" for d in after)


async def test_traffic_moves_off_a_slow_primary_and_back(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """Two healthy endpoints; the primary slows from 20 ms to 1.5 s: it is demoted and the
    fallback takes the traffic within seconds; when the primary is fast again, probes bring
    the traffic back. Latency never opens its breaker."""
    s = make_settings(breaker_cooldown_s=2.0)
    fake.set_profile("p", latency_ms=20)
    fake.set_profile("f", latency_ms=20)
    row = _with_fallback("m1", fake.endpoint("p"), fake.endpoint("f"))
    upsert_row(pg_dsn, row)
    await _topics(s)
    app = App(s, http=False)
    judge = app.breakers.get(_breaker_key(row))
    calls = lambda name: fake.counters(name)["requests"]  # noqa: E731
    async with app.running(), Stream(s, "m1", rate=100) as stream:
        await _baseline(fake, "p")
        assert calls("f") == 0
        fake.set_profile("p", latency_ms=1500)
        await wait_for(lambda: calls("f") >= 100, timeout=20)  # moved
        assert judge.latency.is_demoted
        p0, f0 = calls("p"), calls("f")
        await wait_for(lambda: calls("f") - f0 >= 300, timeout=30)
        p_slow, f_slow = calls("p") - p0, calls("f") - f0
        fake.set_profile("p", latency_ms=20)
        p1 = calls("p")
        await wait_for(lambda: calls("p") - p1 >= 100, timeout=30)  # and back
        p2, f2 = calls("p"), calls("f")
        await wait_for(lambda: calls("p") - p2 + calls("f") - f2 >= 300, timeout=30)
        p_back, f_back = calls("p") - p2, calls("f") - f2
    assert p_slow <= 0.1 * (p_slow + f_slow), (p_slow, f_slow)  # only probes while slow
    assert p_back >= 0.9 * (p_back + f_back), (p_back, f_back)
    assert not judge.latency.is_demoted and judge.opened == 0
    assert {d["id"] for _, d in stream.got} == set(stream.sent)
    assert _outcomes(stream) == {"ok": len(stream.got)}


async def test_terminal_errors_are_answered_at_once(
    make_settings: Callable[..., Settings], pg_dsn: str, fake: FakeServer
) -> None:
    """A 400 or a 401 will not change on a retry: an error completion after one attempt,
    nothing held."""
    s = make_settings(max_attempts=3)
    for status in (400, 401):
        fake.set_profile(f"e{status}", error_rate=1.0, error_status=status)
        upsert_row(pg_dsn, _row(f"m{status}", fake.endpoint(f"e{status}")))
    await _topics(s)
    prompts = [
        {"id": f"t{status}-{i}", "model": f"m{status}", "prompt": f"q{i}"}
        for status in (400, 401)
        for i in range(10)
    ]
    app = App(s, http=False)
    async with app.running(), Completions(s) as comps:
        await _send(s, prompts)
        out = await comps.wait([p["id"] for p in prompts], timeout=60)
    kinds = Counter((d["model"], d["error"]["type"], d["attempts"]) for d in out.values())
    assert kinds == {("m400", "bad_request", 1): 10, ("m401", "auth_error", 1): 10}, kinds
    assert fake.counters("e400")["requests"] == 10 and fake.counters("e401")["requests"] == 10
    assert app.caller.holds.seconds == {"circuit_open": 0.0, "retry_backoff": 0.0}
