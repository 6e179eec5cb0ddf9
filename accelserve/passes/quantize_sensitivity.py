"""Per-layer sensitivity of INT8 quantization, and excluding the worst layers until an accuracy budget is met.

Errors are measured against the float model's outputs. Ranking alone (``sensitivity``) uses a few calibration
feeds; an accuracy budget is decided on data the calibration did not see (:func:`budget_data`): the user's
held-out evaluation data when given, else a held-out split of the calibration data (the last quarter of it), and
the statistics are then collected on the rest. A budget that cannot be met is an :class:`AccuracyBudgetError`
(exit 2) with the figures.

Metrics:

* ``top1``: top-1 disagreement with the float model, in percentage points (classifiers);
* ``cosine``: 1 - cosine similarity of the outputs (worst output);
* ``rel_l2``: relative L2 error ``||q - f|| / ||f||`` (worst output);
* ``sample_cosine``: 1 - the lowest per-sample cosine similarity (embeddings: every sentence must stay close);
* ``auto``: ``top1`` when the first output looks like class scores, else ``cosine``.

Modes: ``one-at-a-time`` quantizes only that layer (its error is its contribution); ``all-but-one`` quantizes every
layer except that one (the contribution is how much the error falls when it stays in float).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from accelserve.errors import AccuracyBudgetError, OptimizationError
from accelserve.evaluate.accuracy import compare_outputs, concat_outputs, is_classifier_output

SensitivityMetric = Literal["auto", "top1", "cosine", "rel_l2", "sample_cosine"]
Resolved = Literal["top1", "cosine", "rel_l2", "sample_cosine"]
SensitivityMode = Literal["one-at-a-time", "all-but-one"]
Outputs = list[dict[str, np.ndarray]]
#: error of the model quantized with (only these nodes | None = all, these nodes kept in float)
ErrorOf = Callable[[list[str] | None, list[str]], float]


def resolve_metric(metric: SensitivityMetric, float_outputs: Outputs) -> Resolved:
    if metric != "auto":
        return metric
    first = next(iter(concat_outputs(float_outputs).values()))
    return "top1" if is_classifier_output(first) else "cosine"


def _lowest_sample_cosine(float_outputs: Outputs, quant_outputs: Outputs) -> float:
    worst = 1.0
    for name, ref in concat_outputs(float_outputs).items():
        got = concat_outputs(quant_outputs)[name]
        a = ref.reshape(ref.shape[0], -1).astype(np.float64) if ref.ndim else ref.reshape(1, 1)
        b = got.reshape(a.shape).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-300), 1.0)
        worst = min(worst, float(cos.min()))
    return worst


def output_error(float_outputs: Outputs, quant_outputs: Outputs, metric: Resolved) -> float:
    if metric == "sample_cosine":
        return 1.0 - _lowest_sample_cosine(float_outputs, quant_outputs)
    stats = compare_outputs(float_outputs, quant_outputs)
    if metric == "top1":
        if stats.top1_agreement is None:
            raise OptimizationError("the top1 sensitivity metric needs class scores as the first output",
                                    hint="use --set sensitivity_metric=cosine")
        return 100.0 * (1.0 - stats.top1_agreement)
    if metric == "cosine":
        return 1.0 - stats.cosine
    return stats.rel_l2_error


#: share of the calibration feeds held out for the accuracy budget when no evaluation data is given
HELD_OUT_SHARE = 0.25


@dataclass
class BudgetData:
    """Where an accuracy budget is decided: ``feeds`` (held out), and the ``calibration`` left for statistics."""

    calibration: Any  #: CalibrationData for the statistics (all of it when the held-out data came separately)
    feeds: list[dict[str, np.ndarray]]
    source: str  #: for reports: what the feeds are

    @property
    def samples(self) -> int:
        first = next(iter(self.feeds[0]))
        return sum(int(f[first].shape[0]) if np.ndim(f[first]) else 1 for f in self.feeds)


def budget_data(calibration: Any, held_out: Any = None, share: float = HELD_OUT_SHARE) -> BudgetData:
    """The data an accuracy budget is decided on: ``held_out`` (a CalibrationData, e.g. ``--eval-data``) when
    given, else the last ``share`` of the calibration feeds (at least one), the rest staying for calibration.
    One feed is first re-cut into four along the batch axis. Raises OptimizationError when nothing can be held out."""
    from accelserve.calibration import CalibrationData

    if held_out is not None:
        feeds = held_out.feeds()
        return BudgetData(calibration, feeds, f"held-out data {held_out.source}")
    feeds = calibration.feeds()
    if len(feeds) < 2 and calibration.samples >= 2:
        try:
            feeds = calibration.rebatch(-(-calibration.samples // 4))
        except Exception:  # a fixed batch axis: cannot re-cut
            feeds = calibration.feeds()
    if len(feeds) < 2:
        raise OptimizationError(
            "the accuracy budget is decided on data held out from calibration, but the calibration data is one "
            "feed that cannot be split",
            hint="pass --eval-data with held-out data, or calibration data with several feeds (--calib-batch)")
    k = max(1, round(len(feeds) * share))
    rest = CalibrationData(source=f"{calibration.source} (first {len(feeds) - k} of {len(feeds)} feeds)",
                           inputs=calibration.inputs, _feeds=feeds[:-k], is_random=calibration.is_random)
    return BudgetData(rest, feeds[-k:], f"the last {k} of {len(feeds)} calibration feeds, held out from calibration")


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    contribution: float  #: one-at-a-time: error with only this layer quantized; all-but-one: error saved by floating it


@dataclass
class SensitivityResult:
    mode: str
    metric: str
    full_error: float  #: every layer quantized (except the user's exclusions)
    layers: list[LayerSensitivity] = field(default_factory=list)  #: worst first
    budget: float | None = None
    excluded_for_budget: list[str] = field(default_factory=list)
    final_error: float | None = None
    decided_on: str | None = None  #: the data the errors were measured on
    samples: int | None = None  #: samples of that data

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [{"rank": i + 1, **asdict(layer)} for i, layer in enumerate(self.layers)]
        return d

    def table(self, limit: int = 10) -> list[str]:
        rows = [f"sensitivity ({self.mode}, metric {self.metric}); all quantized: {self.full_error:.4g}"]
        for i, layer in enumerate(self.layers[:limit]):
            rows.append(f"  {i + 1:>3}. {layer.node:<40} {layer.op_type:<10} {layer.contribution:.4g}")
        if len(self.layers) > limit:
            rows.append(f"  ... {len(self.layers) - limit} more in the JSON report")
        return rows


def analyze(layers: list[tuple[str, str]], error_of: ErrorOf, mode: SensitivityMode, user_excluded: list[str],
            full_error: float, metric: str) -> SensitivityResult:
    """Rank ``layers`` ((node name, op type) of quantized compute nodes) by their error contribution."""
    result = SensitivityResult(mode=mode, metric=metric, full_error=full_error)
    for name, op in layers:
        if mode == "one-at-a-time":
            contribution = error_of([name], user_excluded)
        else:
            contribution = full_error - error_of(None, [*user_excluded, name])
        result.layers.append(LayerSensitivity(name, op, float(contribution)))
    result.layers.sort(key=lambda layer: layer.contribution, reverse=True)
    return result


def meet_budget(result: SensitivityResult, error_of: ErrorOf, user_excluded: list[str], budget: float) -> list[str]:
    """Keep the worst layers in float, one more at a time, until the error is within ``budget``.

    Returns the layers excluded for the budget; raises OptimizationError if even all of them do not suffice."""
    result.budget = budget
    excluded: list[str] = []
    error = result.full_error
    for layer in result.layers:
        if error <= budget:
            break
        excluded.append(layer.node)
        error = error_of(None, [*user_excluded, *excluded])
    result.excluded_for_budget = excluded
    result.final_error = error
    if error > budget:
        raise AccuracyBudgetError(
            f"the accuracy budget {budget:g} ({result.metric}) cannot be met on {result.decided_on or 'the data'}"
            f"{f' ({result.samples} samples)' if result.samples else ''}: all quantized {result.full_error:.4g}, "
            f"with all {len(excluded)} ranked layers in float still {error:.4g}",
            hint="raise --accuracy-budget, exclude other op types (--exclude-op-types), or try another --method",
        )
    return excluded


def sensitivity_search(
    float_path: Any,
    quantize: Callable[[list[str] | None, list[str]], Any],
    layers: list[tuple[str, str]],
    user_excluded: list[str],
    feeds: list[dict[str, np.ndarray]],
    *,
    metric: SensitivityMetric,
    mode: SensitivityMode,
    budget: float | None,
    probe_path: Any,
    decided_on: str | None = None,
) -> SensitivityResult:
    """Rank ``layers`` and, with a ``budget``, pick the ones to keep in float.

    ``quantize(only, exclude)`` returns the quantized ModelProto (only: quantize just these nodes; None: all)."""
    from accelserve.evaluate._ort import run_model
    from accelserve.onnx_io import save_onnx

    float_outputs = run_model(float_path, feeds)
    resolved = resolve_metric(metric, float_outputs)

    def error_of(only: list[str] | None, exclude: list[str]) -> float:
        save_onnx(quantize(only, exclude), probe_path)
        return output_error(float_outputs, run_model(probe_path, feeds), resolved)

    full_error = error_of(None, user_excluded)
    result = analyze(layers, error_of, mode, user_excluded, full_error, resolved)
    result.decided_on = decided_on
    first = next(iter(feeds[0]))
    result.samples = sum(int(f[first].shape[0]) if np.ndim(f[first]) else 1 for f in feeds)
    if budget is not None:
        meet_budget(result, error_of, user_excluded, budget)
    return result


def model_error(float_path: Any, other_path: Any, feeds: list[dict[str, np.ndarray]], metric: str) -> float:
    """Error (``metric``, resolved) of ``other_path`` against ``float_path`` on ``feeds``."""
    from accelserve.evaluate._ort import run_model

    return output_error(run_model(float_path, feeds), run_model(other_path, feeds), metric)  # type: ignore[arg-type]
