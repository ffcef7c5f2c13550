"""The retry loop (`worker.calling.caller`) against a scripted provider: which endpoint is
called and how often, what the request ends with (the answer, the last error, its attempts
and candidate), what the rate limiter is told, and what the metrics and the observer see.

The provider answers from a script per endpoint, the clock is set by hand (a call takes the
time the script says) and the waits between attempts and passes are recorded and made tiny,
so nothing here depends on how fast the machine is."""

from __future__ import annotations

import logging

import msgspec
import pytest

from llm_worker.adapters.errors import (
    AuthError,
    BadRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    ServerError,
)
from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.resolve import resolve
from llm_worker.worker.calling.breaker import BreakerConfig
from llm_worker.worker.calling.caller import CallFailed, estimate_tokens
from llm_worker.worker.calling.routing import endpoint_key

from .caller_fakes import REQUEST, Setup, answer, server_error


async def test_retryable_errors_use_the_attempts_then_the_fallback_answers(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=2)
    s.provider.took = 1.5
    s.provider.script = {"http://p": [server_error(), server_error()], "http://f": [answer()]}
    res = await s.call()
    assert s.provider.called == ["http://p", "http://p", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 3
    assert res.result == answer() and res.latency_ms == 1500.0
    assert s.delays == [(1, "upstream broke")]  # none after the last attempt: move on
    assert s.observer.started == [
        ("m/primary", 1, None),
        ("m/primary", 2, "upstream broke"),
        ("m/fallback", 1, "upstream broke"),
    ]
    # one wait between the attempts; no rate-limit wait (there was none to trace)
    assert s.observer.events == [("held", "m/primary", {"reason": "retry_backoff", "wait_s": 0.0})]
    assert s.caller.held == 0 and s.caller.concurrency.get("http://p").in_use == 0


async def test_a_failed_pass_is_tried_again_without_the_terminally_failed_candidate(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {
        "http://p": [AuthError("bad key", status=401)],
        "http://f": [server_error(), server_error(), answer()],
    }
    res = await s.call()
    assert s.provider.called == ["http://p", "http://f", "http://f", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 4
    assert s.pass_delays == [(1, "upstream broke"), (2, "upstream broke")]
    held = {"reason": "retry_backoff", "wait_s": 0.0}
    assert s.observer.events == [("held", "m/fallback", held)] * 2
    assert s.caller.held == 0 and s.caller.holds.total == 0


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (server_error(), "server_error 503"),
        (ProviderTimeout("no answer in 30s", provider="fake", model="u"), "timeout"),  # no status
    ],
)
async def test_the_second_failed_pass_holds_the_request_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    sessions: SessionPool,
    caplog: pytest.LogCaptureFixture,
    error: ProviderError,
    why: str,
) -> None:
    caplog.set_level(logging.INFO, logger="llm_worker.holds")
    s = Setup(monkeypatch, sessions)
    s.provider.script = {"http://p": [error] * 2 + [answer()], "http://f": []}
    res = await s.call(cands=[s.primary])
    assert res.attempts == 3  # held after the second failed pass, not only after a third
    held = [m for m in caplog.messages if "holding requests" in m]
    assert held == [
        f"endpoint fake:http://p#u: holding requests (retry_backoff: {why})",
        "endpoint fake:http://p#u: no longer holding requests: 1 held over 0.0 s, longest 0.0 s",
    ]
    assert s.caller.holds.total == 0


async def test_every_candidate_failing_terminally_ends_at_once_with_the_last_error(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.script = {
        "http://p": [AuthError("bad key", status=401)],
        "http://f": [BadRequest("too long", status=400)],
    }
    with pytest.raises(CallFailed) as info:
        await s.call()
    assert s.provider.called == ["http://p", "http://f"]
    assert isinstance(info.value.error, BadRequest) and info.value.error.message == "too long"
    assert info.value.attempts == 2 and info.value.candidate is s.fallback
    assert s.delays == [] and s.pass_delays == []


async def test_no_candidate_is_a_bad_request(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[])
    assert type(info.value.error) is BadRequest
    assert info.value.error.message == "no candidate to call"
    assert info.value.attempts == 0 and info.value.candidate is None


async def test_a_candidate_that_cannot_be_called_is_skipped_for_good(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.broken = {"http://p"}
    s.provider.script = {"http://f": [server_error(), answer()]}
    res = await s.call()
    assert s.provider.called == ["http://f", "http://f"]
    assert res.candidate is s.fallback and res.attempts == 2
    # the first call is no retry: the primary was never called (traced without `retry_of`)
    assert s.observer.started == [("m/fallback", 1, None), ("m/fallback", 1, "upstream broke")]
    s.provider.broken = {"http://p", "http://f"}
    with pytest.raises(CallFailed) as info:
        await s.call()
    assert type(info.value.error) is BadRequest
    assert "the registry endpoint of m/fallback cannot be called" in info.value.error.message
    assert info.value.attempts == 0 and info.value.candidate is s.fallback


async def test_the_rows_api_key_secret_reaches_the_provider(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, env={"OPENAI_KEY": "sk-test-1"})
    keyed = msgspec.structs.replace(
        s.primary.row, api_key_secret="openai-key", fallback_endpoint=None
    )
    s.provider.script = {"http://p": [answer(), answer()]}
    await s.call(cands=resolve({"m": keyed}, "m"))
    await s.call(cands=[s.primary])  # a row without a secret sends no key
    assert s.provider.keys == ["sk-test-1", None]


async def test_retry_after_penalizes_the_endpoint_and_extra_tokens_are_charged(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.script = {
        "http://p": [RateLimited("slow down", status=429, retry_after=30.0)],
        "http://f": [answer(500, 700)],
    }
    res = await s.call(tenant="acme")
    assert res.candidate is s.fallback
    assert s.limiter.penalized == [(endpoint_key(s.primary), 30.0)]
    estimate = estimate_tokens(REQUEST, 100)
    assert s.limiter.charged == [
        {
            "endpoint": endpoint_key(s.fallback),
            "model_id": "m",
            "tenant": "acme",
            "tokens": 1200 - estimate,
        }
    ]
    # no penalty without Retry-After, no charge within the estimate
    s.provider.script = {
        "http://p": [RateLimited("slow down", status=429)],
        "http://f": [answer(1, estimate - 1)],
    }
    await s.call(tenant="acme")
    assert len(s.limiter.penalized) == 1 and len(s.limiter.charged) == 1


async def test_an_exact_estimate_is_not_charged(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    estimate = estimate_tokens(REQUEST, 100)
    s.provider.script = {"http://p": [answer(1, estimate - 1), answer(1, estimate)]}
    await s.call()
    assert s.limiter.charged == []
    await s.call()
    assert [c["tokens"] for c in s.limiter.charged] == [1]


async def test_an_open_breaker_is_skipped_counted_and_traced(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3, breaker=BreakerConfig(consecutive_failures=1))
    s.provider.script = {"http://p": [server_error()], "http://f": [answer(), server_error()]}
    res = await s.call()
    # the primary's breaker opened on its first failure: no second attempt there
    assert s.provider.called == ["http://p", "http://f"] and res.attempts == 2
    assert s.delays == []
    assert s.calls("circuit_open", "m/primary") == 0
    s.pass_wait = 100.0  # past the deadline: the request ends after its first pass
    with pytest.raises(CallFailed) as info:
        await s.call()
    # the open primary goes last; reached after the fallback failed, it is not called
    assert s.provider.called == ["http://p", "http://f", "http://f"]
    assert info.value.attempts == 1 and info.value.candidate is s.fallback
    assert type(info.value.error) is ServerError
    assert s.calls("circuit_open", "m/primary") == 1
    assert s.calls("circuit_open", "m/fallback") == 0
    assert ("circuit_open", "m/primary", {}) in s.observer.events


async def test_the_deadline_ends_the_attempts_with_the_providers_last_error(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions, max_attempts=3)
    s.provider.took = 3.0
    s.provider.script = {"http://p": [server_error()] * 3}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.provider.called == ["http://p", "http://p"]  # at 106 the deadline (105) is past
    err = info.value.error
    assert type(err) is ServerError and err.status == 503
    assert err.message == ("upstream broke; request deadline passed after 2 attempts and 0.0s held")
    assert info.value.attempts == 2 and info.value.candidate is s.primary


async def test_a_deadline_passed_during_a_failed_pass_ends_the_request(
    monkeypatch: pytest.MonkeyPatch, sessions: SessionPool
) -> None:
    s = Setup(monkeypatch, sessions)
    s.provider.took = 6.0
    s.provider.script = {"http://p": [server_error()], "http://f": []}
    with pytest.raises(CallFailed) as info:
        await s.call(cands=[s.primary], deadline_s=5.0)
    assert s.provider.called == ["http://p"] and s.pass_delays == []
    assert info.value.error.message.endswith("deadline passed after 1 attempts and 0.0s held")
    assert info.value.candidate is s.primary
