"""Limits a request can never fit, and waits for rate-limit capacity that end at the final
deadline (`worker.calling.caller`), against the scripted provider of `caller_fakes.py`."""

from __future__ import annotations

import pytest

from llm_worker.adapters.base import ProviderRequest
from llm_worker.adapters.errors import BadRequest, RateLimited
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import resolve
from llm_worker.worker.calling.caller import CallFailed
from llm_worker.worker.calling.ratelimit import Limit

from .caller_fakes import Setup, answer

HUGE = ProviderRequest(prompt="hello there", max_tokens=10**15)


def unlimited_row(**kw: object) -> ModelRow:
    """A row with no `max_tokens` of its own, 60,000 tokens a minute (the issue's row)."""
    fields: dict[str, object] = {
        "model_id": "big",
        "provider": "fake",
        "endpoint": "http://p",
        "upstream_model": "u",
        "tpm_limit": 60_000,
    }
    fields.update(kw)
    return ModelRow(**fields)  # type: ignore[arg-type]


async def test_a_max_tokens_no_bucket_can_hold_ends_at_once_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    cands = resolve({"big": unlimited_row()}, "big")
    with pytest.raises(CallFailed) as info:
        await s.caller.call(cands, HUGE, deadline=s.clock.now + 60)
    err = info.value.error
    assert type(err) is BadRequest and not err.retryable
    assert err.message.startswith(
        "max_tokens 1000000000000000 (about 1000000000000003 tokens with the prompt) exceeds"
        " the tpm limit 60000 of registry row 'big' (its tpm_limit)"
    )
    assert info.value.attempts == 0 and s.provider.called == []
    assert s.limiter.acquired == []  # nothing reserved: the bucket is as it was


async def test_a_fallback_whose_limit_fits_answers_instead(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    rows = {
        "big": unlimited_row(fallback_model_id="roomy"),
        "roomy": unlimited_row(model_id="roomy", endpoint="http://f", max_tokens=4_000),
    }
    s.provider.script = {"http://f": [answer()]}
    res = await s.caller.call(resolve(rows, "big"), HUGE, deadline=s.clock.now + 60)
    assert res.candidate.endpoint == "http://f" and s.provider.called == ["http://f"]
    assert s.provider.max_tokens == [4_000]  # the row's cap, not 10**15


async def test_a_tenant_limit_no_request_can_fit_in_names_the_tenant(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, limits={"default_tenant": Limit(tpm=1_000)})
    cands = resolve({"big": unlimited_row(tpm_limit=None, max_tokens=4_000)}, "big")
    with pytest.raises(CallFailed) as info:
        await s.caller.call(cands, HUGE, deadline=s.clock.now + 60, tenant="acme")
    assert "exceeds the tpm limit 1000 of tenant 'acme' (LLM_WORKER_TENANT_TPM)" in str(
        info.value.error
    )


async def test_the_worker_wide_cap_bounds_what_is_sent_and_reserved(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_tokens_cap=8_000)
    s.provider.script = {"http://p": [answer()]}
    cands = resolve({"big": unlimited_row()}, "big")
    res = await s.caller.call(cands, HUGE, deadline=s.clock.now + 60)
    assert res.attempts == 1
    assert s.provider.max_tokens == [8_000]
    assert [a["tokens"] for a in s.limiter.acquired] == [8_000 + len("hello there") // 4 + 1]


async def test_a_wait_for_rate_limit_capacity_ends_at_the_final_deadline_saying_so(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.caller.capacity_wait_s = 30.0
    s.limiter.wait = 1e12  # capacity that never comes
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.clock.now == pytest.approx(100.0 + 5.0 + 30.0)  # the final deadline, not before
    err = info.value.error
    assert type(err) is RateLimited and err.retryable
    assert err.message == (
        "rate limit model:m:tpm had no capacity for 35.0 s (it needed 999999999965.0 s more);"
        " request deadline passed after 0 attempts and 0.0s held"
    )
    assert s.provider.called == []
