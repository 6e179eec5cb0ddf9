"""``evaluate_models``: size, accuracy, speed and memory of a base model and its candidates, on the same data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.calibration import CalibrationData
from accelserve.errors import InvalidInputError
from accelserve.evaluate._ort import default_threads, run_model
from accelserve.evaluate.accuracy import AccuracyStats, Metric, compare_outputs, labelled_metric, resolve_metric
from accelserve.evaluate.flops import flops
from accelserve.evaluate.memory import MemoryStats, peak_memory
from accelserve.evaluate.size import SizeStats, size_stats
from accelserve.evaluate.speed import LatencyStats, measure_latencies
from accelserve.onnx_io import read_onnx

SCHEMA_VERSION = 1


@dataclass
class ModelEvaluation:
    name: str
    path: str
    size: SizeStats
    flops: int | None  #: FLOPs of Conv/Gemm/MatMul at batch 1 (None when shapes stay unknown)
    accuracy: AccuracyStats | None = None  #: vs the base model's outputs (None for the base itself)
    metric: float | None = None  #: label metric (higher is better), when labels were given
    latency: list[LatencyStats] = field(default_factory=list)
    memory: MemoryStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size.to_dict(),
            "flops": self.flops,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "metric": self.metric,
            "latency": [lat.to_dict() for lat in self.latency],
            "memory": self.memory.to_dict() if self.memory else None,
        }


@dataclass
class EvaluationReport:
    base: ModelEvaluation
    candidates: list[ModelEvaluation]
    data: dict[str, Any]
    threads: int
    batch_sizes: list[int]
    metric_name: str | None
    machine: dict[str, Any]
    gates: list[Any] = field(default_factory=list)  #: AccuracyGateResult, after apply_gates

    def apply_gates(self, gates: Any) -> list[Any]:
        """Check :class:`accelserve.evaluate.gates.AccuracyGates` on this report; the results are kept (JSON,
        Markdown) and returned."""
        from accelserve.evaluate.gates import check_accuracy_gates

        self.gates = check_accuracy_gates(self, gates)
        return self.gates

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def smoke_only(self) -> bool:
        return bool(self.data.get("random"))

    @property
    def accuracy_meaningful(self) -> bool:
        """False when any candidate's agreement with the base carries no information (see AccuracyStats)."""
        return not self.accuracy_warnings()

    def accuracy_warnings(self) -> list[str]:
        """``"NAME: reason"`` for every candidate whose cosine/top-1 agreement with the base is not meaningful."""
        return [f"{c.name}: {r}" for c in self.candidates if c.accuracy is not None for r in c.accuracy.not_meaningful]

    def compression_ratio(self, cand: ModelEvaluation) -> float:
        return self.base.size.file_bytes / cand.size.file_bytes if cand.size.file_bytes else float("inf")

    def metric_drop(self, cand: ModelEvaluation) -> float | None:
        """Base metric minus candidate metric (positive = worse), in the metric's own units."""
        if self.base.metric is None or cand.metric is None:
            return None
        return self.base.metric - cand.metric

    def accuracy_drop(self, cand: ModelEvaluation) -> tuple[float, str]:
        """The one accuracy-drop figure for plots: label-metric drop in points, else top-1 disagreement in
        points, else 1 - cosine."""
        drop = self.metric_drop(cand)
        if drop is not None:
            return 100.0 * drop, f"{self.metric_name} drop (points)"
        caveat = "" if cand.accuracy is None or cand.accuracy.meaningful else " (NOT MEANINGFUL, see report)"
        if cand.accuracy and cand.accuracy.top1_agreement is not None:
            return 100.0 * (1.0 - cand.accuracy.top1_agreement), "top-1 disagreement with base (points)" + caveat
        cos = cand.accuracy.cosine if cand.accuracy else 1.0
        return 1.0 - cos, "1 - cosine similarity with base" + caveat

    def speedup(self, cand: ModelEvaluation, batch_size: int) -> float | None:
        b = next((x for x in self.base.latency if x.batch_size == batch_size), None)
        c = next((x for x in cand.latency if x.batch_size == batch_size), None)
        if b is None or c is None or c.p50_ms == 0:
            return None
        return b.p50_ms / c.p50_ms

    def to_dict(self) -> dict[str, Any]:
        cands = []
        for c in self.candidates:
            d = c.to_dict()
            d["compression_ratio"] = self.compression_ratio(c)
            d["metric_drop"] = self.metric_drop(c)
            d["speedup_p50"] = {str(b): self.speedup(c, b) for b in self.batch_sizes}
            cands.append(d)
        return {
            "schema_version": SCHEMA_VERSION,
            "smoke_only": self.smoke_only,
            "accuracy_meaningful": self.accuracy_meaningful,
            "accuracy_warnings": self.accuracy_warnings(),
            "data": self.data,
            "threads": self.threads,
            "batch_sizes": list(self.batch_sizes),
            "metric_name": self.metric_name,
            "machine": self.machine,
            "base": self.base.to_dict(),
            "candidates": cands,
            "gates": [g.to_dict() for g in self.gates],
            "gates_passed": self.gates_passed,
        }

    def markdown(self) -> str:
        from accelserve.evaluate.report import to_markdown

        return to_markdown(self)

    def write(self, *, json: str | Path | None = None, markdown: str | Path | None = None,
              plot: str | Path | None = None) -> list[Path]:
        from accelserve.evaluate.report import write_report

        return write_report(self, json_path=json, markdown_path=markdown, plot_path=plot)


def _feeds_of(data: CalibrationData | Sequence[dict[str, np.ndarray]]) -> tuple[list[dict[str, np.ndarray]], dict]:
    if isinstance(data, CalibrationData):
        return data.feeds(), data.describe()
    feeds = list(data)
    return feeds, {"source": "in-memory feeds", "feeds": len(feeds), "random": False}


def evaluate_models(
    base: str | Path,
    candidates: Sequence[str | Path],
    data: CalibrationData | Sequence[dict[str, np.ndarray]],
    *,
    labels: np.ndarray | None = None,
    metric: str | Metric | None = None,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    speed: bool = True,
    memory: bool = True,
    names: Sequence[str] | None = None,
    max_seconds: float = 10.0,
    runtime: str | None = None,
) -> EvaluationReport:
    """Evaluate ``base`` and each candidate on the same feeds.

    ``runtime`` runs every model with that ``accelserve.runtimes`` plugin (e.g. ``onnxruntime-cuda``, ``tensorrt``)
    instead of ONNX Runtime on the CPU; peak memory is measured for the CPU runtime only.

    Accuracy is measured against the base model's outputs, and against ``labels`` (aligned with the samples along
    axis 0 of all feeds) with ``metric`` (default: top-1 accuracy) when labels are given.
    """
    from accelserve.passes.quantize_cpu import machine_info

    feeds, data_info = _feeds_of(data)
    if not feeds:
        raise InvalidInputError("evaluation data is empty")
    if not candidates:
        raise InvalidInputError("nothing to evaluate: give at least one candidate model")
    if names is not None and len(names) != len(candidates):
        raise InvalidInputError(f"{len(names)} names for {len(candidates)} candidates")
    for path in [base, *candidates]:
        read_onnx(path, load_external_data=False)  # a clear error for a missing or broken file, before any work
    threads = threads or default_threads()
    metric_name = resolve_metric(metric)[0] if labels is not None else None

    def one(path: str | Path, name: str, base_outputs: list | None) -> tuple[ModelEvaluation, list]:
        outputs = run_model(path, feeds, threads, runtime)
        count = flops(path)
        ev = ModelEvaluation(name=name, path=str(path), size=size_stats(path),
                             flops=None if count.unknown else count.total)
        if base_outputs is not None:
            ev.accuracy = compare_outputs(base_outputs, outputs)
        if labels is not None:
            ev.metric = labelled_metric(outputs, labels, metric)
        if memory and runtime in (None, "onnxruntime"):
            ev.memory = peak_memory(path, feeds, threads)
        return ev, outputs

    base_eval, base_outputs = one(base, "base", None)
    cand_names = list(names) if names is not None else [Path(c).name for c in candidates]
    cand_evals = [one(c, n, base_outputs)[0] for c, n in zip(candidates, cand_names)]
    if speed:  # all models timed together, interleaved, so order and load drift favour none of them
        evals = [base_eval, *cand_evals]
        for ev in evals:
            ev.latency = []
        for b in batch_sizes:
            stats = measure_latencies([base, *candidates], feeds, b, threads, max_seconds=max_seconds,
                                      runtime=runtime)
            for ev, st in zip(evals, stats):
                ev.latency.append(st)
    return EvaluationReport(
        base=base_eval, candidates=cand_evals, data=data_info, threads=threads,
        batch_sizes=list(batch_sizes) if speed else [], metric_name=metric_name,
        machine={**machine_info(), "runtime": runtime or "onnxruntime"},
    )
