"""Head sampling: the decision a message's trace gets before any span exists."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from llm_worker.worker.ops.sampling import (
    HeadSampler,
    Parent,
    parse_traceparent,
    unsampled_traceparent,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (f"00-{TID}-00f067aa0ba902b7-01", Parent(int(TID, 16), 0x00F067AA0BA902B7, True)),
        (f"00-{TID}-00f067aa0ba902b7-00", Parent(int(TID, 16), 0x00F067AA0BA902B7, False)),
        (f"01-{TID}-00f067aa0ba902b7-03-future", Parent(int(TID, 16), 0x00F067AA0BA902B7, True)),
        (f"00-{TID}-00f067aa0ba902b7-01-extra", None),  # version 00 has four fields
        (f"ff-{TID}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TID}-{'0' * 16}-01", None),
        (f"00-{TID.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{TID}-00f067aa0ba902b7", None),
        ("garbage", None),
    ],
)
def test_traceparent_is_parsed_like_w3c_says(raw: str, parsed: Parent | None) -> None:
    assert parse_traceparent(raw.encode()) == parsed


def test_parent_based_samplers_follow_the_parent() -> None:
    sampled, dropped = Parent(1, 1, True), Parent(1, 1, False)
    for name in ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"):
        s = HeadSampler(name, 0.1)
        assert s.sampled(sampled) and not s.sampled(dropped)
    assert HeadSampler("parentbased_always_on").sampled(None)
    assert not HeadSampler("parentbased_always_off").sampled(None)
    assert HeadSampler("always_on").sampled(dropped) and not HeadSampler("always_off").sampled(
        sampled
    )


def test_ratio_agrees_with_the_sdk_on_a_trace_id() -> None:
    ours, sdk = HeadSampler("traceidratio", 0.25), TraceIdRatioBased(0.25)
    rng = random.Random(7)
    for _ in range(2000):
        tid = rng.getrandbits(128)
        theirs = sdk.should_sample(None, tid, "x").decision == Decision.RECORD_AND_SAMPLE
        assert ours.sampled(Parent(tid, 1, False)) == theirs


def test_new_traces_are_kept_at_the_ratio() -> None:
    s = HeadSampler("parentbased_traceidratio", 0.1)
    kept = sum(s.sampled(None) for _ in range(20_000))
    assert 1_500 < kept < 2_500  # 2,000 expected; these bounds are 11 standard deviations out


def test_an_unsampled_message_keeps_its_trace_and_clears_the_flag() -> None:
    tp = unsampled_traceparent(Parent(int(TID, 16), 5, True)).decode()
    assert tp.startswith(f"00-{TID}-") and tp.endswith("-00")
    assert parse_traceparent(tp.encode()) is not None
    fresh = parse_traceparent(unsampled_traceparent(None))
    assert fresh is not None and not fresh.sampled
