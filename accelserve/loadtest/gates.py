"""SLO gates and baseline regression checks on a load-test result.

``--slo p99_ms<=50`` is an upper bound: it must hold at *every* step. ``--slo throughput>=200`` is a lower
bound: it must hold at *some* step (the best one: a sweep starting at concurrency 1 is not expected to reach
the target throughput at its first step). ``@LEVEL`` pins a gate to one step: ``--slo p99_ms<=50@16``.

``--baseline old.json --max-regression 10%`` compares the steps present in both runs (same mode and level):
throughput may drop, and latency percentiles may rise, by at most the given fraction.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from accelserve.errors import InvalidInputError
from accelserve.loadtest.results import RunResult, StepResult

#: gate-able metrics -> description; "higher is better" for the ones in HIGHER_IS_BETTER
METRICS = {
    "throughput": "inferences/s (requests/s x batch size)",
    "rps": "successful requests/s",
    "p50_ms": "median latency (ms)",
    "p90_ms": "90th percentile latency (ms)",
    "p95_ms": "95th percentile latency (ms)",
    "p99_ms": "99th percentile latency (ms)",
    "max_ms": "slowest request (ms)",
    "avg_ms": "mean latency (ms)",
    "error_rate": "failed requests / requests (0..1)",
    "errors": "failed requests",
}
HIGHER_IS_BETTER = {"throughput", "rps"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}
_SLO = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(%?)\s*(?:@\s*([0-9.]+))?\s*$")


@dataclass(frozen=True)
class Slo:
    metric: str
    op: str
    value: float
    level: float | None = None  # only this step

    @classmethod
    def parse(cls, text: str) -> Slo:
        m = _SLO.match(text)
        if not m:
            raise InvalidInputError(
                f"--slo '{text}' is not METRIC<=VALUE or METRIC>=VALUE[@LEVEL]",
                hint="examples: --slo 'p99_ms<=50' --slo 'throughput>=200' --slo 'p95_ms<=20@16'",
            )
        metric, op, number, pct, level = m.groups()
        if metric not in METRICS:
            raise InvalidInputError(
                f"--slo '{text}': unknown metric '{metric}'",
                hint="metrics: " + ", ".join(f"{k} ({v})" for k, v in METRICS.items()),
            )
        try:
            value = float(number) / (100.0 if pct else 1.0)
            level_value = float(level) if level else None
        except ValueError:
            raise InvalidInputError(f"--slo '{text}': '{number}' is not a number") from None
        return cls(metric=metric, op=op, value=value, level=level_value)

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}" + (f"@{self.level:g}" if self.level is not None else "")

    @property
    def upper_bound(self) -> bool:
        return self.op in ("<", "<=")


@dataclass(frozen=True)
class GateResult:
    name: str  # e.g. "slo p99_ms<=50" or "regression throughput@4"
    passed: bool
    detail: str  # readable: what was measured where, against what

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_regression(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InvalidInputError(f"--max-regression '{text}' is not a percentage like 10% or a fraction like 0.1") from None
    if not 0 <= value <= 10:
        raise InvalidInputError(f"--max-regression '{text}' is out of range (0% to 1000%)")
    return value


def _steps_for(run: RunResult, level: float | None) -> list[StepResult]:
    steps = run.steps if level is None else [s for s in run.steps if s.level == level]
    return steps


def _fmt(metric: str, value: float) -> str:
    if metric == "error_rate":
        return f"{value:.4%}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def check_slo(run: RunResult, slo: Slo) -> GateResult:
    steps = _steps_for(run, slo.level)
    name = f"slo {slo.text}"
    if not steps:
        where = f"level {slo.level:g}" if slo.level is not None else "any level"
        return GateResult(name, False, f"no measured step at {where} (steps: {[s.level for s in run.steps]})")
    compare = _OPS[slo.op]
    values = [(s, s.metric(slo.metric)) for s in steps]
    if slo.upper_bound:  # must hold everywhere: report the worst step
        failing = [(s, v) for s, v in values if not compare(v, slo.value)]
        step, value = max(failing or values, key=lambda sv: sv[1])
        passed = not failing
        scope = "at every step"
    else:  # must hold at some step: report the best step
        step, value = max(values, key=lambda sv: sv[1])
        passed = compare(value, slo.value)
        scope = "at the best step"
    detail = (
        f"{slo.metric} = {_fmt(slo.metric, value)} at {step.mode} {step.level:g} "
        f"({'ok' if passed else 'violates'} {slo.op} {_fmt(slo.metric, slo.value)} {scope})"
    )
    return GateResult(name, passed, detail)


def check_regression(
    run: RunResult, baseline: RunResult, max_regression: float, metrics: Sequence[str] = ("throughput", "p99_ms")
) -> list[GateResult]:
    """One gate per (common step, metric). No common step at all is a user error (the runs cannot be compared)."""
    if baseline.settings.mode != run.settings.mode:
        raise InvalidInputError(
            f"the baseline is a {baseline.settings.mode} sweep and this run a {run.settings.mode} sweep; "
            "they cannot be compared",
            hint="compare runs made with the same --concurrency or --rate option",
        )
    old_batch, new_batch = baseline.target.get("batch_size"), run.target.get("batch_size")
    if old_batch != new_batch:
        raise InvalidInputError(
            f"the baseline used batch size {old_batch} and this run {new_batch}; their throughputs are not comparable"
        )
    for metric in metrics:
        if metric not in METRICS:
            raise InvalidInputError(f"unknown regression metric '{metric}'", hint="metrics: " + ", ".join(METRICS))
    old_by_level = {s.level: s for s in baseline.steps}
    common = [s for s in run.steps if s.level in old_by_level]
    if not common:
        raise InvalidInputError(
            f"the baseline has no step at the levels of this run (baseline: {sorted(old_by_level)}, "
            f"this run: {[s.level for s in run.steps]})",
            hint="run the same sweep as the baseline",
        )
    results = []
    for step in common:
        old = old_by_level[step.level]
        for metric in metrics:
            new_v, old_v = step.metric(metric), old.metric(metric)
            if metric in HIGHER_IS_BETTER:
                change = (old_v - new_v) / old_v if old_v > 0 else 0.0
                word = "drop"
            else:
                change = (new_v - old_v) / old_v if old_v > 0 else (0.0 if new_v <= 0 else float("inf"))
                word = "rise"
            # at the limit passes, also when float rounding puts it a hair above: (2.2 - 2.0) / 2.0 > 0.1
            passed = change <= max_regression or math.isclose(change, max_regression)
            detail = (
                f"{metric} {_fmt(metric, old_v)} -> {_fmt(metric, new_v)} at {step.mode} {step.level:g}: "
                f"{max(change, 0.0):.1%} {word} ({'within' if passed else 'over'} the {max_regression:.0%} allowed)"
            )
            results.append(GateResult(f"regression {metric}@{step.level:g}", passed, detail))
    return results


def evaluate(
    run: RunResult,
    slos: Sequence[Slo] = (),
    *,
    max_error_rate: float | None = None,
    baseline: RunResult | None = None,
    max_regression: float | None = None,
    regression_metrics: Sequence[str] = ("throughput", "p99_ms"),
    require_stable: bool = False,
) -> list[GateResult]:
    gates = [check_slo(run, slo) for slo in slos]
    if max_error_rate is not None:
        gate = check_slo(run, Slo("error_rate", "<=", max_error_rate))
        gates.append(GateResult(f"max-error-rate {max_error_rate:g}", gate.passed, gate.detail))
    if baseline is not None:
        gates += check_regression(run, baseline, 0.10 if max_regression is None else max_regression, regression_metrics)
    if require_stable:
        unstable = [s.level for s in run.steps if s.stable is False]
        gates.append(GateResult(
            "stable", not unstable,
            "every step reached a stable measurement" if not unstable
            else f"steps {unstable} did not stabilize within --max-step-time",
        ))
    return gates


def summary(gates: Sequence[GateResult]) -> str:
    """A readable block: one line per gate, failures first."""
    if not gates:
        return "no gates"
    lines = []
    for gate in sorted(gates, key=lambda g: g.passed):
        lines.append(f"  {'PASS' if gate.passed else 'FAIL'}  {gate.name}: {gate.detail}")
    failed = sum(not g.passed for g in gates)
    head = f"gates: {len(gates) - failed} passed, {failed} failed"
    return head + "\n" + "\n".join(lines)
