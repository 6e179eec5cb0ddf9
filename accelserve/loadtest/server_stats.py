"""Triton's server-side latency breakdown from its statistics endpoint, as deltas over a window.

Triton's ``/v2/models/<model>/stats`` (HTTP) or ``ModelStatistics`` (gRPC, ``as_json=True``) report cumulative
per-request counters: ``success``, ``fail``, ``queue``, ``compute_input``, ``compute_infer``,
``compute_output`` (count and nanoseconds), plus ``inference_count`` (samples, so batch size counts) and
``execution_count`` (model executions; fewer than requests when the dynamic batcher merges them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ServerCounters:
    """Cumulative counters of one model (all versions added), as read at one moment."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    def __sub__(self, older: ServerCounters) -> ServerCounters:
        return ServerCounters(**{k: v - getattr(older, k) for k, v in asdict(self).items()})


def _int(value: Any) -> int:
    return int(value or 0)  # gRPC's JSON writes int64 as strings


def parse_statistics(stats: Mapping[str, Any], model: str, version: str = "") -> ServerCounters:
    """Counters of ``model`` (and ``version`` if given) from a statistics response (HTTP or gRPC JSON)."""
    entries = [
        e for e in stats.get("model_stats", [])
        if e.get("name") == model and (not version or str(e.get("version")) == str(version))
    ]
    if not entries:
        names = sorted({str(e.get("name")) for e in stats.get("model_stats", [])})
        raise KeyError(f"no statistics for model '{model}' (statistics name: {', '.join(names) or 'none'})")
    totals = dict.fromkeys(asdict(ServerCounters()), 0)
    for entry in entries:
        inference = entry.get("inference_stats", {})
        for phase in _PHASES:
            data = inference.get(phase, {})
            if phase in ("success", "fail"):
                totals[f"{phase}_count"] += _int(data.get("count"))
            totals[f"{phase}_ns"] += _int(data.get("ns"))
        totals["inference_count"] += _int(entry.get("inference_count"))
        totals["execution_count"] += _int(entry.get("execution_count"))
    return ServerCounters(**totals)


@dataclass(frozen=True)
class ServerBreakdown:
    """Server-side view of a window: counts, and average milliseconds per successful request."""

    requests: int
    failures: int
    inferences: int
    executions: int
    request_ms: float  # queue + compute input + infer + output (+ Triton's own overhead)
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @classmethod
    def of_delta(cls, delta: ServerCounters) -> ServerBreakdown:
        n = delta.success_count

        def per_request(ns: int) -> float:
            return ns / n / 1e6 if n > 0 else 0.0

        return cls(
            requests=n,
            failures=delta.fail_count,
            inferences=delta.inference_count,
            executions=delta.execution_count,
            request_ms=per_request(delta.success_ns),
            queue_ms=per_request(delta.queue_ns),
            compute_input_ms=per_request(delta.compute_input_ns),
            compute_infer_ms=per_request(delta.compute_infer_ns),
            compute_output_ms=per_request(delta.compute_output_ns),
        )

    def to_dict(self, client_avg_ms: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        # the time a request spends outside Triton's measured request span: client, network, HTTP/gRPC framing
        out["client_overhead_ms"] = (client_avg_ms - self.request_ms) if client_avg_ms is not None and self.requests else None
        return out
