"""``optimize``: run a recipe of passes on an ONNX model, write the result atomically, and measure what it did.

A recipe is a list of pass names (``"simplify,int8"``). Each name is looked up in the ``accelserve.passes``
entry-point group, so third-party passes work exactly like built-ins. Options are one flat dict; each option goes
to every pass in the recipe whose typed config has a field of that name, and an option that no pass has is an
error (never silently ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelserve import plugins, stop
from accelserve.artifact import ModelArtifact
from accelserve.calibration import CalibrationData, CalibrationSpec, load_calibration
from accelserve.errors import AccuracyBudgetError, InvalidInputError, PluginError
from accelserve.onnx_io import save_onnx
from accelserve.passes.base import Pass, PassContext

REPORT_SCHEMA_VERSION = 1


@dataclass
class PassRun:
    """One pass as it ran: its config, the model it produced, and what it reported."""

    name: str
    config: dict[str, Any]
    artifact: ModelArtifact
    report: dict[str, Any]
    log: list[str]
    seconds: float
    size_bytes: int  #: of the model the pass wrote (its work file is gone after optimize returns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "seconds": round(self.seconds, 3),
            "size_bytes": self.size_bytes,
            "precision": self.artifact.precision,
            "log": list(self.log),
            "report": self.report,
        }


@dataclass
class EvaluationSettings:
    """How ``optimize`` evaluates its result (see :func:`accelserve.evaluate.evaluate_models`)."""

    data: CalibrationSpec | CalibrationData = None  #: evaluation data; None: the calibration data (or random)
    labels: Any = None  #: array or path (.npy/.npz) aligned with the samples of the data
    metric: Any = None  #: MODULE:FN or callable (outputs, labels) -> float; default top-1 accuracy
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    speed: bool = True
    memory: bool = True
    max_seconds: float = 10.0
    report_prefix: str | Path | None = None  #: writes PREFIX.json/.md/.png; None: next to the output model
    gates: Any = None  #: accelserve.evaluate.gates.AccuracyGates checked on the evaluation (result.gates_passed)


@dataclass
class OptimizeResult:
    input: ModelArtifact
    output: ModelArtifact
    recipe: list[str]
    passes: list[PassRun]
    calibration: dict[str, Any] | None
    evaluation: Any = None  #: accelserve.evaluate.EvaluationReport when evaluated
    report_files: list[Path] = field(default_factory=list)
    #: the --accuracy-budget checked on the final model against the input, on the held-out data (None: no budget)
    budget_check: dict[str, Any] | None = None

    @property
    def gates(self) -> list[Any]:
        """Accuracy gate results (accelserve.evaluate.gates.AccuracyGateResult) of the evaluation."""
        return list(self.evaluation.gates) if self.evaluation is not None else []

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "gates_passed": self.gates_passed,
            "input": str(self.input.path),
            "output": self.output.describe(),
            "recipe": list(self.recipe),
            "calibration": self.calibration,
            "budget_check": self.budget_check,
            "passes": [p.to_dict() for p in self.passes],
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
        }

    def table(self) -> str:
        lines = [f"optimized {self.input.path} -> {self.output.path} (recipe: {','.join(self.recipe)})"]
        if self.calibration and self.calibration.get("random"):
            lines.append("  calibration: RANDOM data -- smoke only, accuracy figures mean nothing")
        elif self.calibration:
            lines.append(f"  calibration: {self.calibration['source']} ({self.calibration['feeds']} feeds)")
        for run in self.passes:
            lines.append(f"  [{run.name}] {run.seconds:.1f}s, precision {run.artifact.precision}")
            lines += [f"    {msg}" for msg in run.log]
        if self.budget_check:
            b = self.budget_check
            lines.append(f"  accuracy budget {b['budget']:g} ({b['metric']}): final model {b['error']:.4g} vs the input "
                         f"on {b['data']} ({b['samples']} samples): met")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Recipes and options


def parse_recipe(recipe: str | Sequence[str]) -> list[str]:
    """``"simplify,int8"`` or ``["simplify", "int8"]`` -> ``["simplify", "int8"]``."""
    items = recipe.split(",") if isinstance(recipe, str) else [str(r) for r in recipe]
    names = [r.strip() for r in items if r.strip()]
    if not names:
        raise InvalidInputError("the recipe is empty", hint="example: --recipe simplify,int8")
    return names


def load_pass_class(name: str) -> type[Pass]:
    cls = plugins.load("passes", name)
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PluginError(f"the passes plugin '{name}' is {cls!r}, not a subclass of accelserve.passes.Pass")
    return cls


def _normalize(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def split_options(names: Sequence[str], classes: Sequence[type[Pass]], options: dict[str, Any] | None
                  ) -> list[dict[str, Any]]:
    """Give each pass the options whose names are fields of its config class; reject options no pass has."""
    per_pass: list[dict[str, Any]] = [{} for _ in classes]
    for raw_key, value in (options or {}).items():
        key = _normalize(raw_key)
        takers = [i for i, cls in enumerate(classes) if key in cls.config_class.model_fields]
        if not takers:
            known = "; ".join(
                f"{n}: {', '.join(sorted(c.config_class.model_fields)) or 'no options'}" for n, c in zip(names, classes)
            )
            raise InvalidInputError(
                f"--{key.replace('_', '-')} is not an option of any pass in recipe '{','.join(names)}'",
                hint=f"options per pass: {known}",
            )
        for i in takers:
            per_pass[i][key] = value
    return per_pass


# --------------------------------------------------------------------------------------------------------------
# Running


def _write_atomically(artifact: ModelArtifact, output: Path) -> ModelArtifact:
    """Copy the model (and its external data) to ``output`` so that ``output`` is either the old file or the new
    one, never half-written."""
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        if len(artifact.files()) > 1:  # external data: re-save so the data file is named after the output
            save_onnx(artifact.load(), staging / output.name, external_data=True)
            staged = ModelArtifact(staging / output.name)
        else:
            staged = artifact.copy_to(staging, output.name)
        files = staged.files()
        for extra in files[1:]:  # external data first, the model file last
            target = output.parent / extra.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(extra, target)
        os.replace(files[0], output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelArtifact(output, artifact.source_framework, artifact.precision, artifact.history, artifact.metadata)


def _check_paths(model_path: Path, output: Path) -> None:
    if output.suffix != ".onnx":
        raise InvalidInputError(f"output {output} must be an .onnx file")
    if output.resolve() == model_path.resolve():
        raise InvalidInputError(f"output {output} is the input model; choose another path (the input is kept)")
    if output.exists() and output.is_dir():
        raise InvalidInputError(f"output {output} is a directory")


def optimize(
    model_path: str | Path,
    recipe: str | Sequence[str],
    output: str | Path,
    options: dict[str, Any] | None = None,
    calibration: CalibrationSpec | CalibrationData = None,
    evaluate: bool = True,
    *,
    random_calibration: bool = False,
    calibration_count: int | None = None,
    calibration_batch_size: int | None = None,
    evaluation: EvaluationSettings | None = None,
    work_dir: str | Path | None = None,
    keep_work_dir: bool = False,
) -> OptimizeResult:
    """Run the passes of ``recipe`` on ``model_path`` and write the result to ``output``.

    ``calibration`` is anything :func:`accelserve.calibration.load_calibration` takes (or loaded data);
    ``random_calibration`` makes random data instead (smoke only). With ``evaluate`` the evaluation harness compares
    the result with the input and writes ``<output>.report.{json,md,png}`` (or ``evaluation.report_prefix``).
    """
    model_path = Path(model_path)
    output = Path(output)
    names = parse_recipe(recipe)
    _check_paths(model_path, output)
    source = ModelArtifact.from_onnx(model_path, check=True)
    classes = [load_pass_class(n) for n in names]
    configs = split_options(names, classes, options)
    passes = [cls(cfg) for cls, cfg in zip(classes, configs)]  # typed configs are checked before anything runs
    gates = evaluation.gates if evaluation is not None else None
    if gates is not None and gates.enabled:
        if not evaluate:
            raise InvalidInputError("accuracy gates need the evaluation", hint="drop --no-evaluate")
        gates.check_inputs(has_labels=evaluation.labels is not None)

    needs_calibration = [n for n, cls in zip(names, classes) if getattr(cls, "requires_calibration", False)]
    calib: CalibrationData | None = None
    if calibration is not None or random_calibration:
        calib = load_calibration(calibration, model_path, random=random_calibration, count=calibration_count,
                                 batch_size=calibration_batch_size)
    elif needs_calibration:
        raise InvalidInputError(
            f"pass(es) {', '.join(needs_calibration)} need calibration data",
            hint="pass --calib DATA (.npz, a directory of .npy, or MODULE:FN), or --random-calib for a smoke test",
        )

    # an accuracy budget is decided on held-out data: the evaluation data when given (else each pass holds out
    # part of the calibration data), and the final model must meet it there, or nothing is written (exit 2)
    budgeted = [p for p in passes if getattr(p.config, "accuracy_budget", None) is not None]
    held_out: CalibrationData | None = None
    if budgeted and evaluation is not None and evaluation.data is not None:
        held_out = load_calibration(evaluation.data, model_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="accelserve-optimize-", dir=work_dir))
    runs: list[PassRun] = []
    budget_check = None
    try:
        artifact = source
        for i, (name, p) in enumerate(zip(names, passes)):
            stop.check()
            ctx = PassContext(work_dir=work / f"{i:02d}_{name}", calibration=calib, held_out=held_out)
            ctx.work_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            artifact = p.run(artifact, work / f"{i:02d}_{name}.onnx", ctx)
            runs.append(PassRun(name, p.config.model_dump(mode="json"), artifact, dict(ctx.report), list(ctx.log),
                                time.perf_counter() - started, artifact.size_bytes()))
        budget_check = _check_budget(source.path, artifact.path, runs, calib, held_out)
        stop.check()  # a stop request whose exception a library swallowed: no output
        final = _write_atomically(artifact, output)
    finally:
        if not keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)

    result = OptimizeResult(source, final, names, runs, calib.describe() if calib else None,
                            budget_check=budget_check)
    if evaluate:
        _evaluate(result, calib, evaluation or EvaluationSettings())
    return result


def _check_budget(input_path: Path, final_path: Path, runs: list[PassRun], calib: CalibrationData | None,
                  held_out: CalibrationData | None) -> dict[str, Any] | None:
    """The tightest accuracy budget of the recipe's quantization passes, checked on the final model against the
    input model on the held-out data the pass decided on; a miss raises AccuracyBudgetError (exit 2)."""
    from accelserve.passes.quantize_sensitivity import budget_data, model_error

    budgets = [(r.report["sensitivity"]["budget"], r.report["sensitivity"]["metric"], r.name) for r in runs
               if isinstance(r.report.get("sensitivity"), dict) and r.report["sensitivity"].get("budget") is not None]
    if not budgets or calib is None:
        return None
    budget, metric, name = min(budgets)
    held = budget_data(calib, held_out)
    error = model_error(input_path, final_path, held.feeds, metric)
    check = {"budget": budget, "metric": metric, "pass": name, "error": error, "data": held.source,
             "samples": held.samples, "met": error <= budget}
    if error > budget:
        raise AccuracyBudgetError(
            f"the accuracy budget {budget:g} ({metric}, pass {name}) is missed by the final model: error "
            f"{error:.4g} against the input model on {held.source} ({held.samples} samples); the output was not "
            "written",
            hint="raise --accuracy-budget, or check the passes after the quantization (they add error too)",
        )
    return check


def _evaluate(result: OptimizeResult, calib: CalibrationData | None, settings: EvaluationSettings) -> None:
    import json

    from accelserve.evaluate import evaluate_models, load_labels
    from accelserve.evaluate.report import atomic_write_bytes

    model_path = result.input.path
    if settings.data is not None:
        data = load_calibration(settings.data, model_path)
    elif calib is not None:
        data = calib
    else:
        data = load_calibration(None, model_path, random=True)
    labels = load_labels(settings.labels) if isinstance(settings.labels, (str, Path)) else settings.labels
    report = evaluate_models(
        model_path, [result.output.path], data, labels=labels, metric=settings.metric,
        batch_sizes=settings.batch_sizes, threads=settings.threads, speed=settings.speed, memory=settings.memory,
        names=[",".join(result.recipe)], max_seconds=settings.max_seconds,
    )
    if data is calib and calib is not None and not calib.is_random:
        report.data["note"] = "evaluated on the calibration data (pass separate evaluation data for an unbiased figure)"
    if result.budget_check is not None:
        report.data["accuracy_budget"] = (f"--accuracy-budget {result.budget_check['budget']:g} was decided and met on "
                                          f"{result.budget_check['data']}")
    result.evaluation = report
    if settings.gates is not None and settings.gates.enabled:
        report.apply_gates(settings.gates)
    prefix = Path(settings.report_prefix) if settings.report_prefix else result.output.path.with_suffix(".report")
    files = [
        atomic_write_bytes(prefix.with_name(prefix.name + ".json"),
                           json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str).encode()),
        atomic_write_bytes(prefix.with_name(prefix.name + ".md"), (result.table() + "\n\n" + report.markdown()).encode()),
    ]
    if report.batch_sizes:
        from accelserve.evaluate.report import plot_png

        files.append(plot_png(report, prefix.with_name(prefix.name + ".png")))
    result.report_files = files
