"""The hot path's `observe` counts as prometheus-client's own `Histogram.observe` does."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from llm_worker.worker.ops.metrics import observe

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
