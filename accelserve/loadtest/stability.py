"""When is a measurement stable? The rule of Triton's perf_analyzer.

perf_analyzer measures in consecutive windows and accepts a measurement when, over the last 3 windows, both the
throughput and the latency are within +/- the stability percentage (10 % by default) of their average. We apply
the same rule to throughput and p95 latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StabilityRule:
    tolerance: float = 0.10  # +/- fraction of the mean
    windows: int = 3  # how many consecutive windows must agree

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ValueError(f"stability tolerance must be in (0, 1), got {self.tolerance}")
        if self.windows < 2:
            raise ValueError(f"stability needs at least 2 windows, got {self.windows}")


def within(values: Sequence[float], tolerance: float) -> bool:
    """All ``values`` within +/- ``tolerance`` of their mean (an all-zero series is stable)."""
    if not values:
        return False
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return all(abs(v - mean) <= tolerance * abs(mean) for v in values)


def is_stable(throughputs: Sequence[float], p95s: Sequence[float], rule: StabilityRule) -> bool:
    """True when the last ``rule.windows`` windows agree on throughput and on p95 latency."""
    if len(throughputs) < rule.windows or len(p95s) < rule.windows:
        return False
    k = rule.windows
    return within(throughputs[-k:], rule.tolerance) and within(p95s[-k:], rule.tolerance)
