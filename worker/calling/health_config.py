"""`BreakerConfig`: the settings of an endpoint's health, errors (`breaker.py`) and latency
(`latency.py`) alike."""

from __future__ import annotations

import msgspec

from ..settings import Settings

__all__ = ["BreakerConfig"]


_SETTING_PREFIX = "breaker_"


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    window_s: float = 30.0
    slices: int = 30
    error_threshold: float = 0.5
    min_requests: int = 20
    consecutive_failures: int = 10  # this many failures in a row open it too (0: off)
    # latency demotion (latency.py)
    recent: int = 5
    z_threshold: float = 2.5
    min_latency_samples: int = 30
    std_floor_ratio: float = 0.05
    std_floor_s: float = 0.001
    latency_min_ratio: float = 3.0  # and the recent median at least this multiple of the baseline
    latency_min_increase_s: float = 0.5  # and at least this much slower: a saturated worker
    # adds tens to hundreds of milliseconds to every call without the provider being at fault,
    # and LLM answers vary by hundreds of milliseconds anyway
    load_ratio: float = 2.0  # calls started at more than this multiple of the usual load...
    load_slack: float = 8.0  # ...and this many more calls in flight are not judged
    min_baseline_s: float = 5.0  # a baseline younger than this is no baseline: a worker's
    # first seconds (connections opening, calls in flight ramping up) are its own doing
    cooldown_s: float = 10.0
    probes: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerConfig:
        """Each field that has an `LLM_WORKER_BREAKER_<FIELD>` setting takes that setting's
        value (`breaker_window_s` -> `window_s`); the others keep their defaults."""
        given = {
            field: getattr(settings, _SETTING_PREFIX + field)
            for field in cls.__struct_fields__
            if _SETTING_PREFIX + field in Settings.__struct_fields__
        }
        return cls(**given)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.slices < 1 or self.recent < 1 or self.probes < 1:
            raise ValueError("window_s > 0, slices >= 1, recent >= 1 and probes >= 1 needed")
        if not 0 < self.error_threshold <= 1:
            raise ValueError("error_threshold must be in (0, 1]")
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be >= 0")
        if self.load_ratio < 1 or self.load_slack < 0 or self.min_baseline_s < 0:
            raise ValueError("load_ratio >= 1, load_slack >= 0 and min_baseline_s >= 0 needed")
