"""The accuracy-budget schedule shared by the pruning and low-rank passes.

Units (channel groups, layers) are compressed stepwise, most robust first: a sensitivity scan compresses each unit
alone at the strongest level and measures its error; then, in order of increasing sensitivity, each unit's
level is raised one step at a time while the *whole* model stays within the budget. The strongest model found
within the budget is kept (the uncompressed model if no step fits).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

U = TypeVar("U", bound=Hashable)
M = TypeVar("M")


@dataclass
class ScheduleResult(Generic[U, M]):
    levels: dict[U, float]
    model: M | None  #: the model built at ``levels`` (None if nothing fit the budget)
    error: float
    budget: float
    sensitivity: dict[U, float] = field(default_factory=dict)  #: error of each unit alone at the top level
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": {str(k): v for k, v in self.levels.items()},
            "error": self.error, "budget": self.budget,
            "sensitivity": {str(k): v for k, v in self.sensitivity.items()},
            "trials": len(self.trials),
        }


def budget_schedule(units: Sequence[U], steps: Sequence[float], build: Callable[[dict[U, float]], M],
                    error: Callable[[M], float], budget: float,
                    log: Callable[[str], None] | None = None) -> ScheduleResult[U, M]:
    """Raise each unit's level through ``steps`` (ascending, > 0) while ``error(model) <= budget``; the error of
    the uncompressed model is 0."""
    say = log or (lambda _msg: None)
    result: ScheduleResult[U, M] = ScheduleResult({}, None, 0.0, budget)
    if not units or not steps:
        return result
    top = steps[-1]
    for unit in units:
        e = error(build({unit: top}))
        result.sensitivity[unit] = e
        result.trials.append({"levels": {str(unit): top}, "error": e, "phase": "sensitivity"})
    order = sorted(units, key=lambda u: (result.sensitivity[u], str(u)))
    say("sensitivity (error alone at the top level): "
        + ", ".join(f"{u}: {result.sensitivity[u]:+.4f}" for u in order))
    levels: dict[U, float] = {}
    for unit in order:
        if result.sensitivity[unit] > budget:
            candidates = list(steps[:-1])  # the top level alone already breaks the budget
        else:
            candidates = list(steps)
        for level in candidates:
            trial = {**levels, unit: level}
            model = build(trial)
            e = error(model)
            ok = e <= budget
            result.trials.append({"levels": {str(k): v for k, v in trial.items()}, "error": e, "phase": "greedy",
                                  "within_budget": ok})
            if not ok:
                break
            levels, result.model, result.error = trial, model, e
    result.levels = levels
    say(f"kept levels {', '.join(f'{u}={v:g}' for u, v in levels.items()) or 'none'}: error {result.error:.4g} "
        f"(budget {budget:g}) after {len(result.trials)} trials")
    return result
