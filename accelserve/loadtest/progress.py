"""The progress display of a running load test (written by the load process to stderr).

On a terminal one status line is rewritten in place; otherwise (CI logs) lines are printed at most every few
seconds, plus one line per finished step.
"""

from __future__ import annotations

import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from accelserve.loadtest.histogram import WindowStats
    from accelserve.loadtest.results import RunResult, StepResult

LOG_EVERY_S = 5.0


def step_line(step: StepResult) -> str:
    lat = step.latency_ms
    stable = {True: "stable", False: "NOT stable", None: "fixed window"}[step.stable]
    server = ""
    if step.server:
        srv = step.server
        server = (
            f" | server {srv['request_ms']:.2f} ms (queue {srv['queue_ms']:.2f}, infer {srv['compute_infer_ms']:.2f})"
        )
    cpu = step.load_generator_cpu_percent
    cpu_text = f" | load-gen CPU {cpu:.0f}%" if cpu is not None else ""
    return (
        f"{step.mode} {step.level:g}: {step.inferences_per_s:.1f} infer/s ({step.requests_per_s:.1f} req/s), "
        f"p50 {lat['p50']:.2f} p95 {lat['p95']:.2f} p99 {lat['p99']:.2f} ms, errors {step.errors} "
        f"over {step.duration_s:.0f} s [{stable}]{server}{cpu_text}"
    )


class Progress:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_log = 0.0
        self._step_prefix = ""

    def _write(self, text: str, *, transient: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("" if transient else "\n"))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def step_started(self, index: int, total: int, label: str) -> None:
        self._step_prefix = f"[{index + 1}/{total}] {label}"
        self._last_log = time.monotonic()
        self._write(f"{self._step_prefix}: warming up", transient=True)

    def window(self, label: str, w: WindowStats, elapsed: float, limit: float, *, stable: bool | None = None) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last_log < LOG_EVERY_S:
            return
        self._last_log = now
        state = "" if stable is None else (" stable" if stable else " stabilizing")
        self._write(
            f"{self._step_prefix}: {elapsed:.0f}/{limit:.0f} s, {w.requests_per_s:.1f} req/s, "
            f"p95 {w.latency_ms(0.95):.2f} ms, errors {w.failures}{state}",
            transient=True,
        )

    def step_done(self, step: StepResult) -> None:
        self._write(f"{self._step_prefix}: done. " + step_line(step))

    def finished(self, result: RunResult) -> None:
        if result.complete:
            self._write(f"load test finished: {len(result.steps)} step(s)")
        else:
            self._write(f"load test STOPPED: {result.abort_reason}")
