"""The hot path's `observe` and `Tally` count as prometheus-client's own `Histogram.observe`
does."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from llm_worker.worker.ops.metrics import Tally, observe

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 1.0)
AMOUNTS = [0.0, 0.004, 0.005, 0.0050001, 0.01, 0.02, 0.05, 0.09, 0.1, 0.5, 1.0, 1.5, 1e9, -1.0]


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    out = {}
    for metric in h.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                out[(s.name, s.labels.get("le", ""))] = s.value
    return out


def _pair(labelled: bool) -> tuple[Histogram, Histogram]:
    reg = CollectorRegistry()
    names = ["kind"] if labelled else []
    ours = Histogram("ours", "ours", names, buckets=BUCKETS, registry=reg)
    theirs = Histogram("theirs", "theirs", names, buckets=BUCKETS, registry=reg)
    if labelled:
        return ours.labels("a"), theirs.labels("a")
    return ours, theirs


def test_every_bound_and_beyond_lands_in_the_same_bucket() -> None:
    for labelled in (False, True):
        ours, theirs = _pair(labelled)
        for amount in AMOUNTS:
            observe(ours, amount)
            theirs.observe(amount)
            got = {(n.replace("ours", ""), le): v for (n, le), v in _samples(ours).items()}
            want = {(n.replace("theirs", ""), le): v for (n, le), v in _samples(theirs).items()}
            assert got == want, amount


def test_nan_is_summed_and_counted_in_no_bucket_as_prometheus_does() -> None:
    ours, theirs = _pair(False)
    observe(ours, math.nan)
    theirs.observe(math.nan)
    got = _samples(ours)
    assert got[("ours_bucket", "+Inf")] == _samples(theirs)[("theirs_bucket", "+Inf")] == 0
    assert math.isnan(got[("ours_sum", "")])


def _same(ours: Histogram, theirs: Histogram) -> bool:
    """The same counts, and sums equal up to the order of the additions."""
    got = {(n.replace("ours", ""), le): v for (n, le), v in _samples(ours).items()}
    want = {(n.replace("theirs", ""), le): v for (n, le), v in _samples(theirs).items()}
    return got.keys() == want.keys() and all(got[k] == pytest.approx(want[k]) for k in got)


def test_a_tally_adds_a_batch_as_observe_would_and_only_at_flush() -> None:
    for labelled in (False, True):
        ours, theirs = _pair(labelled)
        tally = Tally(ours)
        for batch in (AMOUNTS, AMOUNTS[3:9], [0.02] * 5):
            for amount in batch:
                tally.add(amount)
                theirs.observe(amount)
            assert not _same(ours, theirs)  # nothing shows before the flush
            tally.flush()
            assert _same(ours, theirs)
            tally.flush()  # a second flush adds nothing
            assert _same(ours, theirs)


def test_a_tally_passes_nan_through_as_prometheus_counts_it() -> None:
    ours, theirs = _pair(False)
    tally = Tally(ours)
    tally.add(math.nan)
    theirs.observe(math.nan)
    tally.flush()
    got = _samples(ours)
    assert got[("ours_bucket", "+Inf")] == _samples(theirs)[("theirs_bucket", "+Inf")] == 0
    assert math.isnan(got[("ours_sum", "")])
