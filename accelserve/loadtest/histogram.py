"""Measurement windows over Locust's response-time histograms.

Locust keeps, per request entry, a histogram ``{response_time_ms: count}`` and per-second counters
``{unix_second: count}``; in distributed mode the master merges the workers' histograms and counters (it adds
them key by key). A measurement window is the difference of two snapshots of the aggregated entry, so the same
code computes windows for one process and for N workers, and percentiles of a window are percentiles of the
merged histogram of all workers.

Locust rounds response times below 100 ms to whole milliseconds, too coarse for a model answering in 1-2 ms.
:func:`bucket_ms` (installed into Locust by :mod:`accelserve.loadtest.users`) keeps three significant digits
instead (relative error <= 0.5 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (0.50, 0.90, 0.95, 0.99)


def bucket_ms(response_time: float) -> float:
    """Round a response time (ms) to three significant digits: 0.01234 -> 0.0123, 1.2345 -> 1.23, 12345 -> 12300."""
    if response_time <= 0:
        return 0.0
    digits = 2 - math.floor(math.log10(response_time))
    return round(response_time, digits) if digits > 0 else float(round(response_time, digits))


def percentile(histogram: Mapping[float, int], count: int, fraction: float) -> float:
    """The response time that ``fraction`` of ``count`` requests finished within (Locust's definition).

    Walks the histogram from the slowest bucket down, the same way as
    ``locust.stats.calculate_response_time_percentile``, so numbers match Locust's own reports.
    """
    if count <= 0 or not histogram:
        return 0.0
    wanted = int(count * fraction)
    processed = 0
    for value in sorted(histogram, reverse=True):
        processed += histogram[value]
        if count - processed <= wanted:
            return float(value)
    return 0.0


def merge(histograms: list[Mapping[float, int]]) -> dict[float, int]:
    """Add histograms bucket by bucket (what Locust's master does with its workers' reports)."""
    merged: dict[float, int] = {}
    for hist in histograms:
        for value, n in hist.items():
            merged[value] = merged.get(value, 0) + n
    return merged


def diff(newer: Mapping[float, int], older: Mapping[float, int]) -> dict[float, int]:
    """``newer - older`` bucket by bucket, dropping empty buckets. A negative count means a bug (reset stats)."""
    out: dict[float, int] = {}
    for value, n in newer.items():
        d = n - older.get(value, 0)
        if d < 0:
            raise ValueError(f"histogram bucket {value} went down from {older.get(value)} to {n}; stats were reset")
        if d:
            out[value] = d
    return out


@dataclass(frozen=True)
class ClientSnapshot:
    """A copy of the aggregated Locust stats entry at one moment."""

    num_requests: int = 0
    num_failures: int = 0
    num_none_requests: int = 0
    total_response_time: float = 0.0
    response_times: dict[float, int] = field(default_factory=dict)
    reqs_per_sec: dict[int, int] = field(default_factory=dict)
    fails_per_sec: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of_entry(cls, entry: Any) -> ClientSnapshot:
        """Snapshot a ``locust.stats.StatsEntry`` (duck-typed, so this module does not import Locust)."""
        return cls(
            num_requests=int(entry.num_requests),
            num_failures=int(entry.num_failures),
            num_none_requests=int(entry.num_none_requests),
            total_response_time=float(entry.total_response_time),
            response_times=dict(entry.response_times),
            reqs_per_sec=dict(entry.num_reqs_per_sec),
            fails_per_sec=dict(entry.num_fail_per_sec),
        )


@dataclass(frozen=True)
class WindowStats:
    """What the load generator saw between two whole-second boundaries ``start_s`` and ``end_s``."""

    start_s: int
    end_s: int
    requests: int  # completed requests (successes and failures) in [start_s, end_s)
    failures: int
    histogram: dict[float, int]
    avg_ms: float

    @property
    def duration_s(self) -> float:
        return float(self.end_s - self.start_s)

    @property
    def successes(self) -> int:
        return self.requests - self.failures

    @property
    def requests_per_s(self) -> float:
        return self.successes / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.histogram, sum(self.histogram.values()), fraction)

    @property
    def max_ms(self) -> float:
        return float(max(self.histogram)) if self.histogram else 0.0


def window(start_s: int, older: ClientSnapshot, end_s: int, newer: ClientSnapshot) -> WindowStats:
    """The window ``[start_s, end_s)`` from snapshots taken at (or, for workers, one report after) its ends.

    Request and failure counts come from the per-second counters, which are exact for whole seconds even when
    worker reports arrive late; the latency histogram is the difference of the two snapshots.
    """
    if end_s <= start_s:
        raise ValueError(f"window end {end_s} is not after its start {start_s}")
    seconds = range(start_s, end_s)
    requests = sum(newer.reqs_per_sec.get(s, 0) for s in seconds)
    # Locust files a failure under the second it is logged, which can be the second after its request's: at a window
    # edge that counted one failure too many (error rate 1.0002 when every request failed). A window cannot fail
    # more requests than it completed.
    failures = min(sum(newer.fails_per_sec.get(s, 0) for s in seconds), requests)
    timed = (newer.num_requests - newer.num_none_requests) - (older.num_requests - older.num_none_requests)
    total = newer.total_response_time - older.total_response_time
    return WindowStats(
        start_s=start_s,
        end_s=end_s,
        requests=requests,
        failures=failures,
        histogram=diff(newer.response_times, older.response_times),
        avg_ms=total / timed if timed > 0 else 0.0,
    )
