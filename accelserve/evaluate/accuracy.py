"""Accuracy of a candidate model against the base model's outputs, and against labels with a metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError
from accelserve.evaluate._ort import run_model

Outputs = list[dict[str, np.ndarray]]
Metric = Callable[[dict[str, np.ndarray], np.ndarray], float]


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs_error: float
    mean_abs_error: float
    rel_l2_error: float  #: ||cand - base|| / ||base||
    cosine: float


@dataclass(frozen=True)
class AccuracyStats:
    """Candidate vs base outputs over all feeds. ``top1_agreement`` is None unless the first output looks like
    classifier scores (rank >= 2, last axis > 1)."""

    max_abs_error: float
    mean_abs_error: float
    rel_l2_error: float  #: worst output
    cosine: float  #: worst output
    top1_agreement: float | None
    samples: int
    outputs: list[OutputError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outputs": [asdict(o) for o in self.outputs]}


def concat_outputs(outputs: Outputs) -> dict[str, np.ndarray]:
    """Outputs of all feeds joined along axis 0 (scalars are stacked)."""
    if not outputs:
        raise InvalidInputError("no outputs to join: the data is empty")
    joined = {}
    for name in outputs[0]:
        parts = [np.asarray(o[name]) for o in outputs]
        joined[name] = np.concatenate(parts, axis=0) if parts[0].ndim else np.stack(parts)
    return joined


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def is_classifier_output(arr: np.ndarray) -> bool:
    return arr.ndim >= 2 and arr.shape[-1] > 1 and np.issubdtype(arr.dtype, np.floating)


def compare_outputs(base: Outputs, candidate: Outputs) -> AccuracyStats:
    """Compare candidate outputs with base outputs (same feeds, same order)."""
    b, c = concat_outputs(base), concat_outputs(candidate)
    if set(b) != set(c):
        raise InvalidInputError(
            f"the candidate's outputs {sorted(c)} differ from the base model's {sorted(b)}",
            hint="compare models with the same output names",
        )
    per_output = []
    for name in b:
        eb, ec = b[name].astype(np.float64), c[name].astype(np.float64)
        if eb.shape != ec.shape:
            raise InvalidInputError(f"output '{name}' has shape {ec.shape} in the candidate, {eb.shape} in the base")
        diff = np.abs(ec - eb).ravel()
        norm = float(np.linalg.norm(eb))
        per_output.append(OutputError(
            name=name,
            max_abs_error=float(diff.max()) if diff.size else 0.0,
            mean_abs_error=float(diff.mean()) if diff.size else 0.0,
            rel_l2_error=float(np.linalg.norm(diff) / norm) if norm else float(np.linalg.norm(diff)),
            cosine=_cosine(eb.ravel(), ec.ravel()),
        ))
    first = next(iter(b))
    top1 = None
    if is_classifier_output(b[first]):
        top1 = float(np.mean(np.argmax(b[first], axis=-1) == np.argmax(c[first], axis=-1)))
    samples = int(b[first].shape[0]) if b[first].ndim else len(base)
    return AccuracyStats(
        max_abs_error=max(o.max_abs_error for o in per_output),
        mean_abs_error=float(np.mean([o.mean_abs_error for o in per_output])),
        rel_l2_error=max(o.rel_l2_error for o in per_output),
        cosine=min(o.cosine for o in per_output),
        top1_agreement=top1,
        samples=samples,
        outputs=per_output,
    )


def accuracy_vs_base(base_path: str | Path, cand_path: str | Path, feeds: list[dict[str, np.ndarray]],
                     threads: int | None = None) -> AccuracyStats:
    """Run both models on ``feeds`` and compare the candidate's outputs with the base's."""
    return compare_outputs(run_model(base_path, feeds, threads), run_model(cand_path, feeds, threads))


# --------------------------------------------------------------------------------------------------------------
# Labels and metrics


def top1_accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    """Default label metric: fraction of samples whose first output's argmax equals the label."""
    scores = next(iter(outputs.values()))
    if not is_classifier_output(scores):
        raise InvalidInputError(
            f"the default metric (top-1 accuracy) needs class scores, but the first output has shape {scores.shape}",
            hint="pass --metric MODULE:FN, a function (outputs: dict of arrays, labels) -> float",
        )
    pred = np.argmax(scores, axis=-1).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if pred.shape != labels.shape:
        raise InvalidInputError(f"there are {labels.size} labels but {pred.size} predictions")
    return float(np.mean(pred == labels))


def load_labels(path: str | Path) -> np.ndarray:
    """Labels from ``.npy``, or ``.npz`` with one array (or a ``labels`` key)."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"labels file {p} does not exist")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                if "labels" in npz.files:
                    return npz["labels"]
                if len(npz.files) == 1:
                    return npz[npz.files[0]]
                raise InvalidInputError(f"{p} holds several arrays ({', '.join(npz.files)}) and none named 'labels'")
        return np.load(p, allow_pickle=False)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"cannot read labels from {p}: {exc}") from exc


def resolve_metric(metric: str | Metric | None) -> tuple[str, Metric]:
    """(name, function) for a metric given as None (top-1 accuracy), ``MODULE:FN`` or a callable."""
    if metric is None:
        return "top1_accuracy", top1_accuracy
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    from accelserve.calibration import resolve_callable

    return str(metric), resolve_callable(str(metric), what="metric")


def labelled_metric(outputs: Outputs, labels: np.ndarray, metric: str | Metric | None = None) -> float:
    """The metric (higher is better) of outputs over all feeds against labels."""
    name, fn = resolve_metric(metric)
    try:
        value = fn(concat_outputs(outputs), np.asarray(labels))
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"metric {name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"metric {name} returned {value!r}, not a number") from None
