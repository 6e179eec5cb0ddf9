"""Knowledge distillation and iterative prune → fine-tune.

Distillation loss: ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y)``
(Hinton et al.; the T^2 keeps the soft term's gradient scale independent of T). The student is given, or made from
the teacher by structured channel pruning (:mod:`accelserve.training.prune_torch`).

Prune → fine-tune: remove a step of channels (from the *original* widths, so steps add up), fine-tune (with
distillation from the original model when ``distill`` is on), evaluate on held-out data; stop at the target ratio,
or at the first step whose accuracy falls more than ``accuracy_budget`` points below the original and keep the
last step that met it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from accelserve._lazy import require
from accelserve.errors import OptimizationError
from accelserve.training.data import TrainingData
from accelserve.training.loop import FitResult, ProgressLog, accuracy, cross_entropy, fit
from accelserve.training.prune_torch import PruneSummary, parameter_count, prune_channels


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)  #: weight of the soft (teacher) term
    epochs: int = Field(10, ge=0)
    lr: float = Field(1e-3, gt=0)
    #: when no student is given: the teacher with this share of channels pruned
    prune_ratio: float = Field(0.5, ge=0, lt=1)


class PruneFinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_ratio: float = Field(0.75, gt=0, lt=1)
    steps: int = Field(3, ge=1)
    epochs_per_step: int = Field(3, ge=0)
    lr: float = Field(1e-3, gt=0)
    accuracy_budget: float | None = Field(1.0, ge=0)  #: points of held-out accuracy; None: no early stop
    distill: bool = True
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1)


def distillation_loss(teacher: Any, temperature: float, alpha: float) -> Any:
    torch = require("torch", "knowledge distillation")
    functional = torch.nn.functional

    def loss(student: Any, inputs: tuple[Any, ...], labels: Any) -> Any:
        with torch.no_grad():
            soft_targets = functional.softmax(teacher(*inputs) / temperature, dim=-1)
        logits = student(*inputs)
        soft = functional.kl_div(functional.log_softmax(logits / temperature, dim=-1), soft_targets,
                                 reduction="batchmean") * temperature ** 2
        return alpha * soft + (1 - alpha) * functional.cross_entropy(logits, labels)

    return loss


@dataclass
class DistillResult:
    model: Any
    teacher_accuracy: float
    student_accuracy_before: float
    history: FitResult
    pruned: PruneSummary | None
    parameters: tuple[int, int]  #: (teacher, student)

    @property
    def accuracy(self) -> float:
        return self.history.final_accuracy if self.history.epochs else self.student_accuracy_before


def distill(teacher: Any, data: TrainingData, config: DistillConfig | None = None, *, student: Any = None,
            progress: ProgressLog | None = None) -> DistillResult:
    """Train ``student`` (default: the teacher pruned by ``config.prune_ratio``) on the teacher's soft outputs."""
    config = config or DistillConfig()
    teacher = teacher.eval()
    summary = None
    if student is None:
        student, summary = prune_channels(teacher, config.prune_ratio)
        if progress:
            progress.note(f"student: teacher with {100 * config.prune_ratio:.0f}% of channels pruned "
                          f"({summary.describe()})")
    teacher_acc = accuracy(teacher, data.eval)
    before = accuracy(student, data.eval)
    history = fit(student, data, distillation_loss(teacher, config.temperature, config.alpha), epochs=config.epochs,
                  lr=config.lr, progress=progress)
    return DistillResult(student, teacher_acc, before, history, summary,
                         (parameter_count(teacher), parameter_count(student)))


@dataclass
class PruneStep:
    ratio: float
    accuracy_before_finetune: float
    accuracy: float
    parameters: int
    kept: bool
    summary: str


@dataclass
class PruneFinetuneResult:
    model: Any
    base_accuracy: float
    steps: list[PruneStep] = field(default_factory=list)
    stopped_by_budget: bool = False

    @property
    def ratio(self) -> float:
        kept = [s for s in self.steps if s.kept]
        return kept[-1].ratio if kept else 0.0

    @property
    def accuracy(self) -> float:
        kept = [s for s in self.steps if s.kept]
        return kept[-1].accuracy if kept else self.base_accuracy


def prune_finetune(model: Any, data: TrainingData, config: PruneFinetuneConfig | None = None, *,
                   progress: ProgressLog | None = None) -> PruneFinetuneResult:
    config = config or PruneFinetuneConfig()
    original = copy.deepcopy(model).eval()
    base = accuracy(original, data.eval)
    result = PruneFinetuneResult(model=original, base_accuracy=base)
    current = original
    for step in range(1, config.steps + 1):
        ratio = config.target_ratio * step / config.steps
        # each step's ratio of the *original* widths, taken from the current (already smaller) model
        widths_left = 1 - config.target_ratio * (step - 1) / config.steps
        pruned, summary = prune_channels(current, 1 - (1 - ratio) / widths_left)
        before = accuracy(pruned, data.eval)
        loss = (distillation_loss(original, config.temperature, config.alpha) if config.distill else cross_entropy)
        fit(pruned, data, loss, epochs=config.epochs_per_step, lr=config.lr, progress=progress)
        acc = accuracy(pruned, data.eval)
        ok = config.accuracy_budget is None or 100 * (base - acc) <= config.accuracy_budget
        result.steps.append(PruneStep(ratio, before, acc, parameter_count(pruned), ok, summary.describe()))
        if progress:
            progress.note(f"step {step}/{config.steps}: {100 * ratio:.0f}% of channels pruned, accuracy "
                          f"{100 * before:.2f}% -> {100 * acc:.2f}% after fine-tuning "
                          f"({'within' if ok else 'OVER'} the budget)")
        if not ok:
            result.stopped_by_budget = True
            break
        current = result.model = pruned
    if result.model is original and config.accuracy_budget is not None:
        raise OptimizationError(
            f"even the first step ({100 * config.target_ratio / config.steps:.0f}% of channels) loses more than "
            f"{config.accuracy_budget} points after fine-tuning",
            hint="raise --accuracy-budget, fine-tune longer (--epochs), or prune in more, smaller steps")
    return result
