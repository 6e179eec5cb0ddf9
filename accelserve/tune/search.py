"""``tune(config)``: search the serving config of one model for the best throughput (or latency) within SLOs.

The flow, as Model Analyzer's: measure the model's own (default) config first, then the candidates of the chosen
mode (``brute``: the cross product; ``quick``: hill climbing from the grid point nearest the default), each loaded
through the model-control API (:class:`~accelserve.tune.measure.Target`) and swept over client concurrency. Each
config's best point is the one that meets every constraint with the best objective; configs are ranked passing
before failing, passing ones by the objective, failing ones by how far they miss their bounds. A config that
fails to load is recorded and skipped. Stops at ``budget_minutes`` (the report says so), and on SIGINT/SIGTERM the
caller still gets everything measured so far (``result.interrupted``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accelserve.errors import AccelserveError, InvalidInputError
from accelserve.loadtest.gates import Slo
from accelserve.loadtest.runner import RequestOptions
from accelserve.triton.config import config_to_text
from accelserve.tune.measure import Point, Target, measure_points, violation_size
from accelserve.tune.space import Candidate, HillClimb, SearchSpace, apply_candidate, brute_candidates, candidate_of


class TuneConfig(BaseModel):
    """What to tune and how (the library entry point's typed config; the CLI builds one from its flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str  # http://HOST:PORT (explicit model-control mode) or a model repository directory
    model: str
    protocol: Literal["http", "grpc"] | None = None
    mode: Literal["brute", "quick"] = "quick"
    objective: Literal["throughput", "latency"] = "throughput"
    slos: tuple[str, ...] = ()  # e.g. "p99_ms<=20"
    max_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    budget_minutes: float = Field(30.0, gt=0.0)
    # axes (None: derived from the model's config and this machine, see default_space)
    instances: tuple[int, ...] | None = None
    threads: tuple[int, ...] | None = None
    max_batch_sizes: tuple[int, ...] | None = None
    dynamic_batching: tuple[bool, ...] | None = None
    preferred_batch_sizes: tuple[tuple[int, ...], ...] | None = None
    max_queue_delays_us: tuple[int, ...] | None = None
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    # measurement
    warmup_s: float = Field(1.0, ge=0.0)
    duration_s: int = Field(3, ge=1)
    workers: int = Field(0, ge=0)
    workers_auto: bool = False  # more local Locust workers where a generator process passes 80% of a core
    batch: int | None = Field(None, ge=1)  # samples per request (default 1: the dynamic batcher forms batches)
    server_timeout_s: float = 180.0

    @field_validator("instances", "threads", "max_batch_sizes", "max_queue_delays_us", "concurrency")
    @classmethod
    def _non_empty_non_negative(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("needs at least one value")
            if any(v < 0 for v in value):
                raise ValueError(f"values must be >= 0, got {list(value)}")
        return value

    def parsed_slos(self) -> list[Slo]:
        return [Slo.parse(s) for s in self.slos]


@dataclass
class ConfigResult:
    name: str  # config_default, config_1, ...
    candidate: Candidate
    config_text: str
    points: list[Point] = field(default_factory=list)
    best: Point | None = None
    passes: bool = False
    error: str | None = None  # load or measurement failure
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "candidate": self.candidate.to_dict(), "label": self.candidate.label(),
                "passes": self.passes, "error": self.error, "seconds": round(self.seconds, 2),
                "best": self.best.to_dict() if self.best else None, "points": [p.to_dict() for p in self.points],
                "config_pbtxt": self.config_text}


@dataclass
class TuneResult:
    config: TuneConfig
    space: dict[str, list[Any]]
    configs: list[ConfigResult] = field(default_factory=list)
    winner: ConfigResult | None = None
    default: ConfigResult | None = None
    why: str = ""
    stopped: str | None = None  # "budget" or "interrupted" or None
    seconds: float = 0.0
    #: the KeyboardInterrupt (or cli's Terminated) that stopped the search; the CLI re-raises it after reporting
    interruption: BaseException | None = None

    @property
    def passed(self) -> bool:
        return self.winner is not None and self.winner.passes

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "accelserve.tune/1", "model": self.config.model, "target": self.config.target,
                "mode": self.config.mode, "objective": self.config.objective, "slos": list(self.config.slos),
                "max_error_rate": self.config.max_error_rate, "space": self.space, "passed": self.passed,
                "winner": self.winner.name if self.winner else None, "why": self.why, "stopped": self.stopped,
                "seconds": round(self.seconds, 1), "configs": [c.to_dict() for c in self.configs]}


def default_space(config: TuneConfig, base: Candidate, cpus: int) -> SearchSpace:
    """The axes: the user's values, else a small CPU-sized default around the model's own config."""
    batching = base.max_batch_size > 0
    instances = config.instances or tuple(sorted({1, max(1, cpus // 2), cpus}))
    threads: tuple[int | None, ...] = config.threads or tuple(sorted({1, cpus}))
    mbs = config.max_batch_sizes or (base.max_batch_size,)
    if not batching and any(m > 0 for m in mbs):
        raise InvalidInputError(
            f"model '{config.model}' does not batch (max_batch_size 0): --max-batch-sizes cannot raise it",
            hint="export the model with a dynamic batch dim and max_batch_size > 0 to tune batching",
        )
    if batching and any(m < 1 for m in mbs):
        raise InvalidInputError(
            f"--max-batch-sizes {','.join(map(str, mbs))}: 0 would turn batching off and change the model's inputs",
            hint="give sizes >= 1 for a model that batches",
        )
    db = config.dynamic_batching or ((False, True) if batching else (False,))
    preferred = config.preferred_batch_sizes or ((),)
    delays = config.max_queue_delays_us or (0,)
    return SearchSpace(instances=tuple(instances), threads=tuple(threads), max_batch_sizes=tuple(mbs),
                       dynamic_batching=tuple(db), preferred_batch_sizes=tuple(tuple(p) for p in preferred),
                       max_queue_delays_us=tuple(delays))


class _Ranker:
    def __init__(self, config: TuneConfig, slos: list[Slo]) -> None:
        self.objective, self.slos, self.max_error_rate = config.objective, slos, config.max_error_rate

    def value(self, p: Point) -> float:
        return p.throughput if self.objective == "throughput" else -p.p99_ms

    def best_point(self, points: list[Point]) -> Point | None:
        passing = [p for p in points if p.passes]
        if passing:
            return max(passing, key=self.value)
        if not points:
            return None
        return min(points, key=lambda p: violation_size(p, self.slos, self.max_error_rate))

    def score(self, r: ConfigResult) -> tuple[int, float]:
        if r.best is None:
            return (-1, 0.0)
        if r.passes:
            return (1, self.value(r.best))
        return (0, -violation_size(r.best, self.slos, self.max_error_rate))


def tune(config: TuneConfig, *, log: Callable[[str], None] = print, work_dir: str | Path | None = None) -> TuneResult:
    """Run the search; returns every config measured and the winner (``result.passed``: it meets the SLOs)."""
    import os
    import tempfile

    slos = config.parsed_slos()
    ranker = _Ranker(config, slos)
    started = time.monotonic()
    deadline = started + config.budget_minutes * 60.0
    request = RequestOptions(batch=config.batch)
    with Target(config.target, config.model, config.protocol, server_timeout_s=config.server_timeout_s) as target, \
            tempfile.TemporaryDirectory(prefix="accelserve-tune-load-") as tmp:
        assert target.base_config is not None
        base = target.base_config
        default = candidate_of(base)
        space = default_space(config, default, len(os.sched_getaffinity(0)))
        result = TuneResult(config=config, space={a: [list(v) if isinstance(v, tuple) else v for v in getattr(space, a)]
                                                  for a in SearchSpace.AXES})
        measured: dict[Candidate, ConfigResult] = {}
        root = Path(work_dir) if work_dir is not None else Path(tmp)

        def measure(candidate: Candidate) -> ConfigResult:
            if candidate in measured:
                return measured[candidate]
            if measured and time.monotonic() > deadline:  # the default config is always measured: the baseline
                raise _OutOfBudget
            name = "config_default" if not measured else f"config_{len(measured)}"
            model_config = apply_candidate(base, candidate) if name != "config_default" else base
            r = ConfigResult(name=name, candidate=candidate, config_text=config_to_text(model_config))
            measured[candidate] = r
            result.configs.append(r)
            log(f"[{len(measured)}] {name}: {candidate.label()}")
            t0 = time.monotonic()
            try:
                target.load(model_config)
                r.points = measure_points(
                    target.url, config.protocol, config.model, list(config.concurrency), request=request, slos=slos,
                    max_error_rate=config.max_error_rate, warmup_s=config.warmup_s, duration_s=config.duration_s,
                    workers=config.workers, workers_auto=config.workers_auto, work_dir=root / name, log=log,
                )
            except AccelserveError as exc:
                r.error = exc.message if hasattr(exc, "message") else str(exc)
                log(f"    failed: {r.error}")
            r.seconds = time.monotonic() - t0
            r.best = ranker.best_point(r.points)
            r.passes = r.best is not None and r.best.passes and r.error is None
            return r

        def better(a: Candidate, b: Candidate) -> bool:
            return ranker.score(measured[a]) > ranker.score(measured[b])

        try:
            result.default = measure(default)
            if config.mode == "brute":
                for candidate in brute_candidates(space):
                    measure(candidate)
            else:
                climb = HillClimb(space)
                home = climb.start(space.nearest_index(default))
                measure(home)
                moved = True
                while moved:
                    moved = False
                    for index, candidate in climb.neighbours():
                        measure(candidate)
                        if better(candidate, home) and climb.move(index):
                            home, moved = candidate, True
                            log(f"    -> moving to {candidate.label()}")
                            break
        except _OutOfBudget:
            result.stopped = "budget"
            log(f"budget of {config.budget_minutes:g} min reached after {len(measured)} config(s)")
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as accelserve.errors.Terminated
            result.stopped, result.interruption = "interrupted", exc
            log(f"interrupted after {len(measured)} config(s); reporting what was measured")
        result.seconds = time.monotonic() - started
        _decide(result, ranker)
    return result


class _OutOfBudget(Exception):
    pass


def _decide(result: TuneResult, ranker: _Ranker) -> None:
    ranked = sorted((r for r in result.configs if r.best is not None), key=ranker.score, reverse=True)
    if not ranked:
        result.why = "no config could be measured"
        return
    win = result.winner = ranked[0]
    b = win.best
    assert b is not None
    bounds = ", ".join(result.config.slos) or "no latency bound"
    bounds += f", error rate <= {result.config.max_error_rate:g}"
    if not win.passes:
        result.why = (f"no config meets {bounds}; {win.name} misses least "
                      f"({'; '.join(b.violations)} at concurrency {b.concurrency})")
        return
    passing = sum(1 for r in result.configs if r.passes)
    metric = (f"{b.throughput:.1f} inferences/s" if ranker.objective == "throughput" else f"p99 {b.p99_ms:.2f} ms")
    result.why = (f"best {ranker.objective} ({metric} at concurrency {b.concurrency}, p99 {b.p99_ms:.2f} ms) "
                  f"among {passing} of {len(result.configs)} configs meeting {bounds}")
    d = result.default
    if d is not None and d is not win and d.passes and d.best is not None:
        if ranker.objective == "throughput" and d.best.throughput > 0:
            result.why += f"; {b.throughput / d.best.throughput - 1:+.0%} throughput over the default config"
        elif ranker.objective == "latency" and d.best.p99_ms > 0:
            result.why += f"; p99 {b.p99_ms / d.best.p99_ms - 1:+.0%} vs the default config"
    elif d is win:
        result.why += "; the default config is already the best measured"
    if b.generator_limited:
        result.why += " (the load generator was CPU-bound at this point: the true capacity may be higher)"
