"""``int8-dynamic``: weight-only INT8 for MatMul-heavy (transformer) models.

Weights of MatMuls with a constant B are stored as INT8; activations are quantized to UINT8 at run time by
ONNX Runtime (DynamicQuantizeLinear + MatMulInteger, fused to DynamicQuantizeMatMul). On x86 CPUs without VNNI,
ONNX Runtime's u8 x s8 kernels saturate with full-range INT8 weights; the pass probes the local kernels
(``quantize_cpu.u8s8_saturates``) and then uses 7-bit weights (``reduce_range``) or UINT8 weights, and says so.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import onnx
from pydantic import Field

from accelserve.artifact import ModelArtifact
from accelserve.errors import OptimizationError
from accelserve.onnx_io import save_onnx
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.quantize_cpu import cpu_features, u8s8_saturates
from accelserve.passes.quantize_layout import name_nodes, refuse_quantized, sort_topologically
from accelserve.passes.quantize_sensitivity import (
    SensitivityMetric,
    SensitivityMode,
    budget_data,
    sensitivity_search,
)


class Int8DynamicConfig(PassConfig):
    #: op types to quantize (ONNX Runtime's dynamic quantizer supports MatMul, Gather, Attention, LSTM, Conv, ...)
    #: Gather quantizes embedding tables (MiniLM: 58.6 -> 22.8 MB at the same embedding cosine, bench/)
    op_types: list[str] = Field(default_factory=lambda: ["MatMul", "Gather"])
    #: per-column weight scales; on all-MiniLM-L6-v2 embedding cosine 0.966 -> 0.993 at the same speed (bench/)
    per_channel: bool = True
    weight_type: Literal["auto", "int8", "uint8"] = "auto"
    reduce_range: bool | Literal["auto"] = "auto"
    #: what "auto" does on a CPU whose u8 x s8 kernels saturate: 7-bit INT8 weights, or UINT8 weights
    saturation_fix: Literal["reduce_range", "uint8_weights"] = "reduce_range"
    exclude_nodes: list[str] = Field(default_factory=list)
    sensitivity: bool = False  #: rank the quantized nodes by error contribution (needs calibration data)
    sensitivity_mode: SensitivityMode = "one-at-a-time"
    sensitivity_metric: SensitivityMetric = "auto"
    sensitivity_feeds: int = Field(4, ge=1)
    accuracy_budget: float | None = Field(None, ge=0)  #: keep the worst nodes in float until the error is within


def quantize_integer_ops(floating: onnx.ModelProto, cfg: Int8DynamicConfig, weight_type: str, reduce_range: bool,
                         *, exclude: list[str], only: list[str] | None = None) -> onnx.ModelProto:
    """ONNX Runtime's dynamic (IntegerOps) quantizer on a copy of the shape-inferred model, sorted."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode

    quantizer = ONNXQuantizer(
        copy.deepcopy(floating), cfg.per_channel, reduce_range, QuantizationMode.IntegerOps, False,
        QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8, QuantType.QUInt8, None, list(only or []),
        list(exclude), list(cfg.op_types), {"MatMulConstBOnly": True},
    )
    try:
        quantized = quantizer.quantize_model()
    except Exception as exc:
        raise OptimizationError(f"ONNX Runtime's dynamic quantizer failed: {type(exc).__name__}: {exc}",
                                hint="limit --op-types to MatMul, or exclude the failing nodes") from exc
    sort_topologically(quantized)
    return quantized


def choose_weights(cfg: Int8DynamicConfig) -> tuple[str, bool, str]:
    """(weight type, reduce_range, why) for this CPU."""
    auto_type, auto_rr = cfg.weight_type == "auto", cfg.reduce_range == "auto"
    weight_type = "int8" if auto_type else cfg.weight_type
    reduce_range = False if auto_rr else bool(cfg.reduce_range)
    if not (auto_type or auto_rr):
        return weight_type, reduce_range, "weight type and reduce_range as given"
    if not cpu_features().x86:
        return weight_type, reduce_range, f"{cpu_features().machine}: no u8 x s8 saturation issue"
    if not u8s8_saturates():
        return weight_type, reduce_range, "u8 x s8 kernels do not saturate on this CPU (probe): full-range INT8 weights"
    if cfg.saturation_fix == "uint8_weights" and auto_type:
        return "uint8", reduce_range, "u8 x s8 kernels saturate on this CPU (no VNNI): UINT8 weights (u8 x u8 kernels)"
    if auto_rr:
        return weight_type, True, "u8 x s8 kernels saturate on this CPU (no VNNI): 7-bit INT8 weights (reduce_range)"
    return weight_type, reduce_range, "u8 x s8 kernels saturate on this CPU, but reduce_range was set explicitly"


class Int8DynamicPass(Pass[Int8DynamicConfig]):
    name = "int8-dynamic"
    config_class = Int8DynamicConfig
    search_space: ClassVar[dict[str, list[Any]]] = {"per_channel": [True, False]}

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

        cfg = self.config
        source = model.load()
        refuse_quantized(source)
        name_nodes(source)
        named = context.work_dir / "float_named.onnx"
        save_onnx(source, named, external_data=source.ByteSize() > 1_500_000_000)
        floating = load_model_with_shape_infer(named)
        weight_type, reduce_range, why = choose_weights(cfg)
        float_weights = {i.name for i in floating.graph.initializer
                         if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
        before = [n for n in floating.graph.node  # candidates: nodes of these types with a float constant input
                  if n.op_type in cfg.op_types and any(i in float_weights for i in n.input)]
        excluded = list(cfg.exclude_nodes)
        sensitivity = None
        if cfg.sensitivity or cfg.accuracy_budget is not None:
            if context.calibration is None:
                raise OptimizationError("sensitivity analysis and --accuracy-budget need data to measure errors on",
                                        hint="pass --calib DATA")
            layers = [(n.name, n.op_type) for n in before if n.name not in excluded]
            if cfg.accuracy_budget is not None:  # decided on held-out data (no statistics to take from it here)
                held = budget_data(context.calibration, context.held_out)
                feeds, where = held.feeds, held.source
            else:
                feeds = context.calibration.feeds()[: cfg.sensitivity_feeds]
                where = f"the first {len(feeds)} calibration feeds"
            sensitivity = sensitivity_search(
                named, lambda only, exclude: quantize_integer_ops(floating, cfg, weight_type, reduce_range,
                                                                  exclude=exclude, only=only),
                layers, excluded, feeds, metric=cfg.sensitivity_metric, mode=cfg.sensitivity_mode,
                budget=cfg.accuracy_budget, probe_path=context.work_dir / "probe.onnx", decided_on=where,
            )
            excluded += sensitivity.excluded_for_budget
        quantized = quantize_integer_ops(floating, cfg, weight_type, reduce_range, exclude=excluded)
        compat = save_onnx(quantized, output)
        integer_ops = {"MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "DynamicQuantizeLSTM", "QAttention",
                       "MatMulIntegerToFloat", "QEmbedLayerNormalization"}
        q_float_weights = {i.name for i in quantized.graph.initializer
                           if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
        q_nodes = {n.name: n for n in quantized.graph.node}
        # a candidate stays float when a node of its name still reads a float weight (quantized MatMuls are
        # replaced; a quantized Gather keeps its name but reads an INT8 table)
        float_left = [n for n in before
                      if n.name in q_nodes and any(i in q_float_weights for i in q_nodes[n.name].input)]
        context.report.update({
            "weight_type": weight_type,
            "reduce_range": reduce_range,
            "why": why,
            "per_channel": cfg.per_channel,
            "integer_nodes": sum(1 for n in quantized.graph.node if n.op_type in integer_ops),
            "left_in_float": [{"node": n.name, "op_type": n.op_type,
                               "reason": "excluded by name" if n.name in cfg.exclude_nodes
                               else "kept in float to meet the accuracy budget" if n.name in excluded
                               else "not quantizable (e.g. MatMul without a constant weight)"} for n in float_left],
            "sensitivity": sensitivity.to_dict() if sensitivity else None,
            "compatibility_changes": compat.changes,
        })
        context.log.append(f"weights {weight_type.upper()}{' (7-bit, reduce_range)' if reduce_range else ''}: {why}")
        context.log.append(f"quantized {len(before) - len(float_left)} of {len(before)} {'/'.join(cfg.op_types)} "
                           f"nodes; {len(float_left)} left in float")
        if sensitivity:
            context.log += sensitivity.table()
            if cfg.accuracy_budget is not None:
                context.log.append(f"accuracy budget {cfg.accuracy_budget:g}: kept "
                                   f"{len(sensitivity.excluded_for_budget)} node(s) in float, error "
                                   f"{sensitivity.final_error:.4g} on {sensitivity.decided_on} "
                                   f"({sensitivity.samples} samples)")
        return model.derive(output, self.name, precision="int8")

