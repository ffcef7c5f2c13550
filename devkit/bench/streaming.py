"""What the `streaming` scenario measures beyond a run's figures: the chunk records and the
worker-added time to the first chunk.

    prompt_times     prompt records -> their Kafka timestamps by prompt id
    chunk_figures    chunk records + the prompts' timestamps -> records per answer, bytes per
                     record, broken sequences, the worker-added time to the first chunk
    scraped          the worker's /metrics text -> its chunk counters and the first-chunk
                     histogram's p50/p99 (interpolated within buckets, as Prometheus does)
    hist_quantile    quantile of a cumulative histogram

Two measures of the time to the first chunk, both "worker-added": the histogram
`llm_worker_stream_first_chunk_seconds` (the worker's clock: the provider's first piece -> the
first chunk acknowledged), and from the records: the first chunk's Kafka timestamp less the
prompt's, less the time the fake provider is told to take to its first word (`latency_ms`,
then one `token_delay_ms`: its first event carries only the role). The second, like a
completion's `overhead_ms`, includes the worker's intake and the provider's HTTP round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from llm_worker.devkit.bench.harness import Record
from llm_worker.devkit.bench.stats import percentile

__all__ = ["chunk_figures", "hist_quantile", "prompt_times", "scraped"]


class _Head(msgspec.Struct):
    id: str
    seq: int = 0


_head = msgspec.json.Decoder(_Head)


def prompt_times(prompts: Sequence[Record]) -> dict[str, int]:
    """Prompt id -> its record's Kafka timestamp (ms)."""
    return {_head.decode(rec.value).id: rec.timestamp_ms for rec in prompts}


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (50, 99):
        v = percentile(values, q)
        out[f"p{q}"] = None if math.isnan(v) else round(v, 1)
    return out


def chunk_figures(
    chunks: Sequence[Record], prompt_ms: dict[str, int], first_word_ms: float
) -> dict[str, Any]:
    """The chunk records of a run against its prompts' Kafka timestamps (by prompt id):
    records, answers that had chunks, records per answer, bytes per record, sequences that do
    not count 0, 1, 2... without a gap, and the worker-added time to the first chunk (its
    timestamp less the prompt's, less `first_word_ms`, the provider's own time to it)."""
    seqs: dict[str, list[int]] = {}
    first: list[float] = []
    size = 0
    for rec in chunks:
        head = _head.decode(rec.value)
        seqs.setdefault(head.id, []).append(head.seq)
        size += len(rec.value)
        sent = prompt_ms.get(head.id)
        if head.seq == 0 and sent is not None:
            first.append(rec.timestamp_ms - sent - first_word_ms)
    broken = sum(1 for s in seqs.values() if sorted(s) != list(range(len(s))))
    n = len(chunks)
    return {
        "chunk_records": n,
        "answers_with_chunks": len(seqs),
        "chunks_per_answer": round(n / len(seqs), 2) if seqs else None,
        "bytes_per_chunk": round(size / n, 1) if n else None,
        "broken_sequences": broken,
        "first_chunk_overhead_ms": _ms(first),
    }


def hist_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Quantile `q` (0..1) of a cumulative histogram `(upper bound, count)` sorted by bound, the
    last one +Inf: linear within the bucket it falls in (from 0 for the first); the highest
    finite bound when it falls in +Inf; nan when the histogram is empty."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def scraped(text: str) -> dict[str, Any]:
    """The worker's chunk counters and first-chunk histogram (ms) from its /metrics text."""
    totals: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("llm_worker_chunks_total", "llm_worker_chunk_bytes_total"):
                totals[s.name] = s.value
            elif s.name == "llm_worker_stream_first_chunk_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    chunks = totals.get("llm_worker_chunks_total", 0.0)
    size = totals.get("llm_worker_chunk_bytes_total", 0.0)

    def ms(q: float) -> float | None:
        v = hist_quantile(buckets, q)
        return None if math.isnan(v) else round(v * 1000, 2)

    return {
        "chunks_total": int(chunks),
        "bytes_per_chunk": round(size / chunks, 1) if chunks else None,
        "first_chunk_ms": {"p50": ms(0.5), "p99": ms(0.99), "count": int(buckets[-1][1])}
        if buckets
        else None,
    }
