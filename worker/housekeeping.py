"""Keeping state bounded under churn: what the worker keeps per endpoint, model and tenant is
dropped once the registry no longer names it (or, for tenants and connections, once it has
been idle), and so are its metric series.

Every `SWEEP_S` the registry's current rows are resolved into the endpoints, health keys and
models they name. Breakers (closed ones: an open breaker keeps protecting its endpoint), routing
statistics, concurrency limits, rate-limit buckets (idle: a full bucket is what a new one
would be) and metric series of anything else are dropped; tenants' buckets are dropped when
idle; HTTP sessions when their origin has not been called for `IDLE_S`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from llm_worker.adapters.sessions import SessionPool
from llm_worker.registry.errors import RegistryError
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate

from .calling.caller import Caller
from .calling.routing import endpoint_key, health_key
from .ops.metrics import Metrics, forget_series

__all__ = ["IDLE_S", "SWEEP_S", "Housekeeping"]

log = logging.getLogger("llm_worker")

SWEEP_S = 60.0
IDLE_S = 600.0


class Housekeeping:
    def __init__(
        self,
        *,
        rows: Callable[[], Mapping[str, ModelRow]],
        resolve: Callable[[str], list[Candidate]],
        caller: Caller,
        sessions: SessionPool,
        metrics: Metrics,
        forget_outcome_children: Callable[[], None],
    ) -> None:
        self._rows = rows
        self._resolve = resolve
        self._caller = caller
        self._sessions = sessions
        self._metrics = metrics
        self._forget_outcome_children = forget_outcome_children
        self.sweeps = 0

    def live(self) -> tuple[set[str], set[str], set[str], set[str]]:
        """What the registry names now: health keys, endpoint keys, models (row ids), and
        endpoint names (`model/primary`...)."""
        health: set[str] = set()
        endpoints: set[str] = set()
        names: set[str] = set()
        models = set(self._rows())
        for model_id in models:
            try:
                candidates = self._resolve(model_id)
            except RegistryError:
                continue
            for c in candidates:
                health.add(health_key(c))
                endpoints.add(endpoint_key(c))
                names.add(c.endpoint_name)
        return health, endpoints, models, names

    async def sweep(self) -> int:
        """Drop what the registry no longer names; returns how many metric series went."""
        health, endpoints, models, names = self.live()
        caller = self._caller
        caller.breakers.forget(health)
        caller.router.stats.forget(health)
        for name in [n for n in caller.router.choices if n not in names]:
            del caller.router.choices[name]
        caller.concurrency.forget(health)
        caller.limiter.forget(endpoints, models)
        await self._sessions.forget_idle(IDLE_S)
        # `endpoint` labels hold endpoint names, health keys or endpoint URLs, by metric
        removed = forget_series(self._metrics, "endpoint", names | health | endpoints)
        removed += forget_series(self._metrics, "model", models | {"unknown"})
        if removed:
            caller.forget_metric_children()
            self._forget_outcome_children()
            log.info("housekeeping: %d metric series of removed rows dropped", removed)
        self.sweeps += 1
        return removed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except Exception:  # never let a bad moment end the sweeper
                log.exception("housekeeping failed")
