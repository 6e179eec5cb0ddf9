"""Settings of a load test and its results, as plain dataclasses with stable JSON keys.

The load process writes :class:`RunResult` JSON (after every step, so a crash leaves what was measured); the CLI
reads it back, adds gate verdicts and writes the reports. ``SCHEMA`` changes when a key changes meaning.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from accelserve.loadtest.histogram import WindowStats, merge, percentile
from accelserve.loadtest.server_stats import ServerBreakdown

SCHEMA = "accelserve.loadtest/1"
#: a load-generator process above this CPU (% of one core) may have limited the measured throughput
GENERATOR_LIMIT_PERCENT = 80.0
Mode = Literal["concurrency", "rate"]


@dataclass(frozen=True)
class SweepSettings:
    """How to sweep and how to measure each step."""

    mode: Mode = "concurrency"
    levels: tuple[float, ...] = (1,)  # concurrencies (users) or request rates (requests/s)
    rate_users: int = 16  # users (in-flight requests at most) in rate mode
    warmup_s: float = 2.0  # run at the new level, then drop what was measured
    window_s: int = 2  # one measurement window (whole seconds)
    stability_tolerance: float = 0.10
    stability_windows: int = 3
    max_step_s: float = 30.0  # give up waiting for stability after this long (the step is marked unstable)
    fixed_duration_s: int | None = None  # one window of this many seconds, no stability check
    workers: int = 0  # 0: the load process runs the users itself; N: N local Locust workers under a master
    #: add local worker processes (re-measuring the steps) while a generator process passes GENERATOR_LIMIT_PERCENT
    workers_auto: bool = False
    request_timeout_s: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = list(self.levels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSettings:
        data = dict(data)
        data["levels"] = tuple(data.get("levels", (1,)))
        return cls(**data)

    def step_budget_s(self) -> float:
        """Upper bound of one step's wall time (ramp-up aside)."""
        measure = self.fixed_duration_s if self.fixed_duration_s else self.max_step_s
        return self.warmup_s + measure + self.window_s + 5.0


@dataclass
class StepResult:
    """One level of the sweep, measured over ``duration_s`` after warm-up."""

    mode: Mode
    level: float
    users: int
    batch_size: int
    duration_s: float
    windows: int
    stable: bool | None  # None: fixed duration, no stability check
    complete: bool
    requests: int
    errors: int
    requests_per_s: float
    inferences_per_s: float
    latency_ms: dict[str, float]  # avg, p50, p90, p95, p99, max
    server: dict[str, Any] | None  # ServerBreakdown.to_dict(), or None when statistics were unavailable
    window_series: list[dict[str, float]] = field(default_factory=list)  # per window: start_s, rps, p95_ms
    #: CPU of the load generator over the step, in % of one core: the load process's own CPU time, or with workers
    #: the busiest worker (Locust samples it every second). Near 100 the client, not the server, limits the numbers
    load_generator_cpu_percent: float | None = None

    #: Locust worker processes that produced this step (0: the load process itself)
    workers: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def generator_limited(self) -> bool:
        """The load generator was near a full core: the server may have more to give than was measured."""
        return (self.load_generator_cpu_percent or 0.0) > GENERATOR_LIMIT_PERCENT

    @property
    def target_rate(self) -> float | None:
        return self.level if self.mode == "rate" else None

    @classmethod
    def of_windows(
        cls,
        *,
        mode: Mode,
        level: float,
        users: int,
        batch_size: int,
        windows: list[WindowStats],
        server: ServerBreakdown | None,
        stable: bool | None,
        complete: bool = True,
        cpu_percent: float | None = None,
    ) -> StepResult:
        if not windows:
            raise ValueError("a step needs at least one measurement window")
        requests = sum(w.requests for w in windows)
        failures = sum(w.failures for w in windows)
        duration = float(windows[-1].end_s - windows[0].start_s)
        hist = merge([w.histogram for w in windows])
        timed = sum(hist.values())
        weighted = sum(w.avg_ms * sum(w.histogram.values()) for w in windows)
        avg = weighted / timed if timed else 0.0
        rps = (requests - failures) / duration if duration > 0 else 0.0
        latency = {"avg": avg, **{f"p{round(p * 100)}": percentile(hist, timed, p) for p in (0.5, 0.9, 0.95, 0.99)}}
        latency["max"] = float(max(hist)) if hist else 0.0
        return cls(
            mode=mode,
            level=level,
            users=users,
            batch_size=batch_size,
            duration_s=duration,
            windows=len(windows),
            stable=stable,
            complete=complete,
            requests=requests,
            errors=failures,
            requests_per_s=rps,
            inferences_per_s=rps * batch_size,
            latency_ms=latency,
            server=server.to_dict(client_avg_ms=avg) if server is not None else None,
            window_series=[
                {"start_s": w.start_s, "requests_per_s": w.requests_per_s, "p95_ms": w.latency_ms(0.95)}
                for w in windows
            ],
            load_generator_cpu_percent=cpu_percent,
        )

    def metric(self, name: str) -> float:
        """A gate-able metric by name (see ``gates.METRICS``)."""
        if name in ("throughput", "inferences_per_s"):
            return self.inferences_per_s
        if name in ("rps", "requests_per_s"):
            return self.requests_per_s
        if name == "error_rate":
            return self.error_rate
        if name == "errors":
            return float(self.errors)
        if name.endswith("_ms") and name[:-3] in self.latency_ms:
            return self.latency_ms[name[:-3]]
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["error_rate"] = self.error_rate
        out["target_rate"] = self.target_rate
        out["generator_limited"] = self.generator_limited
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunResult:
    """A whole load test: what was targeted, how, and the steps measured so far."""

    target: dict[str, Any]  # url, protocol, model, model_version, batch_size, inputs
    settings: SweepSettings
    steps: list[StepResult] = field(default_factory=list)
    complete: bool = False
    abort_reason: str | None = None
    started_at: str = ""
    finished_at: str = ""
    load_generator: dict[str, Any] = field(default_factory=dict)  # workers, total_requests, worker_requests, ...
    gates: list[dict[str, Any]] = field(default_factory=list)  # filled in by the CLI

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "complete": self.complete,
            "abort_reason": self.abort_reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "target": self.target,
            "settings": self.settings.to_dict(),
            "load_generator": self.load_generator,
            "steps": [s.to_dict() for s in self.steps],
            "gates": self.gates,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an accelserve load-test result (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        return cls(
            target=data["target"],
            settings=SweepSettings.from_dict(data["settings"]),
            steps=[StepResult.from_dict(s) for s in data.get("steps", [])],
            complete=bool(data.get("complete")),
            abort_reason=data.get("abort_reason"),
            started_at=data.get("started_at", ""),
            finished_at=data.get("finished_at", ""),
            load_generator=data.get("load_generator", {}),
            gates=data.get("gates", []),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        """Write atomically (a reader never sees half a file)."""
        write_json_atomic(Path(path), self.to_dict())


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
