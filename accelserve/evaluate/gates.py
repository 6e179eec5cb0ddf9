"""Accuracy gates on an evaluation report: the checks behind ``--max-accuracy-drop``, ``--min-cosine`` and
``--min-agreement`` of ``optimize`` and ``evaluate`` (exit 2 when one fails), for any caller (CLI, pipeline).

    gates = AccuracyGates(max_accuracy_drop=1.0, min_cosine=0.99)
    gates.check_inputs(has_labels=labels is not None)        # before any work: a gate that cannot be judged
    results = check_accuracy_gates(report, gates)             # one AccuracyGateResult per gate and candidate
    if any(not r.passed for r in results): ...                # exit 2

A cosine or agreement gate *fails* when the base is degenerate (its outputs barely depend on the input, see
:class:`accelserve.evaluate.accuracy.AccuracyStats`): then any candidate agrees, and a gate must never pass on no
evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from accelserve.errors import InvalidInputError

if TYPE_CHECKING:
    from accelserve.evaluate.harness import EvaluationReport, ModelEvaluation


@dataclass(frozen=True)
class AccuracyGates:
    """Thresholds; None = gate off."""

    max_accuracy_drop: float | None = None  #: label metric of base minus candidate, in points (needs labels)
    min_cosine: float | None = None  #: worst-output cosine of candidate vs base outputs
    min_agreement: float | None = None  #: top-1 agreement with the base, in percent (classifiers)

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InvalidInputError(f"--max-accuracy-drop must be >= 0 points, got {self.max_accuracy_drop:g}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise InvalidInputError(f"--min-cosine must be in [-1, 1], got {self.min_cosine:g}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise InvalidInputError(f"--min-agreement must be a percentage in [0, 100], got {self.min_agreement:g}")

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.max_accuracy_drop, self.min_cosine, self.min_agreement))

    def check_inputs(self, *, has_labels: bool) -> None:
        """Raise InvalidInputError for a gate that cannot be judged with these inputs (call before any work)."""
        if self.max_accuracy_drop is not None and not has_labels:
            raise InvalidInputError("--max-accuracy-drop needs labels to measure accuracy",
                                    hint="pass --labels LABELS.npy aligned with the evaluation data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyGateResult:
    gate: str  #: "max-accuracy-drop" | "min-cosine" | "min-agreement"
    candidate: str
    passed: bool
    value: float | None  #: the measured figure (points, cosine, percent); None when it could not be measured
    threshold: float
    shortfall: float | None  #: by how much the figure misses the threshold (0 when passed, None if unmeasured)
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.gate} [{self.candidate}]: {self.detail}"


def _unmeasurable(gate: str, cand: str, threshold: float, why: str) -> AccuracyGateResult:
    return AccuracyGateResult(gate, cand, False, None, threshold, None, f"cannot be judged: {why}")


def _check_drop(report: EvaluationReport, cand: ModelEvaluation, limit: float) -> AccuracyGateResult:
    drop = report.metric_drop(cand)
    if drop is None:
        return _unmeasurable("max-accuracy-drop", cand.name, limit, "no label metric in the report (no labels)")
    points = 100.0 * drop
    passed = points <= limit
    detail = (f"{report.metric_name} {100 * report.base.metric:.2f}% -> {100 * cand.metric:.2f}%: drop "
              f"{points:+.2f} points ({'within' if passed else f'over by {points - limit:.2f} points;'} "
              f"max {limit:g})")
    return AccuracyGateResult("max-accuracy-drop", cand.name, passed, points, limit, max(0.0, points - limit), detail)


def _check_cosine(cand: ModelEvaluation, limit: float) -> AccuracyGateResult:
    acc = cand.accuracy
    if acc is None:
        return _unmeasurable("min-cosine", cand.name, limit, "no comparison with the base")
    if acc.degenerate_base:
        return _unmeasurable("min-cosine", cand.name, limit,
                             f"cosine {acc.cosine:.5f} is not meaningful ({acc.not_meaningful[0]}); centred cosine "
                             f"{acc.centered_cosine:.5f}")
    passed = acc.cosine >= limit
    detail = (f"cosine vs base {acc.cosine:.5f} ({'>=' if passed else f'< by {limit - acc.cosine:.2g}:'} "
              f"min {limit:g})")
    return AccuracyGateResult("min-cosine", cand.name, passed, acc.cosine, limit, max(0.0, limit - acc.cosine), detail)


def _check_agreement(cand: ModelEvaluation, limit: float) -> AccuracyGateResult:
    acc = cand.accuracy
    if acc is None or acc.top1_agreement is None:
        return _unmeasurable("min-agreement", cand.name, limit,
                             "no top-1 agreement (the first output is not class scores)")
    pct = 100.0 * acc.top1_agreement
    if acc.degenerate_base:
        return _unmeasurable("min-agreement", cand.name, limit,
                             f"top-1 agreement {pct:.2f}% is not meaningful ({acc.not_meaningful[0]})")
    passed = pct >= limit
    detail = (f"top-1 agreement with base {pct:.2f}% ({'>=' if passed else f'< by {limit - pct:.2f} points:'} "
              f"min {limit:g}%)")
    return AccuracyGateResult("min-agreement", cand.name, passed, pct, limit, max(0.0, limit - pct), detail)


def check_accuracy_gates(report: EvaluationReport, gates: AccuracyGates) -> list[AccuracyGateResult]:
    """One result per enabled gate and candidate of ``report``, in the order drop, cosine, agreement."""
    results = []
    for cand in report.candidates:
        if gates.max_accuracy_drop is not None:
            results.append(_check_drop(report, cand, gates.max_accuracy_drop))
        if gates.min_cosine is not None:
            results.append(_check_cosine(cand, gates.min_cosine))
        if gates.min_agreement is not None:
            results.append(_check_agreement(cand, gates.min_agreement))
    return results


EXIT_GATE_FAILED = 2


def add_gate_arguments(parser: Any) -> None:
    """The three gate flags, for ``optimize`` and ``evaluate`` (an argparse parser or argument group)."""
    group = parser.add_argument_group("accuracy gates (exit 2 when one fails)")
    group.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                       help="fail when the label metric falls by more than POINTS percentage points (needs --labels)")
    group.add_argument("--min-cosine", type=float, metavar="X",
                       help="fail when the cosine of candidate vs base outputs is below X (or not meaningful)")
    group.add_argument("--min-agreement", type=float, metavar="PCT",
                       help="fail when top-1 agreement with the base is below PCT percent (or not meaningful)")


def gates_from_args(args: Any) -> AccuracyGates:
    return AccuracyGates(max_accuracy_drop=args.max_accuracy_drop, min_cosine=args.min_cosine,
                         min_agreement=args.min_agreement)


def failed_gates(results: Sequence[AccuracyGateResult]) -> list[AccuracyGateResult]:
    return [r for r in results if not r.passed]


def summary(results: Sequence[AccuracyGateResult]) -> str:
    """Lines for a terminal or a Markdown report: one per gate, then a count."""
    bad = failed_gates(results)
    lines = [r.line() for r in results]
    lines.append(f"accuracy gates: {len(results) - len(bad)} passed, {len(bad)} failed")
    return "\n".join(lines)
