"""Load-test results built from synthetic windows, for the tests that need no server."""

from __future__ import annotations

import numpy as np

from accelserve.loadtest.histogram import WindowStats, bucket_ms
from accelserve.loadtest.results import RunResult, StepResult, SweepSettings
from accelserve.loadtest.server_stats import ServerBreakdown


def make_windows(rps: float, median_ms: float, *, n_windows: int = 3, failures: int = 0, seed: int = 0) -> list[WindowStats]:
    rng = np.random.default_rng(seed)
    windows = []
    for i in range(n_windows):
        n = int(rps)
        samples = rng.lognormal(np.log(median_ms), 0.3, size=n)
        hist: dict[float, int] = {}
        for s in samples:
            hist[bucket_ms(s)] = hist.get(bucket_ms(s), 0) + 1
        windows.append(WindowStats(start_s=1000 + i, end_s=1001 + i, requests=n, failures=failures if i == 0 else 0,
                                   histogram=hist, avg_ms=float(samples.mean())))
    return windows


def make_step(level: float, rps: float, median_ms: float, *, batch: int = 1, failures: int = 0,
              mode: str = "concurrency", seed: int = 0) -> StepResult:
    server = ServerBreakdown(requests=int(rps) * 3, failures=0, inferences=int(rps) * 3 * batch, executions=int(rps),
                             request_ms=median_ms / 2, queue_ms=0.1, compute_input_ms=0.05, compute_infer_ms=median_ms / 3,
                             compute_output_ms=0.05)
    return StepResult.of_windows(mode=mode, level=level, users=int(level) if mode == "concurrency" else 16,
                                 batch_size=batch, windows=make_windows(rps, median_ms, failures=failures, seed=seed),
                                 server=server, stable=True, cpu_percent=40.0)


def make_run(points: list[tuple[float, float, float]], *, batch: int = 1, mode: str = "concurrency",
             failures: int = 0) -> RunResult:
    """points: (level, requests/s, median ms)."""
    settings = SweepSettings(mode=mode, levels=tuple(p[0] for p in points))  # type: ignore[arg-type]
    steps = [make_step(lv, rps, ms, batch=batch, failures=failures, mode=mode, seed=i) for i, (lv, rps, ms) in enumerate(points)]
    return RunResult(target={"url": "http://127.0.0.1:8000", "protocol": "http", "model": "m", "batch_size": batch},
                     settings=settings, steps=steps, complete=True, started_at="t0", finished_at="t1")
