"""``fp16``: float16 weights and activations, model I/O kept in float32 by default, numerically sensitive ops
left in float32 (mixed precision).

Conversion is ONNX Runtime's ``convert_float_to_float16``. Kept in float32: op types without float16 kernels
(ONNX Runtime's default block list), the reductions/exponentials/normalizations that torch.autocast also runs in
float32, and -- with calibration data -- every node whose output exceeds ``overflow_fraction`` of the float16
range (65504) on that data. With calibration data, the result is compared with the float32 model (FP16
tolerances) and a mismatch is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from pydantic import Field

from accelserve.artifact import ModelArtifact
from accelserve.errors import OptimizationError
from accelserve.onnx_io import save_onnx
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.quantize_layout import name_nodes, refuse_quantized, sort_topologically

FP16_MAX = 65504.0
#: numerically sensitive ops kept in float32 (after torch.autocast's float32 list)
SENSITIVE_OPS = ("Exp", "Log", "Pow", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceProd",
                 "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "Sqrt", "Reciprocal",
                 "LayerNormalization", "InstanceNormalization", "GroupNormalization", "CumSum", "Range", "TopK")


class Fp16Config(PassConfig):
    keep_io_types: bool = True  #: model inputs/outputs stay float32
    keep_sensitive_ops: bool = True  #: keep SENSITIVE_OPS in float32
    block_op_types: list[str] = Field(default_factory=list)  #: further op types kept in float32
    block_nodes: list[str] = Field(default_factory=list)  #: node names kept in float32
    overflow_fraction: float = Field(0.5, gt=0, le=1)  #: data-driven fallback threshold (fraction of 65504)
    verify: bool = True  #: compare with the float32 model on calibration data (when given)


def overflowing_nodes(model_path: Path, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], limit: float
                      ) -> list[str]:
    """Nodes that produce or read a float tensor reaching ``limit`` in magnitude (or non-finite) on ``feeds``: such
    a value cannot be stored in float16, so both sides of the tensor stay float32."""
    import onnxruntime as ort

    producers = {o: n.name for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(augmented)
    existing = {o.name for o in inferred.graph.output}
    for vi in inferred.graph.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in existing:
            inferred.graph.output.append(vi)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(inferred.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    hot: dict[str, None] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            arr = np.asarray(value)
            if arr.dtype == np.float32 and arr.size and (not np.isfinite(arr).all() or np.abs(arr).max() >= limit):
                for node in ([producers[name]] if name in producers else []) + consumers.get(name, []):
                    hot[node] = None
    return list(hot)


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove float32 -> float16 -> float32 Cast pairs (in place); returns how many float16 hops were removed.

    ONNX Runtime's converter puts casts on every edge of a float32-kept node, also between two kept nodes, so a
    value that overflows float16 would still pass through float16 there."""
    graph_outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    removed: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    for node in model.graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT16 or node.output[0] in graph_outputs:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(cast_to(u) != onnx.TensorProto.FLOAT or u.output[0] in graph_outputs for u in users):
            continue
        src = rename.get(node.input[0], node.input[0])
        for user in users:
            rename[user.output[0]] = src
            removed.append(user)
        removed.append(node)
    if not removed:
        return 0
    gone = {id(n) for n in removed}
    kept = [n for n in model.graph.node if id(n) not in gone]
    for node in kept:
        for k, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[k] = name
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return sum(1 for n in removed if cast_to(n) == onnx.TensorProto.FLOAT16)


class Fp16Pass(Pass[Fp16Config]):
    name = "fp16"
    config_class = Fp16Config

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        cfg = self.config
        source = model.load()
        refuse_quantized(source)
        name_nodes(source)
        block_ops = sorted({*DEFAULT_OP_BLOCK_LIST, *(SENSITIVE_OPS if cfg.keep_sensitive_ops else ()),
                            *cfg.block_op_types})
        block_nodes = list(cfg.block_nodes)
        feeds = context.calibration.feeds() if context.calibration is not None else []
        overflow = overflowing_nodes(model.path, source, feeds[:4], cfg.overflow_fraction * FP16_MAX) if feeds else []
        block_nodes += [n for n in overflow if n not in block_nodes]
        try:
            converted = convert_float_to_float16(source, keep_io_types=cfg.keep_io_types, op_block_list=block_ops,
                                                 node_block_list=block_nodes)
        except Exception as exc:
            raise OptimizationError(f"float16 conversion failed: {type(exc).__name__}: {exc}") from exc
        hops = drop_cast_round_trips(converted)
        sort_topologically(converted)  # the converter appends its Casts at the end of the node list
        compat = save_onnx(converted, output)
        kept = [n for n in source.graph.node if n.op_type in block_ops or n.name in block_nodes]
        context.report.update({
            "keep_io_types": cfg.keep_io_types,
            "kept_float32_nodes": [{"node": n.name, "op_type": n.op_type,
                                    "reason": "overflows float16 on calibration data" if n.name in overflow
                                    else "excluded by name" if n.name in cfg.block_nodes
                                    else "numerically sensitive or no float16 kernel"} for n in kept],
            "data_driven_fallback": bool(feeds),
            "cast_round_trips_removed": hops,
            "compatibility_changes": compat.changes,
        })
        context.log.append(f"float16 with float32 I/O: {'yes' if cfg.keep_io_types else 'no'}; {len(kept)} node(s) "
                           f"kept in float32 ({len(overflow)} for overflow on calibration data)")
        if cfg.verify and feeds:
            self._verify(model.path, output, feeds[:4], context)
        return model.derive(output, self.name, precision="fp16")

    @staticmethod
    def _verify(float_path: Path, fp16_path: Path, feeds: list[dict[str, np.ndarray]], context: PassContext) -> None:
        from accelserve.evaluate._ort import run_model
        from accelserve.verify import compare_arrays, tolerance_for

        tol = tolerance_for("fp16")
        worst = 1.0
        for i, (want, got) in enumerate(zip(run_model(float_path, feeds), run_model(fp16_path, feeds))):
            for name, ref in want.items():
                cmp = compare_arrays(name, np.asarray(got[name], dtype=np.float32), ref, tol, sample=i)
                worst = min(worst, cmp.cosine)
                finite = bool(np.isfinite(got[name]).all()) or not np.isfinite(ref).all()
                if cmp.cosine < tol.min_cosine or not finite:
                    problem = "has NaN/Inf values" if not finite else (
                        f"differs from float32: cosine {cmp.cosine:.5f} (< {tol.min_cosine}), "
                        f"max abs error {cmp.max_abs_error:.3g}")
                    raise OptimizationError(
                        f"the float16 model's output '{name}' {problem} on feed {i}",
                        hint="keep more ops in float32 with --set block_op_types='[\"Op\"]' or block_nodes",
                    )
        context.log.append(f"float16 outputs match float32 on calibration data (worst cosine {worst:.6f})")
