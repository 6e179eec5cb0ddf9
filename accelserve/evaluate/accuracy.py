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


#: the base predicts one class for at least this share of the inputs -> agreement figures carry no information
DOMINANT_CLASS_SHARE = 0.9
#: fewest samples for the one-class check (two or three inputs of one class prove nothing)
MIN_SAMPLES_FOR_CLASS_CHECK = 10
#: ||base - mean base|| / ||base|| below this: the outputs barely depend on the input
MIN_INPUT_SPREAD = 0.1
#: ||base - mean base|| / ||candidate - base|| below this: the error is as large as what the input changes
MIN_SIGNAL_TO_ERROR = 1.0


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs_error: float
    mean_abs_error: float
    rel_l2_error: float  #: ||cand - base|| / ||base||
    cosine: float
    #: cosine of the outputs centred on the base's mean output over the inputs: agreement on what depends on the input
    centered_cosine: float = 1.0
    #: ||base - mean base|| / ||base||: how much the base's output changes from input to input (0: constant)
    input_spread: float = 0.0
    #: ||base - mean base|| / ||cand - base|| (None when the outputs are identical)
    signal_to_error: float | None = None


@dataclass(frozen=True)
class AccuracyStats:
    """Candidate vs base outputs over all feeds. ``top1_agreement`` is None unless the first output looks like
    classifier scores (rank >= 2, last axis > 1).

    ``cosine`` and ``top1_agreement`` are only evidence when the base model's outputs depend on its input: a model
    with random weights gives nearly the same output (one class) for every input, and then any candidate "agrees".
    ``meaningful`` is False in that case, and ``not_meaningful`` says why; ``centered_cosine`` (outputs centred on
    the base's mean output) measures agreement on the input-dependent part only, and is the figure to read then."""

    max_abs_error: float
    mean_abs_error: float
    rel_l2_error: float  #: worst output
    cosine: float  #: worst output
    top1_agreement: float | None
    samples: int
    outputs: list[OutputError] = field(default_factory=list)
    centered_cosine: float = 1.0  #: worst output
    dominant_class: int | None = None  #: the base's most frequent top-1 class (classifiers)
    dominant_class_share: float | None = None  #: share of the inputs the base puts in that class
    input_spread: float = 0.0  #: lowest over outputs (see OutputError.input_spread)
    not_meaningful: list[str] = field(default_factory=list)  #: why cosine/top-1 agreement carry no information

    @property
    def meaningful(self) -> bool:
        return not self.not_meaningful

    @property
    def degenerate_base(self) -> bool:
        """The base's outputs barely depend on the input (whatever the candidate)."""
        return any(r.startswith("degenerate base") for r in self.not_meaningful)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outputs": [asdict(o) for o in self.outputs], "meaningful": self.meaningful,
                "degenerate_base": self.degenerate_base}


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


def _centered(eb: np.ndarray) -> np.ndarray:
    """Base outputs minus their mean over the inputs (axis 0)."""
    return eb - eb.mean(axis=0, keepdims=True) if eb.ndim and eb.shape[0] > 1 else np.zeros_like(eb)


def _output_error(name: str, eb: np.ndarray, ec: np.ndarray) -> OutputError:
    diff = (ec - eb).ravel()
    norm = float(np.linalg.norm(eb))
    err = float(np.linalg.norm(diff))
    centered = _centered(eb)
    mean = eb - centered
    spread = float(np.linalg.norm(centered))
    return OutputError(
        name=name,
        max_abs_error=float(np.abs(diff).max()) if diff.size else 0.0,
        mean_abs_error=float(np.abs(diff).mean()) if diff.size else 0.0,
        rel_l2_error=err / norm if norm else err,
        cosine=_cosine(eb.ravel(), ec.ravel()),
        centered_cosine=_cosine(centered.ravel(), (ec - mean).ravel()),
        input_spread=spread / norm if norm else 0.0,
        signal_to_error=spread / err if err else None,
    )


def _not_meaningful(b: dict[str, np.ndarray], per_output: list[OutputError], samples: int,
                    dominant: tuple[int, float] | None) -> list[str]:
    reasons = []
    if samples < 2:
        return ["one input only: agreement with the base says nothing about other inputs"]
    if dominant is not None and samples >= MIN_SAMPLES_FOR_CLASS_CHECK and dominant[1] >= DOMINANT_CLASS_SHARE:
        first = next(iter(b.values()))
        reasons.append(f"degenerate base: it predicts class {dominant[0]} for {100 * dominant[1]:.0f}% of the "
                       f"{samples} inputs ({first.shape[-1]} classes), so top-1 agreement is near-certain for any "
                       "candidate")
    for o in per_output:
        if o.input_spread < MIN_INPUT_SPREAD:
            reasons.append(f"degenerate base: output '{o.name}' barely depends on the input (variation across "
                           f"inputs is {100 * o.input_spread:.2g}% of its size), so cosine is near 1 for any "
                           "candidate")
        elif o.signal_to_error is not None and o.signal_to_error < MIN_SIGNAL_TO_ERROR:
            reasons.append(f"output '{o.name}': the candidate's error is {1 / o.signal_to_error:.2g}x the base's "
                           "variation across inputs")
    return reasons


def compare_outputs(base: Outputs, candidate: Outputs) -> AccuracyStats:
    """Compare candidate outputs with base outputs (same feeds, same order), and say whether the comparison
    carries information (see :class:`AccuracyStats`)."""
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
        per_output.append(_output_error(name, eb, ec))
    first = next(iter(b))
    top1 = None
    dominant: tuple[int, float] | None = None
    if is_classifier_output(b[first]):
        base_top = np.argmax(b[first], axis=-1).ravel()
        top1 = float(np.mean(base_top == np.argmax(c[first], axis=-1).ravel()))
        counts = np.bincount(base_top)
        dominant = (int(counts.argmax()), float(counts.max() / base_top.size))
    samples = int(b[first].shape[0]) if b[first].ndim else len(base)
    return AccuracyStats(
        max_abs_error=max(o.max_abs_error for o in per_output),
        mean_abs_error=float(np.mean([o.mean_abs_error for o in per_output])),
        rel_l2_error=max(o.rel_l2_error for o in per_output),
        cosine=min(o.cosine for o in per_output),
        top1_agreement=top1,
        samples=samples,
        outputs=per_output,
        centered_cosine=min(o.centered_cosine for o in per_output),
        dominant_class=dominant[0] if dominant else None,
        dominant_class_share=dominant[1] if dominant else None,
        input_spread=min(o.input_spread for o in per_output),
        not_meaningful=_not_meaningful(b, per_output, samples, dominant),
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
