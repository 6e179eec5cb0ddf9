"""Calibration samples for the pruning and low-rank passes: a fit part (importance, reconstruction) and a held-out
part (the before/after figures and the accuracy-budget schedule), and a scorer that compares models on it with the
evaluation harness's metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from accelserve.errors import InvalidInputError
from accelserve.passes.pruning.graph import Feeds, GraphIndex, calibration_batches, iterate, sample_batches

#: what accuracy_budget measures, shared by the pruning and low-rank passes
BUDGET_HELP = ("the error vs the uncompressed model on held-out calibration samples, in the int8 pass's units: "
               "accuracy drop in points with labels, else top-1 disagreement in points (classifiers) or 1 - cosine")
CALIB_HINT = "pass calibration data (--calib DATA: .npz, a directory of .npy, or MODULE:FN)"


@dataclass
class Samples:
    fit: list[Feeds]
    held_out: list[Feeds]
    held_out_labels: np.ndarray | None
    random: bool
    note: str = ""

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input shapes of one sample (batch axis 1), for FLOP counts of models with dynamic axes."""
        return {k: (1, *v.shape[1:]) if v.ndim else () for k, v in self.held_out[0].items()}

    def flops(self, model: onnx.ModelProto) -> int:
        """FLOPs per sample (the evaluation harness's count) at the held-out samples' shapes."""
        from accelserve.evaluate.flops import flops

        return flops(model, self.sample_shapes()).total

    def describe(self) -> dict[str, Any]:
        def count(batches: list[Feeds]) -> int:
            return sum(int(next(iter(b.values())).shape[0]) if next(iter(b.values())).ndim else 1 for b in batches)

        return {"fit_samples": count(self.fit), "held_out_samples": count(self.held_out), "random": self.random,
                "note": self.note}


def _batch_axis_dynamic(model: onnx.ModelProto) -> bool:
    index = GraphIndex(model)
    shapes = [index.shape(n) for n in index.graph_inputs]
    return all(s and s[0] is None for s in shapes)


def load_samples(model: onnx.ModelProto, calibration: Any, *, need: str | None = None, max_samples: int = 512,
                 labels: str | np.ndarray | None = None, batch: int = 32) -> Samples:
    """Split the calibration data into fit and held-out parts (every fourth sample held out).

    Without calibration data: an :class:`InvalidInputError` if ``need`` says what needs it, else random samples
    (used only for self-checks and error figures, marked as random)."""
    batches = calibration_batches(calibration, model)
    if not batches:
        if need:
            raise InvalidInputError(f"{need} needs calibration data, and none was given", hint=CALIB_HINT)
        if labels is not None:
            raise InvalidInputError("labels were given without calibration data to align them with", hint=CALIB_HINT)
        rand = sample_batches(model, count=2, batch=8)
        return Samples(rand, rand, None, True, "random inputs: error figures only, no accuracy")
    is_random = bool(getattr(calibration, "is_random", False))
    label_arr = None
    if labels is not None:
        from accelserve.evaluate.accuracy import load_labels

        label_arr = np.asarray(load_labels(labels) if isinstance(labels, str) else labels).reshape(-1)
    if _batch_axis_dynamic(model):
        merged = {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}
        total = next(iter(merged.values())).shape[0]
        if label_arr is not None and label_arr.size != total:
            raise InvalidInputError(f"there are {label_arr.size} labels for {total} calibration samples",
                                    hint="give one label per calibration sample, in order")
        n = min(total, max_samples)
        idx = np.arange(n)
        held = idx[3::4] if n >= 8 else idx
        fit = np.setdiff1d(idx, held) if n >= 8 else idx

        def cut(rows: np.ndarray) -> list[Feeds]:
            return [{k: v[rows[s:s + batch]] for k, v in merged.items()} for s in range(0, rows.size, batch)]

        note = "" if n >= 8 else f"only {n} samples: the held-out figures reuse the fit samples"
        return Samples(cut(fit), cut(held), None if label_arr is None else label_arr[held], is_random, note)
    # fixed batch axis: split whole feeds
    feeds = batches[: max(1, max_samples)]
    held_i = list(range(3, len(feeds), 4)) if len(feeds) >= 4 else list(range(len(feeds)))
    fit_i = [i for i in range(len(feeds)) if i not in held_i] or held_i
    held_labels = None
    if label_arr is not None:
        sizes = [int(next(iter(f.values())).shape[0]) for f in batches]
        if label_arr.size != sum(sizes):
            raise InvalidInputError(f"there are {label_arr.size} labels for {sum(sizes)} calibration samples")
        starts = np.cumsum([0, *sizes])
        held_labels = np.concatenate([label_arr[starts[i]:starts[i + 1]] for i in held_i])
    note = "" if len(feeds) >= 4 else f"only {len(feeds)} feeds: the held-out figures reuse the fit feeds"
    return Samples([feeds[i] for i in fit_i], [feeds[i] for i in held_i], held_labels, is_random, note)


class Scorer:
    """Compares models with the base model on the held-out samples, in the units ``accuracy_budget`` uses (the same
    as the int8 pass's): with labels, the drop of the labelled metric (default top-1 accuracy) in percentage
    points; without, top-1 disagreement with the base model in points for classifier outputs, else
    ``1 - cosine similarity`` (see :mod:`accelserve.passes.quantize_sensitivity`)."""

    def __init__(self, base: onnx.ModelProto, samples: Samples, metric: str | None = None) -> None:
        from accelserve.evaluate.accuracy import labelled_metric
        from accelserve.passes.quantize_sensitivity import resolve_metric

        self.samples = samples
        self.metric = metric
        self.base_outputs = self.outputs(base)
        self.labels = samples.held_out_labels
        if self.labels is not None:
            self.base_accuracy: float | None = labelled_metric(self.base_outputs, self.labels, metric)
            self.error_kind = f"{metric or 'top1_accuracy'} drop (points)"
        else:
            self.base_accuracy = None
            self.output_metric = resolve_metric("auto", self.base_outputs)
            self.error_kind = ("top-1 disagreement with the base (points)" if self.output_metric == "top1"
                               else "1 - cosine similarity with the base")

    def outputs(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        return list(iterate(model, self.samples.held_out))

    def error_of_outputs(self, outputs: Sequence[dict[str, np.ndarray]]) -> float:
        from accelserve.evaluate.accuracy import labelled_metric
        from accelserve.passes.quantize_sensitivity import output_error

        if self.labels is not None:
            return 100.0 * (float(self.base_accuracy) - labelled_metric(list(outputs), self.labels, self.metric))
        return output_error(self.base_outputs, list(outputs), self.output_metric)

    def error(self, model: onnx.ModelProto) -> float:
        """The error of ``model`` against the base, in accuracy-budget units (0 for the base itself)."""
        return self.error_of_outputs(self.outputs(model))

    def compare(self, model: onnx.ModelProto) -> dict[str, Any]:
        """Error (budget units), accuracy (with labels) and output errors of ``model`` on the held-out samples."""
        from accelserve.evaluate.accuracy import compare_outputs, labelled_metric

        outs = self.outputs(model)
        stats = compare_outputs(self.base_outputs, outs)
        return {
            "error": self.error_of_outputs(outs),
            "accuracy": None if self.labels is None else labelled_metric(outs, self.labels, self.metric),
            "top1_agreement": stats.top1_agreement, "rel_l2_error": stats.rel_l2_error,
            "max_abs_error": stats.max_abs_error, "cosine": stats.cosine, "centered_cosine": stats.centered_cosine,
            "not_meaningful": list(stats.not_meaningful),
        }

    def describe_line(self, base: dict[str, Any], result: dict[str, Any], what: str = "pruned") -> str:
        """One log line: accuracy before/after with labels, else the error against the base."""
        smoke = " [random inputs: smoke only]" if self.samples.random else ""
        if result.get("accuracy") is not None:
            return (f"held-out accuracy: base {100 * base['accuracy']:.2f}%, {what} {100 * result['accuracy']:.2f}% "
                    f"({self.error_kind}: {result['error']:.3g}){smoke}")
        caveat = ""
        if result.get("not_meaningful"):
            caveat = (f" [NOT MEANINGFUL: {result['not_meaningful'][0]}; centred cosine "
                      f"{result['centered_cosine']:.4f}; use labelled data and a trained model]")
        return (f"held-out {self.error_kind}: {result['error']:.4g} "
                f"(output relative L2 error {result['rel_l2_error']:.4g}){smoke}{caveat}")
