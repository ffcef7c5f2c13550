"""The registry cache while PostgreSQL cannot be reached: what the worker reports and when it
gives up. Loading, NOTIFY, stale snapshots and reconnects need a real PostgreSQL:
tests/integration/test_registry_pg.py."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from llm_worker.adapters.backoff import Backoff
from llm_worker.registry.cache import RECONNECT_BASE_S, RegistryCache
from llm_worker.registry.errors import RegistryUnavailable

NOWHERE = "postgresql://llm:s3cr3t-pw@127.0.0.1:1/registry"  # port 1: connection refused
SHOWN = "postgresql://llm:***@127.0.0.1:1/registry"


async def test_start_gives_up_naming_the_database_the_attempts_and_the_last_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="llm_worker.registry")
    cache = RegistryCache(NOWHERE, backoff_cap_s=0.05)
    with pytest.raises(RegistryUnavailable) as info:
        await cache.start(timeout=0.5)
    message = str(info.value)
    found = re.fullmatch(
        r"model registry not loaded: gave up after 0\.5 s \((\d+) attempts\) on PostgreSQL at "
        rf"DATABASE_URL={re.escape(SHOWN)} \((.+)\): set DATABASE_URL to a database this host "
        "can reach, or LLM_WORKER_REGISTRY_WAIT_S to wait longer",
        message,
    )
    assert found, message
    attempts = int(found.group(1))
    assert attempts >= 2  # retried, not given up after one refusal
    assert "refused" in found.group(2).lower() and "s3cr3t-pw" not in message
    # a progress line every PROGRESS_S (5 s), not one per attempt: one in half a second
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"registry: cannot reach PostgreSQL at DATABASE_URL={SHOWN} (connection failed: "
    )
    assert "retrying for 0 s more (LLM_WORKER_REGISTRY_WAIT_S=0.5)" in warnings[0]
    assert "s3cr3t-pw" not in caplog.text
    stats = cache.stats()
    assert stats == {
        "rows": 0,
        "reloads": 0,
        "reload_errors": attempts,
        "last_reload_age_s": None,
        "stale": False,
        "loaded": False,
        "listening": False,
        "notifications": 0,
    }
    await cache.close()


async def test_before_the_first_load_resolve_says_the_registry_is_not_loaded() -> None:
    cache = RegistryCache(NOWHERE)
    with pytest.raises(RegistryUnavailable) as info:
        cache.resolve("chat-small")
    assert str(info.value) == f"model registry not loaded yet from PostgreSQL at {SHOWN}"
    assert info.value.retryable  # the prompt waits for the registry, it is not failed
    assert cache.get("chat-small") is None and dict(cache.rows) == {}
    assert not cache.loaded and not cache.stale


async def test_close_stops_a_start_that_waits_forever() -> None:
    cache = RegistryCache(NOWHERE, backoff_cap_s=0.05)
    start = asyncio.create_task(cache.start())  # no timeout: retries until closed
    async with asyncio.timeout(10):
        while cache.stats()["reload_errors"] == 0:
            await asyncio.sleep(0.01)
    await cache.close()
    await cache.close()  # idempotent
    with pytest.raises(RegistryUnavailable, match=r"not usable before close\(\) \(\d+ attempts\)"):
        async with asyncio.timeout(10):
            await start
    with pytest.raises(RuntimeError, match=r"^RegistryCache is closed$"):
        await cache.start(timeout=1)


def test_settings_a_cache_cannot_work_with_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^refresh_s must be > 0, got 0$"):
        RegistryCache(NOWHERE, refresh_s=0)
    with pytest.raises(ValueError, match=r"^max_depth must be >= 0, got -1$"):
        RegistryCache(NOWHERE, max_depth=-1)
    RegistryCache(NOWHERE, refresh_s=0.001, max_depth=0)  # the smallest accepted


@pytest.mark.parametrize(
    ("attempt", "cap", "ceiling"),
    [(0, 5.0, 0.1), (1, 5.0, 0.1), (2, 5.0, 0.2), (4, 5.0, 0.8), (7, 5.0, 5.0), (3, 0.25, 0.25)],
)
def test_reconnect_backoff_doubles_up_to_the_cap_with_jitter(
    attempt: int, cap: float, ceiling: float
) -> None:
    """How long a worker waits between attempts to reach PostgreSQL: half to all of
    `0.1 s * 2**(attempt-1)`, never more than the cap."""
    schedule = Backoff(
        RECONNECT_BASE_S, cap, "equal"
    )  # what RegistryCache(backoff_cap_s=cap) waits
    delays = [schedule.delay(attempt) for _ in range(400)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert min(delays) < ceiling * 0.6 and max(delays) > ceiling * 0.9  # jittered over the span
