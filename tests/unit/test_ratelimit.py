"""Rate limits: requests wait (never fail) until every level has capacity, on a fake clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from llm_worker.worker.calling.ratelimit import (
    MAX_RESERVE_S,
    Limit,
    RateLimiter,
    RateLimitTimeout,
    RateRequest,
    TokenBucket,
    replica_share,
)


class FakeTime:
    """A clock plus an asyncio-compatible sleep that only returns when `advance` passes it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def _settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        end = self.now + seconds
        await self._settle()
        while True:
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            wake, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            fut.set_result(None)
            await self._settle()
        self.now = end
        await self._settle()


def limiter(t: FakeTime, **kw: object) -> RateLimiter:
    return RateLimiter(clock=t, sleep=t.sleep, **kw)  # type: ignore[arg-type]


async def take(rl: RateLimiter, **kw: object) -> float:
    args: dict[str, object] = {
        "endpoint": "ep",
        "model_id": "m",
        "rpm": None,
        "tpm": None,
        "tenant": None,
        "tokens": 1,
    }
    args.update(kw)
    deadline = args.pop("deadline", None)
    return await rl.acquire(RateRequest(**args), deadline=deadline)  # type: ignore[arg-type]


def spawn(n: int, rl: RateLimiter, **kw: object) -> list[asyncio.Task[float]]:
    return [asyncio.create_task(take(rl, **kw)) for _ in range(n)]


def done(tasks: list[asyncio.Task[float]]) -> int:
    return sum(t.done() for t in tasks)


# -- one bucket ------------------------------------------------------------------------------


def test_token_bucket_takes_then_says_how_long_to_wait() -> None:
    t = FakeTime()
    b = TokenBucket(rate_per_s=2.0, burst=4.0, clock=t)
    assert [b.try_take() for _ in range(4)] == [0.0] * 4
    assert b.try_take() == pytest.approx(0.5)
    t.now += 0.5
    assert b.try_take() == 0.0
    assert b.try_take(2) == pytest.approx(1.0)
    t.now += 10  # refills to the burst, not beyond
    assert [b.try_take() for _ in range(5)] == [0.0] * 4 + [pytest.approx(0.5)]


def test_token_bucket_oversized_request_goes_when_full_and_leaves_debt() -> None:
    t = FakeTime()
    b = TokenBucket(rate_per_s=100.0, burst=100.0, clock=t)
    assert b.try_take(500) == 0.0  # larger than the burst: admitted when full, not never
    assert b.try_take(1) == pytest.approx(4.01)  # ...leaving a debt of 400 tokens


def test_token_bucket_penalty_pauses_then_restarts_empty() -> None:
    t = FakeTime()
    b = TokenBucket(rate_per_s=10.0, burst=10.0, clock=t)
    b.penalize(3.0)
    assert b.try_take() == pytest.approx(3.1)
    t.now += 3.1
    assert b.try_take() == 0.0
    assert b.try_take() == pytest.approx(0.1)


# -- the limiter -----------------------------------------------------------------------------


async def test_capacity_means_no_wait_and_no_sleep() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, rpm=600, tpm=100_000, tokens=500) == 0.0
    assert t._sleepers == []
    assert rl.stats().acquired == 1 and rl.stats().delayed == 0


async def test_rpm_600_admits_the_burst_then_10_per_second() -> None:
    t = FakeTime()
    rl = limiter(t)
    tasks = spawn(200, rl, rpm=600)
    await t.advance(0)
    assert done(tasks) == 10  # a 1 s burst
    assert rl.waiting == 190
    await t.advance(10)
    assert 108 <= done(tasks) <= 111
    assert rl.waiting == 200 - done(tasks)
    await t.advance(10)
    assert done(tasks) == 200
    assert rl.waiting == 0
    for task in tasks:
        task.result()  # none failed


async def test_tpm_limits_big_requests() -> None:
    t = FakeTime()
    rl = limiter(t)
    tasks = spawn(20, rl, tpm=60_000, tokens=3_000)  # 1,000 tokens/s
    await t.advance(0)
    assert done(tasks) == 1
    await t.advance(30)
    assert 10 <= done(tasks) <= 11  # 30,000 tokens in ~30 s
    await t.advance(30)
    assert done(tasks) == 20


async def test_the_strictest_level_wins() -> None:
    t = FakeTime()
    rl = limiter(
        t,
        endpoints={"ep": Limit(rpm=1200)},
        tenants={"slow": Limit(rpm=60)},
        default_tenant=Limit(rpm=6000),
    )
    slow = spawn(30, rl, rpm=600, tenant="slow")  # tenant: 1/s
    fast = spawn(30, rl, rpm=600, tenant="fast")  # model: 10/s
    await t.advance(3)
    assert done(fast) == 30  # the slow tenant's queue did not block the shared model
    assert 3 <= done(slow) <= 5
    await t.advance(30)
    assert done(slow) == 30


async def test_endpoint_limit_applies_across_models() -> None:
    t = FakeTime()
    rl = limiter(t, endpoints={"ep": Limit(rpm=120)})  # 2/s for everything on "ep"
    a = spawn(10, rl, model_id="a", rpm=6000)
    b = spawn(10, rl, model_id="b", rpm=6000)
    await t.advance(4)
    assert 9 <= done(a) + done(b) <= 11


async def test_share_splits_the_limit_between_replicas() -> None:
    t = FakeTime()
    rl = limiter(t)
    rl.set_share(2)  # two replicas
    assert rl.share == 0.5
    tasks = spawn(100, rl, rpm=600)
    await t.advance(10)
    assert 54 <= done(tasks) <= 56  # 5/s (+ a 5-request burst) instead of 10/s
    rl.set_share(1)  # a replica left: the queue speeds up at once
    await t.advance(3)
    # 10/s, plus the larger burst (5 more): places are handed out only a burst ahead
    assert 83 <= done(tasks) <= 92


async def test_429_penalty_pauses_the_endpoint() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl) == 0.0
    rl.penalize("ep", 5.0)
    blocked = spawn(3, rl)
    other = spawn(1, rl, endpoint="other-ep")
    await t.advance(4.9)
    assert done(blocked) == 0 and done(other) == 1
    await t.advance(0.2)
    assert done(blocked) == 3
    assert blocked[0].result() == pytest.approx(5.0)


async def test_penalty_moves_queued_requests_back() -> None:
    t = FakeTime()
    rl = limiter(t, endpoints={"ep": Limit(rpm=60)})  # 1/s
    tasks = spawn(5, rl)
    await t.advance(1.5)
    assert done(tasks) == 2
    rl.penalize("ep", 10.0)
    await t.advance(9.0)
    assert done(tasks) == 2
    await t.advance(10.0)
    assert done(tasks) == 5


async def test_deadline_ends_the_wait_when_it_comes_and_takes_nothing() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, rpm=60) == 0.0  # the 1-request burst is gone: next in 1 s
    late = asyncio.create_task(take(rl, rpm=60, deadline=t.now + 0.5))
    await t.advance(0.49)
    assert not late.done()  # known to overrun, but only the deadline ends a wait
    await t.advance(0.02)
    assert late.done()
    with pytest.raises(RateLimitTimeout) as info:
        late.result()
    assert "model:m:rpm" in str(info.value) and info.value.wait_s == pytest.approx(0.5)
    assert info.value.waited_s == pytest.approx(0.5)
    assert rl.stats().timeouts == 1
    task = asyncio.create_task(take(rl, rpm=60, deadline=t.now + 2))
    await t.advance(0.5)
    assert task.done() and task.result() == pytest.approx(0.49)  # at 1.0 s, when it was due


async def test_a_wait_past_the_deadline_still_goes_when_replicas_leave() -> None:
    t = FakeTime()
    rl = limiter(t, share=10, max_nap_s=0.5)  # ten replicas: 6 a minute here
    assert await take(rl, rpm=60) == 0.0  # next in 10 s: known to pass the deadline
    task = asyncio.create_task(take(rl, rpm=60, deadline=t.now + 5))
    await t.advance(1.0)
    assert not task.done()
    rl.set_share(1)  # the others left: 1 a second
    await t.advance(0.85)
    assert not task.done()
    await t.advance(0.1)  # its place, 9 s away at 1/10 the rate, comes up 0.9 s after
    assert task.done() and task.result() == pytest.approx(1.9)  # served, not failed


async def test_cancelled_waiter_gives_its_place_back() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, rpm=60) == 0.0
    first, second = spawn(2, rl, rpm=60)
    await t.advance(0)
    assert rl.waiting == 2
    second.cancel()
    await t.advance(0)
    assert rl.waiting == 1
    newcomer = spawn(1, rl, rpm=60)
    await t.advance(2.0)
    assert first.done() and newcomer[0].done()  # took the cancelled place at t=2


async def test_big_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    t = FakeTime()
    rl = limiter(t)
    kw = {"tpm": 6_000}  # 100 tokens/s, burst 100
    small = spawn(5, rl, tokens=20, **kw)
    big = asyncio.create_task(take(rl, tokens=100, **kw))
    for _ in range(100):  # keep the bucket busy: 50 tokens every 0.25 s... 200/s of demand
        small += spawn(1, rl, tokens=50, **kw)
        await t.advance(0.25)
    assert big.done()
    assert big.result() < 3.0


async def test_row_limit_changes_take_effect() -> None:
    t = FakeTime()
    rl = limiter(t)
    slow = spawn(10, rl, rpm=60)
    await t.advance(2)
    assert done(slow) == 3
    fast = spawn(20, rl, rpm=6000)  # the row was raised to 100/s
    await t.advance(0)
    assert done(fast) == 20
    await t.advance(1.0)  # the requests already waiting speed up too (within max_nap_s)
    assert done(slow) == 10
    lowered = spawn(10, rl, rpm=60)  # lowered again: back to 1/s
    await t.advance(5)
    assert done(lowered) <= 6


def test_stats_and_bad_config() -> None:
    t = FakeTime()
    rl = limiter(t, default_tenant=Limit(rpm=10))
    stats = rl.stats()
    assert (stats.waiting, stats.acquired, stats.delayed, stats.timeouts) == (0, 0, 0, 0)
    assert stats.share == 1.0
    with pytest.raises(ValueError):
        rl.set_share(0)
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


async def test_charge_makes_later_requests_pay_for_an_underestimate() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, tpm=6_000, tokens=100) == 0.0  # estimated 100, full burst
    rl.charge(RateRequest(endpoint="ep", model_id="m", tpm=6_000, tokens=100), used=500)
    task = asyncio.create_task(take(rl, tpm=6_000, tokens=100))
    await t.advance(4.9)
    assert not task.done()
    await t.advance(0.2)
    assert task.done()


def test_replica_share_from_members_or_partitions() -> None:
    assert replica_share(members=3, partitions=12, mine=4) == pytest.approx(1 / 3)
    # member count and partition share disagree: 3 members on 4 partitions own 2, 1 and 1;
    # each takes 1/3 (the three together use the whole limit), not its 1/2 or 1/4 of the
    # partitions (together 1, but the one with 2 partitions would get half the limit)
    for mine in (1, 2):
        assert replica_share(members=3, partitions=4, mine=mine) == pytest.approx(1 / 3)
    # members beyond the partition count own nothing and take no share
    assert replica_share(members=6, partitions=4, mine=1) == pytest.approx(1 / 4)
    # the broker does not report members (Tansu): this replica's fraction of partitions
    assert replica_share(members=0, partitions=4, mine=3) == pytest.approx(3 / 4)
    assert replica_share(members=2, partitions=0, mine=1) == pytest.approx(1 / 2)
    # owns nothing yet: keep whatever share it has
    assert replica_share(members=2, partitions=4, mine=0) is None
    assert replica_share(members=0, partitions=0, mine=1) is None


async def test_waiters_cancelled_ahead_of_a_queue_give_their_time_to_those_behind() -> None:
    """A replica loses half its partitions in a rebalance: the waiters queued for them are
    cancelled. Those still waiting behind them move up into the freed time instead of waiting
    for requests that will never go; the rate still holds."""
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, rpm=60) == 0.0  # the 1 s burst is used: one per second from now
    ahead = spawn(30, rl, rpm=60)
    behind = spawn(5, rl, rpm=60)
    await t.advance(0)
    assert rl.waiting == 35
    for task in ahead:  # cancelled in queue order, as a revoke cancels tasks
        task.cancel()
    await t.advance(0)
    assert rl.waiting == 5
    await t.advance(2.5)
    assert done(behind) == 2  # at t=1 and t=2, not after the 30 cancelled places (t=31..)
    await t.advance(3.0)
    assert done(behind) == 5  # and one per second: the rate holds


async def test_three_replicas_on_four_partitions_each_get_a_third_of_a_row_limit() -> None:
    t = FakeTime()
    rl = limiter(t, share=replica_share(members=3, partitions=4, mine=2))
    assert rl.share == pytest.approx(1 / 3)
    # 180 a minute for the row: 1/s here, whatever this replica's share of partitions
    tasks = spawn(4, rl, rpm=180)
    await t.advance(2.5)
    assert done(tasks) == 3  # at 0, 1 and 2 s


async def test_a_huge_max_tokens_takes_a_minute_of_the_bucket_not_years() -> None:
    t = FakeTime()
    rl = limiter(t, default_tenant=Limit(tpm=60_000))
    # the first goes at once (the bucket is full) and may use a minute of tokens, no more
    assert await take(rl, tpm=60_000, tenant="acme", tokens=10**15) == 0.0
    later = asyncio.create_task(take(rl, tpm=60_000, tenant="acme", tokens=100))
    await t.advance(MAX_RESERVE_S - 1.5)
    assert not later.done()
    await t.advance(1.6)
    assert later.done()  # about a minute later, not 31,000 years


async def test_a_usage_charge_holds_a_bucket_back_a_minute_at_most() -> None:
    t = FakeTime()
    rl = limiter(t)
    assert await take(rl, tpm=6_000, tokens=100) == 0.0
    claim = 10**15 + 100  # a provider's claim
    rl.charge(RateRequest(endpoint="ep", model_id="m", tpm=6_000, tokens=100), used=claim)
    later = asyncio.create_task(take(rl, tpm=6_000, tokens=100))
    await t.advance(MAX_RESERVE_S + 1.1)
    assert later.done()


def test_too_large_names_the_limit_a_request_can_never_fit_in() -> None:
    rl = RateLimiter(
        endpoints={"https://api.example.com/v1": Limit(tpm=90_000)},
        tenants={"vip": Limit(tpm=500_000)},
        default_tenant=Limit(tpm=30_000),
        share=4,  # a replica's share does not matter: the cluster could serve it
    )

    def why(tokens: int, **kw: object) -> str | None:
        args: dict[str, object] = {"endpoint": "e", "model_id": "m", "tpm": None, "tenant": None}
        args.update(kw)
        return rl.too_large(RateRequest(tokens=tokens, **args))  # type: ignore[arg-type]

    assert why(10**15) is None  # no tokens limit anywhere: nothing to block
    assert why(60_000, tpm=60_000) is None  # exactly the limit fits
    assert why(60_001, tpm=60_000) == "the tpm limit 60000 of registry row 'm' (its tpm_limit)"
    assert why(40_000, tenant="acme") == (
        "the tpm limit 30000 of tenant 'acme' (LLM_WORKER_TENANT_TPM)"
    )
    assert why(40_000, tenant="vip") is None
    assert why(600_000, tenant="vip") == (
        "the tpm limit 500000 of tenant 'vip' (LLM_WORKER_TENANT_LIMITS)"
    )
    assert why(100_000, endpoint="https://api.example.com/v1") == (
        "the tpm limit 90000 of endpoint https://api.example.com/v1 (LLM_WORKER_ENDPOINT_LIMITS)"
    )
