"""Operations: metrics, the health HTTP server, event-loop lag."""

from .http import HealthServer
from .logs import configure_logging
from .looplag import LoopLag
from .metrics import Metrics

__all__ = ["HealthServer", "LoopLag", "Metrics", "configure_logging"]
