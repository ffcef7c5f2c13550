"""The dedup window: identical requests cause one provider call.

`dedup_key` hashes the canonical JSON of everything that changes an answer: the resolved model
and the sampling parameters. Request ids, metadata and headers are not part of it; the tenant
is, only when the caller scopes dedup per tenant.

`DedupWindow.run` is a singleflight with a memory:

- the first caller of a key (the leader) runs `call`; concurrent callers with the same key (the
  followers) await the leader's outcome and get it with `shared=True`;
- a leader's exception reaches every follower as that same exception object (class kept);
  failures are not remembered;
- a cancelled leader hands over: the first follower to wake becomes the new leader and runs
  its own `call`, the others follow it;
- a follower may bound its wait (`follow_s`): past it, it gets `FollowTimedOut` and the
  leader runs on for the others;
- a successful result is stored before the in-flight entry is removed, so no second leader can
  start, and is served (`shared=True`) until `window_s` after it arrived;
- memory is bounded by entry count and by the sum of `size_of(result)`; the oldest entries go
  first (every entry lives `window_s`, so insertion order is expiry order).

`DedupWindow.get` is the synchronous half: a stored answer, or None (nothing stored, expired,
or still in flight). The pipeline answers most duplicates with it, without a task.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from llm_worker.adapters.base import ProviderRequest

__all__ = ["DedupStats", "DedupWindow", "FollowTimedOut", "LeaderCancelled", "dedup_key"]

T = TypeVar("T")

_KEY_VERSION = "v1"
_encoder = msgspec.json.Encoder(order="sorted")


def dedup_key(model_id: str, request: ProviderRequest, *, tenant: str | None = None) -> str:
    """A 128-bit hex digest (blake2b) of the canonical JSON of the model and the answer-changing
    parameters: messages/prompt, max_tokens, temperature, top_p, stop, seed.

    Pass the *resolved* model id (the registry row that serves the request). `tenant` is part
    of the key only when given, so passing it scopes dedup to one tenant.
    """
    doc: dict[str, Any] = {"v": _KEY_VERSION, "model": model_id, "request": request}
    if tenant is not None:
        doc["tenant"] = tenant
    return hashlib.blake2b(_encoder.encode(doc), digest_size=16).hexdigest()


class LeaderCancelled(Exception):
    """Internal hand-over signal: the leader of a key was cancelled before it had an answer.

    Followers never see it; one of them becomes the new leader.
    """


class FollowTimedOut(Exception):
    """A follower waited its `follow_s` for the leader's answer; the leader runs on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupStats:
    """The dedup window now (`entries`, `bytes`, `inflight`: distinct calls running) and its
    counts so far: answers from the window (`hits`) or from a call in flight (`coalesced`),
    calls led, leaders taken over after a cancel, failed calls, answers evicted by the caps,
    expired, and too big to keep."""

    entries: int
    bytes: int
    inflight: int
    hits: int
    coalesced: int
    leaders: int
    takeovers: int
    failures: int
    evictions: int
    expirations: int
    too_big: int


class DedupWindow(Generic[T]):
    """Singleflight plus a time window of finished answers, bounded in entries and bytes."""

    def __init__(
        self,
        window_s: float = 60.0,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # key -> (value, size, expires_at), oldest first
        self._cache: OrderedDict[str, tuple[T, int, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[T]] = {}
        self._bytes = 0
        self._hits = 0
        self._coalesced = 0
        self._leaders = 0
        self._takeovers = 0
        self._failures = 0
        self._evictions = 0
        self._expirations = 0
        self._too_big = 0

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str) -> T | None:
        """The stored answer for `key` if one is in the window (counted as a hit), else None.

        Synchronous: a caller that finds its answer here needs no task and no await. A key
        whose call is still in flight is not answered here; `run` follows it.
        """
        cached = self._cache.get(key)
        if cached is None:
            return None
        if cached[2] > self._clock():
            self._hits += 1
            return cached[0]
        self._drop(key)
        self._expirations += 1
        return None

    async def run(
        self,
        key: str,
        call: Callable[[], Awaitable[T]],
        size_of: Callable[[T], int],
        *,
        follow_s: float | None = None,
    ) -> tuple[T, bool]:
        """`(result, shared)`: `shared` is False only for the caller whose `call` ran.
        `follow_s`: the longest this caller waits as a follower (from now, in the event loop's
        time), then `FollowTimedOut`; None: as long as the leader takes. A leader's own
        `call` is not bounded by it."""
        follower = False
        until = None if follow_s is None else asyncio.get_running_loop().time() + follow_s
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                if cached[2] > self._clock():
                    self._hits += 1
                    return cached[0], True
                self._drop(key)
                self._expirations += 1
            fut = self._inflight.get(key)
            if fut is None:
                break
            if not follower:
                follower = True
                self._coalesced += 1
            bound = asyncio.timeout_at(until)  # None: never
            try:
                async with bound:
                    # shield: a cancelled follower must not cancel the leader's shared future
                    return await asyncio.shield(fut), True
            except LeaderCancelled:
                continue  # the leader is gone: look again, maybe lead
            except TimeoutError:
                if not bound.expired():
                    raise  # the leader's own error, shared
                raise FollowTimedOut(key) from None
        if follower:
            self._takeovers += 1
        return await self._lead(key, call, size_of), False

    async def _lead(
        self, key: str, call: Callable[[], Awaitable[T]], size_of: Callable[[T], int]
    ) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self._leaders += 1
        try:
            value = await call()
        except Exception as exc:
            self._failures += 1
            self._inflight.pop(key, None)
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" log when nobody followed
            raise
        except BaseException:  # cancelled (or interpreter exit): hand over to a follower
            self._inflight.pop(key, None)
            fut.set_exception(LeaderCancelled(key))
            fut.exception()
            raise
        self._store(key, value, size_of)  # publish first, then leave the in-flight table
        fut.set_result(value)
        self._inflight.pop(key, None)
        return value

    def _store(self, key: str, value: T, size_of: Callable[[T], int]) -> None:
        if self.window_s <= 0 or self.max_entries == 0:
            return
        size = size_of(value)
        if size > self.max_bytes:
            self._too_big += 1
            return
        now = self._clock()
        cache = self._cache
        if key in cache:
            self._drop(key)
        # expired entries sit at the front (same lifetime for all): prune them first
        while cache:
            oldest = next(iter(cache))
            if cache[oldest][2] > now:
                break
            self._drop(oldest)
            self._expirations += 1
        while cache and (len(cache) >= self.max_entries or self._bytes + size > self.max_bytes):
            _, (_, old_size, _) = cache.popitem(last=False)
            self._bytes -= old_size
            self._evictions += 1
        cache[key] = (value, size, now + self.window_s)
        self._bytes += size

    def _drop(self, key: str) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def clear(self) -> None:
        """Forget every finished answer (in-flight calls are not affected)."""
        self._cache.clear()
        self._bytes = 0

    def stats(self) -> DedupStats:
        return DedupStats(
            entries=len(self._cache),
            bytes=self._bytes,
            inflight=len(self._inflight),
            hits=self._hits,
            coalesced=self._coalesced,
            leaders=self._leaders,
            takeovers=self._takeovers,
            failures=self._failures,
            evictions=self._evictions,
            expirations=self._expirations,
            too_big=self._too_big,
        )
