"""``train_compress``: one call from a trained torch model to a compressed, verified ONNX model and its report.

The library function behind ``accelserve train-compress`` and the stage the deployment pipeline calls. The output
model is written only when the method finished (atomically); the report (JSON, Markdown) is written in every case
where a path was given, marked incomplete with the reason when training was interrupted or failed.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from accelserve.errors import AccelserveError, InvalidInputError
from accelserve.training.data import TrainingData, split_batch
from accelserve.training.loop import ProgressLog

Method = Literal["qat", "distill", "prune-finetune"]
METHODS = ("qat", "distill", "prune-finetune")
REPORT_SCHEMA = "accelserve.train-compress/1"


@dataclass
class TrainCompressResult:
    method: str
    output: Path | None
    complete: bool
    reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evaluation: Any = None  #: EvaluationReport (candidate vs the exported original)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA, "method": self.method, "complete": self.complete, "reason": self.reason,
            "output": str(self.output) if self.output else None, "figures": self.figures, "epochs": self.epochs,
            "seconds": round(self.seconds, 2),
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
        }

    def markdown(self) -> str:
        state = "complete" if self.complete else f"INCOMPLETE ({self.reason})"
        lines = [f"## train-compress: {self.method} ({state})", ""]
        for key, value in self.figures.items():
            lines.append(f"- {key}: {_fmt(value)}")
        if self.evaluation is not None:
            lines += ["", self.evaluation.markdown()]
        return "\n".join(lines) + "\n"

    def write(self, json_path: str | Path | None = None, markdown_path: str | Path | None = None) -> None:
        from accelserve.evaluate.report import atomic_write_bytes

        if json_path:
            atomic_write_bytes(json_path, (json.dumps(self.to_dict(), indent=2, default=str) + "\n").encode())
        if markdown_path:
            atomic_write_bytes(markdown_path, self.markdown().encode())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class _Recorder(ProgressLog):
    """ProgressLog that keeps every epoch, so an interrupted run still reports what it did."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.records: list[dict[str, Any]] = []

    def epoch(self, log: Any, epochs: int) -> None:  # noqa: ANN401
        self.records.append({"epoch": log.epoch, "loss": log.loss, "accuracy": log.accuracy, "seconds": log.seconds})
        super().epoch(log, epochs)


def train_compress(model: Any, data: TrainingData, method: Method, output: str | Path, *, config: Any = None,
                   student: Any = None, evaluate_speed: bool = True, quiet: bool = False,
                   report_json: str | Path | None = None, report_markdown: str | Path | None = None,
                   ) -> TrainCompressResult:
    """Run ``method`` on ``model`` (a trained ``nn.Module``), export to ``output``, evaluate against the exported
    original on ``data.eval``. ``config``: a QATConfig / DistillConfig / PruneFinetuneConfig (defaults otherwise).
    The reports are written whatever happens (marked incomplete with the reason on an interruption or error)."""
    from accelserve.training import distill as distill_mod
    from accelserve.training import export as export_mod
    from accelserve.training import qat as qat_mod

    if method not in METHODS:
        raise InvalidInputError(f"unknown method '{method}'", hint=f"use one of: {', '.join(METHODS)}")
    if student is not None and method != "distill":
        raise InvalidInputError("a student model only applies to --method distill")
    output = Path(output)
    if output.suffix != ".onnx":
        raise InvalidInputError(f"output '{output}' should end in .onnx")
    first = next(iter(data.eval), None)
    if first is None:
        raise InvalidInputError("the eval data is empty: held-out data is needed to measure accuracy")
    names = data.input_names_for(len(split_batch(first)[0]))
    recorder = _Recorder(method) if not quiet else None
    result = TrainCompressResult(method, None, complete=False)
    start = time.perf_counter()
    try:
        with export_mod.temporary_work_dir(output) as tmp:
            work = Path(tmp)
            candidate = work / "candidate.onnx"
            if method == "qat":
                r = qat_mod.qat(model, data, config, progress=recorder)
                verification = export_mod.export_qat(r.model, r.scheme, candidate, data, names, work_dir=work)
                result.figures.update({
                    "target": r.scheme.target, "reduce_range": r.scheme.reduce_range,
                    "float_accuracy": r.float_accuracy, "ptq_accuracy": r.ptq_accuracy, "qat_accuracy": r.accuracy,
                    "onnx_vs_fake_quant_agreement": verification.agreement,
                    "onnx_vs_fake_quant_max_abs_diff": verification.max_abs_diff,
                    "ranges_from_training": verification.ranges_transferred})
            elif method == "distill":
                r = distill_mod.distill(model, data, config, student=student, progress=recorder)
                export_mod.export_float(r.model, candidate, data, names)
                result.figures.update({
                    "teacher_accuracy": r.teacher_accuracy, "student_accuracy_before": r.student_accuracy_before,
                    "student_accuracy": r.accuracy, "teacher_parameters": r.parameters[0],
                    "student_parameters": r.parameters[1],
                    "student": r.pruned.describe() if r.pruned else "given"})
            else:
                r = distill_mod.prune_finetune(model, data, config, progress=recorder)
                export_mod.export_float(r.model, candidate, data, names)
                result.figures.update({
                    "base_accuracy": r.base_accuracy, "pruned_ratio": r.ratio, "accuracy": r.accuracy,
                    "stopped_by_budget": r.stopped_by_budget,
                    "steps": [s.__dict__ for s in r.steps]})
            base = export_mod.export_float(model, work / "original.onnx", data, names)
            result.evaluation = export_mod.evaluation_report(base, candidate, data, names, speed=evaluate_speed)
            output.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(candidate), str(output))
        result.output, result.complete = output, True
    except KeyboardInterrupt as exc:
        result.reason = f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')})"
        raise
    except AccelserveError as exc:
        result.reason = exc.message
        raise
    finally:
        result.seconds = time.perf_counter() - start
        result.epochs = recorder.records if recorder else []
        if not result.complete and result.reason is None:
            result.reason = "failed"
        result.write(report_json, report_markdown)
    return result
