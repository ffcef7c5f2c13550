"""The call path: the retry loop over candidates (`caller`), routing, rate limits and the
circuit breaker."""

from .breaker import BreakerBoard, BreakerConfig
from .caller import Caller, CallFailed, CallResult, CircuitOpen
from .ratelimit import Limit, RateLimiter
from .routing import Router

__all__ = [
    "BreakerBoard",
    "BreakerConfig",
    "CallFailed",
    "CallResult",
    "Caller",
    "CircuitOpen",
    "Limit",
    "RateLimiter",
    "Router",
]
