"""Head sampling, decided before any span object exists.

The SDK decides whether to record a span only once the span is being created, which costs
its ids, its sampler call and a non-recording span object even for the 90% of messages a
10% sampler drops. The worker decides first, from the input's `traceparent`, with the
samplers of the specification (`OTEL_TRACES_SAMPLER`):

- `parentbased_*` follow the parent's sampled flag when there is a parent, else the root rule;
- `traceidratio` keeps a trace whose lower 64 trace-id bits are below `ratio * 2**64` (the
  SDK's rule, so services agree on a trace), and a new trace (no parent) with probability
  `ratio`; `always_on` / `always_off` are what they say.

Only a message decided "sampled" gets spans (`ops.leanspans`; its provider records every span
the worker starts). One that is not carries a trace context on without them: its parent's
`traceparent` unchanged when the parent is not sampled either, else the same trace with a fresh
span id and the sampled flag cleared; a new random one when it had no parent.
"""

from __future__ import annotations

import random
from typing import NamedTuple

__all__ = ["HeadSampler", "Parent", "parse_traceparent", "unsampled_traceparent"]

_LOW64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")


class Parent(NamedTuple):
    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(raw: bytes | None) -> Parent | None:
    """A W3C `traceparent` (`version-traceid-spanid-flags`); None when it is not valid."""
    if not raw or len(raw) < 55:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4 or [len(p) for p in parts[:4]] != [2, 32, 16, 2]:
        return None
    version = parts[0]
    if not _HEX.issuperset(text[:55].replace("-", "")) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(parts[3], 16) & 1))


def unsampled_traceparent(parent: Parent | None) -> bytes:
    """The context a message that is not sampled carries on: same trace (or a new one), a
    span id of its own, sampled flag cleared."""
    trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return b"00-%032x-%016x-00" % (trace_id, span_id)  # (bytes formatting: no str, no encode)


class HeadSampler:
    def __init__(self, name: str = "parentbased_always_on", ratio: float = 1.0) -> None:
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        self.ratio = 1.0 if root == "always_on" else 0.0 if root == "always_off" else ratio
        """The share of new traces (and, without `parentbased_`, of any trace) kept."""
        self._bound = round(self.ratio * (_LOW64 + 1))

    def sampled(self, parent: Parent | None) -> bool:
        if parent is None:
            return self.ratio >= 1.0 or (self.ratio > 0.0 and random.random() < self.ratio)
        if self.parent_based:
            return parent.sampled
        return (parent.trace_id & _LOW64) < self._bound
