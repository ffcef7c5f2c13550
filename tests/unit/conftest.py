"""Fixtures shared by the unit tests that call the fake provider over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llm_worker.adapters.sessions import SessionPool


@pytest.fixture
async def sessions() -> AsyncIterator[SessionPool]:
    pool = SessionPool()
    yield pool
    await pool.close()
