"""``int8``: static post-training quantization to a Q/DQ graph.

Calibration statistics come from :mod:`quantize_calibrate` (cached), the Q/DQ layout from :mod:`quantize_layout`
(per target and CPU), and the graph rewrite from ONNX Runtime's ``QDQQuantizer`` with typed options only.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import onnx
from pydantic import Field, model_validator

from accelserve.artifact import ModelArtifact
from accelserve.calibration import SMOKE_ONLY, CalibrationData
from accelserve.errors import OptimizationError
from accelserve.onnx_io import model_opset, save_onnx
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.quantize_calibrate import (
    Method,
    collect_statistics,
    compute_ranges,
    default_cache_dir,
)
from accelserve.passes.quantize_layout import (
    QuantLayout,
    Target,
    choose_layout,
    compute_nodes,
    float_nodes_report,
    name_nodes,
    nodes_to_keep_float,
    refuse_quantized,
    sentinel_nodes,
    sort_topologically,
)
from accelserve.passes.quantize_sensitivity import (
    BudgetData,
    SensitivityMetric,
    SensitivityMode,
    budget_data,
    sensitivity_search,
)


class Int8Config(PassConfig):
    target: Target = "ort-cpu"
    method: Method = "minmax"
    percentile: float = Field(99.999, gt=0, le=100)  #: for method=percentile: kept share of |x|, in percent
    entropy_bins: int = Field(2048, ge=256)  #: histogram bins for method=entropy
    entropy_quantized_bins: int = Field(128, ge=16)
    percentile_bins: int = Field(2048, ge=128)
    per_channel: bool = True  #: per-output-channel weight scales
    reduce_range: bool | Literal["auto"] = "auto"  #: 7-bit weights; auto: when the CPU's u8 x s8 kernels saturate
    #: auto: from the target (and CPU); int8 is symmetric; int8-asymmetric (ort-cpu) has zero points
    activation_type: Literal["auto", "uint8", "int8", "int8-asymmetric"] = "auto"
    op_types: list[str] | None = None  #: op types to quantize; None: the target's placement
    exclude_nodes: list[str] = Field(default_factory=list)  #: node names kept in float
    exclude_op_types: list[str] = Field(default_factory=list)  #: op types kept in float
    keep_first: int = Field(0, ge=0)  #: first N Conv/Gemm/MatMul layers kept in float
    keep_last: int = Field(0, ge=0)  #: last N Conv/Gemm/MatMul layers kept in float
    #: nodes touching a tensor whose calibrated |range| reaches this stay in float (mask sentinels); None: off
    sentinel_threshold: float | None = Field(1e4, gt=0)
    calibration_cache: str | None = None  #: directory for cached statistics; None: ~/.cache/accelserve/calibration
    use_calibration_cache: bool = True
    sensitivity: bool = False  #: rank layers by error contribution (also done when accuracy_budget is set)
    sensitivity_mode: SensitivityMode = "one-at-a-time"
    sensitivity_metric: SensitivityMetric = "auto"
    sensitivity_feeds: int = Field(4, ge=1)  #: calibration feeds used to measure errors
    accuracy_budget: float | None = Field(None, ge=0)  #: max error (sensitivity_metric units); worst layers excluded

    @model_validator(mode="after")
    def _tensorrt_is_symmetric(self) -> "Int8Config":
        if self.target == "tensorrt" and self.activation_type in ("uint8", "int8-asymmetric"):
            raise ValueError(f"target tensorrt takes symmetric int8 activations, not {self.activation_type}")
        return self


_QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def quantize_qdq(model: onnx.ModelProto, ranges: Any, layout: QuantLayout, *, exclude: list[str],
                 only: list[str] | None = None) -> onnx.ModelProto:
    """Rewrite a (shape-inferred, named) float model into Q/DQ form with ONNX Runtime's QDQQuantizer."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    quantizer = QDQQuantizer(
        copy.deepcopy(model),
        layout.per_channel,
        layout.reduce_range,
        getattr(QuantType, _QUANT_TYPES[layout.weight_type]),
        getattr(QuantType, _QUANT_TYPES[layout.activation_type]),
        ranges,
        list(only or []),
        list(exclude),
        list(layout.op_types),
        dict(layout.extra_options),
    )
    try:
        quantized = quantizer.quantize_model()
    except Exception as exc:
        raise OptimizationError(f"ONNX Runtime's quantizer failed on this model: {type(exc).__name__}: {exc}",
                                hint="exclude the failing op types (--exclude-op-types) or nodes") from exc
    sort_topologically(quantized)
    return quantized


def prepare_float_model(model: onnx.ModelProto, work_dir: Path) -> onnx.ModelProto:
    """Named nodes, opset >= 13 (per-channel Q/DQ), shape inference (ONNX Runtime's helper)."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    name_nodes(model)
    if model_opset(model) < 13:
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as exc:
            raise OptimizationError(f"quantization needs opset >= 13; converting opset {model_opset(model)} "
                                    f"failed: {exc}", hint="re-export the model with --opset 13 or newer") from exc
    path = work_dir / "float_named.onnx"
    save_onnx(model, path, external_data=model.ByteSize() > 1_500_000_000)
    return load_model_with_shape_infer(path)


class Int8StaticPass(Pass[Int8Config]):
    name = "int8"
    config_class = Int8Config
    requires_calibration: ClassVar[bool] = True
    search_space: ClassVar[dict[str, list[Any]]] = {
        "method": ["minmax", "entropy", "percentile"], "per_channel": [True, False],
        "activation_type": ["auto", "int8-asymmetric"],
    }

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        calib: CalibrationData | None = context.calibration
        if calib is None:
            raise OptimizationError("the int8 pass needs calibration data",
                                    hint="pass --calib DATA, or --random-calib for a smoke test")
        source = model.load()
        refuse_quantized(source)
        held: BudgetData | None = None
        if cfg.accuracy_budget is not None:  # decided on held-out data; statistics from the rest
            held = budget_data(calib, context.held_out)
            calib = held.calibration
        floating = prepare_float_model(source, context.work_dir)
        cache_dir = None
        if cfg.use_calibration_cache:
            cache_dir = Path(cfg.calibration_cache) if cfg.calibration_cache else default_cache_dir()
        stats = collect_statistics(floating, model.sha256(), calib, context.work_dir, entropy_bins=cfg.entropy_bins,
                                   percentile_bins=cfg.percentile_bins, cache_dir=cache_dir,
                                   histograms=cfg.method != "minmax")
        ranges = compute_ranges(stats, cfg.method, percentile=cfg.percentile,
                                entropy_quantized_bins=cfg.entropy_quantized_bins)
        layout = choose_layout(cfg.target, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                               activation_type=cfg.activation_type, op_types=cfg.op_types)
        excluded, why = nodes_to_keep_float(floating, exclude_nodes=cfg.exclude_nodes,
                                            exclude_op_types=cfg.exclude_op_types, keep_first=cfg.keep_first,
                                            keep_last=cfg.keep_last)
        if cfg.sentinel_threshold is not None:
            for node, reason in sentinel_nodes(floating, stats.minmax, cfg.sentinel_threshold).items():
                if node not in why:
                    excluded.append(node)
                    why[node] = reason
        sensitivity = None
        if cfg.sensitivity or cfg.accuracy_budget is not None:
            sensitivity = self._sensitivity(floating, model.path, ranges, layout, excluded, calib, context, held)
            for node in sensitivity.excluded_for_budget:
                excluded.append(node)
                why[node] = f"kept in float to meet the accuracy budget {cfg.accuracy_budget:g}"
        quantized = quantize_qdq(floating, ranges, layout, exclude=excluded)
        compat = save_onnx(quantized, output)

        placement = float_nodes_report(floating, quantized, layout.op_types, why, set(stats.tensors))
        context.report.update({
            "method": cfg.method,
            "target": cfg.target,
            "layout": layout.to_dict(),
            "calibration": {**calib.describe(), "statistics_from_cache": stats.from_cache,
                            "statistics_key": stats.key, "tensors": len(stats.tensors)},
            "quantized_nodes": len(placement["quantized_nodes"]),
            "folded_activations": placement["folded_activations"],
            "left_in_float": placement["left_in_float"],
            "sensitivity": sensitivity.to_dict() if sensitivity else None,
            "compatibility_changes": compat.changes,
        })
        log = context.log
        if calib.is_random:
            log.append(f"calibration: {SMOKE_ONLY}")
        log.append(f"layout {layout.name} for {cfg.target}: " + "; ".join(layout.reasons))
        log.append(f"calibration {cfg.method} on {len(calib)} feeds"
                   + (" (statistics reused from cache)" if stats.from_cache else ""))
        log.append(f"quantized {len(placement['quantized_nodes'])} nodes, folded "
                   f"{len(placement['folded_activations'])} activation(s) into Q/DQ ranges; "
                   f"{len(placement['left_in_float'])} left in float")
        for item in placement["left_in_float"][:20]:
            log.append(f"  float: {item['node']} ({item['op_type']}): {item['reason']}")
        if len(placement["left_in_float"]) > 20:
            log.append(f"  ... {len(placement['left_in_float']) - 20} more in the report")
        if sensitivity:
            log += sensitivity.table()
            if cfg.accuracy_budget is not None:
                log.append(f"accuracy budget {cfg.accuracy_budget:g}: kept {len(sensitivity.excluded_for_budget)} "
                           f"layer(s) in float, error {sensitivity.final_error:.4g} on {sensitivity.decided_on} "
                           f"({sensitivity.samples} samples)")
        return model.derive(output, self.name, precision="int8")

    def _sensitivity(self, floating: onnx.ModelProto, float_path: Path, ranges: Any, layout: QuantLayout,
                     excluded: list[str], calib: CalibrationData, context: PassContext, held: BudgetData | None):
        cfg = self.config
        layers = [(n.name, n.op_type) for n in compute_nodes(floating)
                  if n.name not in excluded and n.op_type in layout.op_types]
        feeds = held.feeds if held else calib.feeds()[: cfg.sensitivity_feeds]
        where = held.source if held else f"the first {len(feeds)} calibration feeds"
        return sensitivity_search(
            float_path, lambda only, exclude: quantize_qdq(floating, ranges, layout, exclude=exclude, only=only),
            layers, excluded, feeds, metric=cfg.sensitivity_metric, mode=cfg.sensitivity_mode,
            budget=cfg.accuracy_budget, probe_path=context.work_dir / "probe.onnx", decided_on=where,
        )
