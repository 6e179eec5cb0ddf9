"""``simplify``: constant folding, dead-node/identity removal, shape-op cleanup and Conv+BatchNorm folding.

Done by onnxslim (graph fusions such as Conv+BN, Conv+Add/Mul, Pad+Conv, constant folding, dead-node and common
sub-expression elimination, shape-op cleanup), then ONNX Runtime's *basic* offline graph optimizations (constant
folding, redundant-node elimination, Conv/BN/Mul/Add fusions), whose output uses standard ONNX ops only. With
``target="ort"`` ONNX Runtime's *extended* level runs instead, which writes ORT-only fused ops (FusedConv,
FusedGemm, ...): that model runs only on ONNX Runtime and cannot be quantized afterwards.

The result is checked against the input on a few feeds (FP32 tolerances); a mismatch is an error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from accelserve._lazy import require
from accelserve.artifact import ModelArtifact
from accelserve.calibration import CalibrationData, load_calibration
from accelserve.errors import OptimizationError
from accelserve.onnx_io import TWO_GB, read_onnx, save_onnx
from accelserve.passes.base import Pass, PassConfig, PassContext


class SimplifyConfig(PassConfig):
    #: "portable" (also "ort-cpu"/"tensorrt", the quantization targets): standard ONNX ops only.
    #: "ort": allow ONNX Runtime-only fused ops (extended offline optimization).
    target: Literal["portable", "ort", "ort-cpu", "tensorrt"] = "portable"
    #: "auto": onnxslim, then ONNX Runtime offline optimization; or one of them alone
    backend: Literal["auto", "onnxslim", "ort"] = "auto"
    #: onnxslim fusion patterns to skip (e.g. ["FusionPadConv"])
    skip_fusions: list[str] = Field(default_factory=list)
    #: compare the result with the input on a few feeds (FP32 tolerances)
    verify: bool = True


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run_onnxslim(model: onnx.ModelProto, skip_fusions: list[str]) -> onnx.ModelProto:
    # onnxslim imports onnxruntime inside a bare `except:` (utils.is_onnxruntime_available), which swallowed a
    # Ctrl-C/SIGTERM arriving during that import: the command then ran to the end. Imported here first, outside it.
    import onnxruntime  # noqa: F401

    onnxslim = require("onnxslim", "the simplify pass")
    kwargs = {"skip_fusion_patterns": skip_fusions} if skip_fusions else {}
    try:
        slimmed = onnxslim.slim(model, **kwargs)
    except Exception as exc:
        raise OptimizationError(f"onnxslim failed on the model: {type(exc).__name__}: {exc}",
                                hint="retry with --set backend=ort, or skip the offending fusion with skip_fusions") from exc
    if slimmed is None:
        raise OptimizationError("onnxslim returned no model")
    return slimmed


def run_ort_offline(src: Path, dst: Path, *, extended: bool) -> onnx.ModelProto:
    """Let ONNX Runtime optimize ``src`` offline and write the optimized graph to ``dst``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if extended else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    if src.stat().st_size >= TWO_GB // 2:
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OptimizationError(f"ONNX Runtime could not optimize the model: {str(exc).strip()}") from exc
    return read_onnx(dst)


def check_same_outputs(original: Path, simplified: Path, calibration: CalibrationData | None, what: str) -> None:
    """Raise OptimizationError when ``simplified`` differs from ``original`` beyond FP32 tolerances."""
    from accelserve.evaluate._ort import run_model
    from accelserve.verify import compare_arrays, tolerance_for

    data = calibration if calibration is not None else load_calibration(None, original, random=True, count=2)
    feeds = data.feeds()[:2]
    tol = tolerance_for("fp32", atol=1e-3, rtol=1e-3)
    for i, (want, got) in enumerate(zip(run_model(original, feeds), run_model(simplified, feeds))):
        for name, ref in want.items():
            if name not in got:
                raise OptimizationError(f"{what} lost output '{name}'")
            cmp = compare_arrays(name, got[name], ref, tol, sample=i)
            if not cmp.passed:
                raise OptimizationError(
                    f"{what} changed output '{name}' on feed {i}: max abs error {cmp.max_abs_error:.3g}, "
                    f"cosine {cmp.cosine:.6f}",
                    hint="retry with another backend (--set backend=onnxslim or backend=ort), or report the model",
                )


class SimplifyPass(Pass[SimplifyConfig]):
    name = "simplify"
    config_class = SimplifyConfig

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        original = model.load()
        before = op_counts(original)
        current = original
        steps = []
        if cfg.backend in ("auto", "onnxslim"):
            current = run_onnxslim(current, cfg.skip_fusions)
            steps.append("onnxslim")
        if cfg.backend in ("auto", "ort"):
            staged = context.work_dir / "before_ort.onnx"
            save_onnx(current, staged)
            extended = cfg.target == "ort"
            current = run_ort_offline(staged, context.work_dir / "ort_optimized.onnx", extended=extended)
            steps.append("onnxruntime-" + ("extended (ORT-only ops allowed)" if extended else "basic"))
        compat = save_onnx(current, output)
        if cfg.verify:
            check_same_outputs(model.path, output, context.calibration, "simplify")
        after = op_counts(current)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        added = {op: after[op] - before.get(op, 0) for op in after if after[op] > before.get(op, 0)}
        context.report.update({
            "steps": steps,
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "removed_ops": removed,
            "added_ops": added,
            "portable": cfg.target != "ort",
            "compatibility_changes": compat.changes,
        })
        context.log.append(
            f"{' + '.join(steps)}: {sum(before.values())} -> {sum(after.values())} nodes"
            + (f"; removed {', '.join(f'{v} {k}' for k, v in sorted(removed.items()))}" if removed else "")
            + (f"; added {', '.join(f'{v} {k}' for k, v in sorted(added.items()))}" if added else "")
        )
        if cfg.verify:
            context.log.append("outputs match the input model (FP32 tolerances)")
        return model.derive(output, self.name)
