"""Order a request's candidates (primary, then fallbacks) by the configured objective.

Objectives:

- `priority`: the registry order.
- `latency`: the expected time to a good answer, EWMA latency / (1 - EWMA error rate), so an
  endpoint that fails fast does not look fast, times one more round per `queued(c)` (the
  calls waiting for a slot of its concurrency limit, in rounds of that limit), so a fast
  endpoint with a queue yields to a slower one with room once the wait outweighs the gain.
  Endpoints never measured go first, in registry order, so they warm up; one that has every
  slot taken before its first answer goes last.
- `cost`: `input_cost_per_1k + output_cost_per_1k` of the candidate's registry row.
- `reliability`: the EWMA error rate (an endpoint never measured counts as 0).

Whatever the objective, endpoints whose breaker is open go last (kept: the caller decides), and
ties keep the registry order. A half-open endpoint keeps its place; the caller still asks
`BreakerBoard.allow(name)` before each attempt and moves on when it says no.

An endpoint demoted for latency (`latency.py`) goes behind the healthy candidates that are
faster than it: not demoted, not open, and with a lower EWMA latency (or none measured yet).
When no candidate is faster, moving traffic would gain nothing, and the demoted endpoint keeps
its place; with no other candidate at all, it is called as usual. Latency never drops a
candidate.

With `explore > 0`, that fraction of `order()` calls moves a random other healthy candidate to
the front, so the stats of the others stay fresh; pass a seeded `random.Random` to make it
deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import get_args

from llm_worker.registry.resolve import Candidate

from ..config import endpoint_url_key
from ..settings import Objective
from .breaker import BreakerBoard

__all__ = ["EndpointStats", "Objective", "Router"]

OBJECTIVES: frozenset[str] = frozenset(get_args(Objective))

_MAX_ERROR = 0.99  # caps latency / (1 - error) at 100x


class _Ewma:
    __slots__ = ("error", "latency", "samples")

    def __init__(self) -> None:
        self.latency: float | None = None  # seconds, successes only
        self.error = 0.0
        self.samples = 0


class EndpointStats:
    """EWMA latency (successes) and EWMA error rate per endpoint_name."""

    def __init__(self, alpha: float = 0.2, *, error_alpha: float | None = None) -> None:
        if not 0 < alpha <= 1 or (error_alpha is not None and not 0 < error_alpha <= 1):
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.error_alpha = alpha if error_alpha is None else error_alpha
        self._by_name: dict[str, _Ewma] = {}

    def record(self, endpoint_name: str, success: bool, latency_s: float) -> None:
        e = self._by_name.get(endpoint_name)
        if e is None:
            e = self._by_name[endpoint_name] = _Ewma()
        e.samples += 1
        a = self.error_alpha
        e.error += a * ((0.0 if success else 1.0) - e.error)
        if success:
            if e.latency is None:
                e.latency = latency_s
            else:
                e.latency += self.alpha * (latency_s - e.latency)

    def latency(self, endpoint_name: str) -> float | None:
        e = self._by_name.get(endpoint_name)
        return None if e is None else e.latency

    def error_rate(self, endpoint_name: str) -> float | None:
        e = self._by_name.get(endpoint_name)
        return None if e is None else e.error

    def expected_latency(self, endpoint_name: str) -> float | None:
        """Latency per good answer: EWMA latency / (1 - EWMA error); None if unmeasured."""
        e = self._by_name.get(endpoint_name)
        if e is None or e.latency is None:
            return None
        err = e.error if e.error < _MAX_ERROR else _MAX_ERROR
        return e.latency / (1.0 - err)

    def forget(self, keep: set[str]) -> None:
        """Drop the statistics of endpoints not in `keep`."""
        for name in [n for n in self._by_name if n not in keep]:
            del self._by_name[name]

    def snapshot(self) -> dict[str, dict[str, float | None]]:
        return {
            name: {"latency_s": e.latency, "error_rate": e.error, "samples": float(e.samples)}
            for name, e in self._by_name.items()
        }


class Router:
    def __init__(
        self,
        objective: Objective = "priority",
        stats: EndpointStats | None = None,
        breakers: BreakerBoard | None = None,
        *,
        explore: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        _check(objective)
        if not 0 <= explore < 1:
            raise ValueError("explore must be in [0, 1)")
        self.objective: Objective = objective
        self.stats = stats if stats is not None else EndpointStats()
        self.breakers = breakers
        self.explore = explore
        self._rng = rng if rng is not None else random.Random()
        self.choices: dict[str, int] = {}
        """How often each endpoint_name came first, for metrics."""

    def order(
        self,
        candidates: Sequence[Candidate],
        objective: str | None = None,
        limited: Callable[[Candidate], bool] | None = None,
        queued: Callable[[Candidate], float] | None = None,
    ) -> list[Candidate]:
        """The candidates, best first. Never drops one.

        Open breakers go last; a demoted endpoint goes behind faster healthy candidates (see
        the module docstring). `limited(c)`: c's rate limits have no room right now; when
        the best candidate is limited, those with room go ahead of it (a request waits for
        a limited endpoint only when every candidate is limited). `queued(c)`: the latency
        objective's queue at c (see the module docstring)."""
        obj = self.objective if objective is None else objective
        if obj not in OBJECTIVES:
            _check(obj)
        n = len(candidates)
        if n <= 1:
            out = list(candidates)
        else:
            # per candidate: (breaker open, yields to a faster healthy one); asked once each,
            # since asking a demoted endpoint after its cooldown hands out a probe slot
            flags = self._flags(candidates)
            if obj == "priority":
                out = list(candidates)
                if any(f != (False, False) for f in flags.values()):
                    out.sort(key=lambda c: flags[id(c)])  # stable
            else:
                out = self._scored(candidates, obj, flags, queued)
            if self.explore and self._rng.random() < self.explore:
                self._explore(out, flags)
            if limited is not None and limited(out[0]):
                # stable: open breakers stay last, and the order so far holds within
                out.sort(key=lambda c: (flags[id(c)][0], limited(c)))
        if out:
            first = out[0].endpoint_name
            self.choices[first] = self.choices.get(first, 0) + 1
        return out

    def _scored(
        self,
        candidates: Sequence[Candidate],
        obj: str,
        flags: dict[int, tuple[bool, bool]],
        queued: Callable[[Candidate], float] | None,
    ) -> list[Candidate]:
        """The candidates by (`flags`, the objective's score: lower first, then as given)."""
        keyed: list[tuple[tuple[bool, bool], float, int, Candidate]] = []
        by = self.stats._by_name
        for i, c in enumerate(candidates):
            if obj == "cost":
                score = c.row.input_cost_per_1k + c.row.output_cost_per_1k
            elif obj == "latency":
                score = _latency_score(by.get(health_key(c)), queued(c) if queued else 0.0)
            else:
                e = by.get(health_key(c))
                score = 0.0 if e is None else e.error
            keyed.append((flags[id(c)], score, i, c))
        keyed.sort()  # i is unique: candidates are never compared
        return [k[3] for k in keyed]

    def _explore(self, out: list[Candidate], flags: dict[int, tuple[bool, bool]]) -> None:
        """Move a random other healthy candidate to the front (keeps the others' stats fresh)."""
        healthy = sum(1 for c in out if flags[id(c)] == (False, False))
        if healthy > 1:
            j = 1 + self._rng.randrange(healthy - 1)
            out.insert(0, out.pop(j))

    def _flags(self, candidates: Sequence[Candidate]) -> dict[int, tuple[bool, bool]]:
        board = self.breakers
        keys = [health_key(c) for c in candidates]
        if board is None:
            return {id(c): (False, False) for c in candidates}
        opened = [board.is_open(k) for k in keys]
        slow = [not o and board.demoted(k) for k, o in zip(keys, opened, strict=True)]
        flags: dict[int, tuple[bool, bool]] = {}
        for c, k, o, s in zip(candidates, keys, opened, slow, strict=True):
            yields = False
            if s:
                mine = self.stats.latency(k)
                for other, ko, oo, so in zip(candidates, keys, opened, slow, strict=True):
                    if other is c or oo or so:
                        continue
                    theirs = self.stats.latency(ko)
                    if theirs is None or mine is None or theirs < mine:
                        yields = True
                        break
            flags[id(c)] = (o, yields)
        return flags

    def record(
        self, endpoint_name: str, success: bool, latency_s: float, *, throttled: bool = False
    ) -> None:
        """One attempt's outcome: feeds the EWMA stats and, if given, the breaker board.
        `endpoint_name` is the candidate's `health_key`.
        Call it once per attempt; count only endpoint-health failures (5xx, timeouts,
        connection errors, and `throttled` ones: 429, 529), not a bad prompt's 400."""
        self.stats.record(endpoint_name, success, latency_s)
        if self.breakers is not None:
            self.breakers.record(endpoint_name, success, latency_s, throttled=throttled)


def _latency_score(e: _Ewma | None, q: float) -> float:
    """The latency objective's score: the expected latency, longer for the error rate and for
    `q`, the queue at the endpoint in rounds of its limit. Unmeasured first, so they warm up
    (unless already full)."""
    if e is None or e.latency is None:
        return -1.0 if q == 0 else math.inf
    err = e.error if e.error < _MAX_ERROR else _MAX_ERROR
    return e.latency / (1.0 - err) * (1.0 + q)


def endpoint_key(c: Candidate) -> str:
    """The provider endpoint called, as operators write it (`endpoint_url_key`). Endpoint rate
    limits (`LLM_WORKER_ENDPOINT_LIMITS`) are kept per this key, so every row that points at
    one endpoint shares its limit."""
    return endpoint_url_key(c.endpoint)


def health_key(c: Candidate) -> str:
    """What health (EWMA stats, circuit breaker) is kept per: the provider endpoint and model
    actually called, not the row's label, so a row moved to another endpoint starts fresh."""
    return f"{c.provider}:{endpoint_key(c)}#{c.upstream_model}"


def _check(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown routing objective {objective!r}; one of {sorted(OBJECTIVES)}")
