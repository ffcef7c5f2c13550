"""The call path: the retry loop over candidates and the fault policy (`caller`), routing, rate
limits, the circuit breaker (errors), latency demotion and held requests."""

from .breaker import BreakerBoard, BreakerConfig
from .caller import Caller, CallFailed, CallResult, CircuitOpen
from .holds import HOLD_REASONS, Holds
from .ratelimit import Limit, RateLimiter
from .routing import Router

__all__ = [
    "HOLD_REASONS",
    "BreakerBoard",
    "BreakerConfig",
    "CallFailed",
    "CallResult",
    "Caller",
    "CircuitOpen",
    "Holds",
    "Limit",
    "RateLimiter",
    "Router",
]
