"""Latency and throughput with in-process ONNX Runtime: warm-up excluded, fixed thread count, repeated until the
median settles.

Models that are compared are timed together (:func:`measure_latencies`), interleaved round by round: the first
model timed in a process otherwise runs measurably slower (thread-pool start, frequency and cache effects) and
drift in machine load would favour whichever model ran in the quieter moment.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError
from accelserve.evaluate._ort import default_threads, make_session, run_session


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    threads: int
    runs: int  #: timed runs (warm-up excluded)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  #: samples per second at the median latency
    stable: bool  #: the median moved less than the tolerance between the last two rounds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_batch(feeds: list[dict[str, np.ndarray]], batch_size: int, fixed_batch: dict[str, int] | None = None
               ) -> dict[str, np.ndarray]:
    """One feed of ``batch_size`` samples taken (cyclically) from the samples in ``feeds`` along axis 0."""
    if not feeds:
        raise InvalidInputError("no data to time the model with")
    for name, size in (fixed_batch or {}).items():
        if size != batch_size:
            raise InvalidInputError(
                f"input '{name}' has a fixed batch size of {size} in the model; cannot time batch size {batch_size}"
            )
    out = {}
    for name in feeds[0]:
        samples = np.concatenate([f[name] for f in feeds], axis=0)
        reps = -(-batch_size // samples.shape[0])
        out[name] = np.ascontiguousarray(np.concatenate([samples] * reps, axis=0)[:batch_size])
    return out


def _fixed_batch(session: Any) -> dict[str, int]:
    return {i.name: i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}


def measure_latency(
    model_path: str | Path,
    feeds: list[dict[str, np.ndarray]],
    batch_size: int = 1,
    threads: int | None = None,
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_seconds: float = 10.0,
    rel_tolerance: float = 0.02,
) -> LatencyStats:
    """Time ``model_path`` on a batch built from ``feeds``.

    Runs ``warmup`` untimed runs, then rounds of ``min_runs`` timed runs until the median of all runs moves by less
    than ``rel_tolerance`` between rounds (``stable``), or ``max_seconds`` of timing have passed.
    """
    return measure_latencies([model_path], feeds, batch_size, threads, warmup=warmup, min_runs=min_runs,
                             max_seconds=max_seconds, rel_tolerance=rel_tolerance)[0]


def measure_latencies(
    model_paths: list[str | Path],
    feeds: list[dict[str, np.ndarray]],
    batch_size: int = 1,
    threads: int | None = None,
    *,
    warmup: int = 5,
    min_runs: int = 20,
    max_seconds: float = 10.0,
    rel_tolerance: float = 0.02,
    runtime: str | None = None,
) -> list[LatencyStats]:
    """Time several models on the same batch, interleaved: every round runs each model ``min_runs`` times in turn,
    until every model's median moves by less than ``rel_tolerance`` between rounds, or ``max_seconds`` per model
    have passed. Returns one LatencyStats per model, in order."""
    threads = threads or default_threads()
    sessions = [make_session(p, threads, runtime) for p in model_paths]
    batches = [make_batch(feeds, batch_size, _fixed_batch(s)) for s in sessions]
    for session, feed, path in zip(sessions, batches, model_paths):
        for _ in range(warmup):
            run_session(session, feed, path)
    times: list[list[float]] = [[] for _ in model_paths]
    previous: list[float | None] = [None] * len(model_paths)
    stable = [False] * len(model_paths)
    started = time.perf_counter()
    while not all(stable) and time.perf_counter() - started <= max_seconds * len(model_paths):
        for i, (session, feed, path) in enumerate(zip(sessions, batches, model_paths)):
            for _ in range(min_runs):
                t0 = time.perf_counter()
                run_session(session, feed, path)
                times[i].append(time.perf_counter() - t0)
            median = float(np.median(times[i]))
            stable[i] = previous[i] is not None and abs(median - previous[i]) <= rel_tolerance * previous[i]
            previous[i] = median
    return [_stats(t, batch_size, threads, s) for t, s in zip(times, stable)]


def _stats(times: list[float], batch_size: int, threads: int, stable: bool) -> LatencyStats:
    ms = np.asarray(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return LatencyStats(
        batch_size=batch_size,
        threads=threads,
        runs=len(times),
        p50_ms=p50,
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        throughput=batch_size / (p50 / 1e3) if p50 > 0 else float("inf"),
        stable=stable,
    )
