"""Unstructured weight pruning: ``prune-magnitude`` (target sparsity, per-layer or global threshold) and
``prune-2:4`` (2 non-zeros in every 4 weights along the input dimension, the pattern of TensorRT's sparse tensor
cores).

Dense runtimes compute zeros like any other value, so neither makes a model faster on ONNX Runtime CPU; the gain is
the compressed size (reported zipped and sparse-encoded) and, for 2:4, speed on GPUs with sparse tensor cores once
TensorRT builds with sparse weights enabled (the model is marked for that).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
from pydantic import Field, field_validator

from accelserve.artifact import ModelArtifact
from accelserve.errors import InternalError, OptimizationError
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.pruning.data import BUDGET_HELP, Scorer, load_samples
from accelserve.passes.pruning.graph import (
    GraphIndex,
    attr,
    load_indexed,
    replace_initializer,
    validate_and_save,
)
from accelserve.passes.pruning.schedule import budget_schedule

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: model metadata keys a TensorRT build step reads
SPARSITY_KEY = "accelserve.sparsity"
TRT_SPARSE_KEY = "accelserve.tensorrt.sparse_weights"


@dataclass(frozen=True)
class Weight:
    node: str
    name: str  #: the initializer
    input_axis: int  #: the axis of the weight's input channels (the 2:4 pattern runs along it)


def prunable_weights(index: GraphIndex, nodes: list[str], exclude: list[str]) -> list[Weight]:
    """Constant float weights of Conv/Gemm/MatMul nodes (each initializer once), honouring nodes/exclude."""
    out: list[Weight] = []
    seen: set[str] = set()
    for node in index.nodes:
        if node.op_type not in WEIGHT_OPS or (nodes and node.name not in nodes) or node.name in exclude:
            continue
        w = index.input_const(node, 1)
        if w is None or not np.issubdtype(w.dtype, np.floating) or w.ndim < 2 or node.input[1] in seen:
            continue
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "Gemm":
            axis = 1 if int(attr(node, "transB", 0)) else 0
        else:
            if w.ndim != 2:
                continue
            axis = 0
        seen.add(node.input[1])
        out.append(Weight(node.name, node.input[1], axis))
    return out


def magnitude_masks(values: dict[str, np.ndarray], sparsity: float | dict[str, float],
                    scope: Literal["layer", "global"]) -> dict[str, np.ndarray]:
    """Keep-masks zeroing the smallest-magnitude weights: ``sparsity`` of each tensor, or of all of them together
    (one global threshold)."""
    if scope == "global":
        flat = np.concatenate([np.abs(v).ravel() for v in values.values()]) if values else np.zeros(0)
        k = int(np.floor(float(sparsity) * flat.size)) if not isinstance(sparsity, dict) else 0
        order = np.argsort(flat, kind="stable")
        keep = np.ones(flat.size, dtype=bool)
        keep[order[:k]] = False
        masks, start = {}, 0
        for name, v in values.items():
            masks[name] = keep[start:start + v.size].reshape(v.shape)
            start += v.size
        return masks
    masks = {}
    for name, v in values.items():
        s = sparsity[name] if isinstance(sparsity, dict) else sparsity
        k = int(np.floor(s * v.size))
        keep = np.ones(v.size, dtype=bool)
        keep[np.argsort(np.abs(v).ravel(), kind="stable")[:k]] = False
        masks[name] = keep.reshape(v.shape)
    return masks


def two_four_mask(w: np.ndarray, axis: int) -> np.ndarray:
    """Keep the 2 largest-magnitude weights of every 4 consecutive along ``axis`` (its size must divide by 4)."""
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    rank = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1)
    keep = (rank < 2).reshape(moved.shape)
    return np.moveaxis(keep, -1, axis)


def is_two_four(w: np.ndarray, axis: int) -> bool:
    """Whether at most 2 of every 4 consecutive weights along ``axis`` are non-zero."""
    moved = np.moveaxis(w, axis, -1)
    if moved.shape[-1] % 4:
        return False
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    return bool(((groups != 0).sum(axis=-1) <= 2).all())


def sparse_encoded_bytes(values: dict[str, np.ndarray]) -> int:
    """Bytes of the weights stored sparsely: non-zero values plus a 1-bit-per-weight mask (the encoding of
    NVIDIA's 2:4 format and of simple bitmask formats)."""
    return int(sum(np.count_nonzero(v) * v.dtype.itemsize + (v.size + 7) // 8 for v in values.values()))


def size_report(before: onnx.ModelProto, after: onnx.ModelProto, pruned: dict[str, np.ndarray]) -> dict[str, Any]:
    """File size, zipped size and sparse-encoded size of the model before and after."""
    raw_before, raw_after = before.SerializeToString(), after.SerializeToString()
    dense = sum(v.nbytes for v in pruned.values())
    return {
        "file_bytes": {"before": len(raw_before), "after": len(raw_after)},
        "zipped_bytes": {"before": len(zlib.compress(raw_before, 6)), "after": len(zlib.compress(raw_after, 6))},
        "sparse_encoded_bytes": {"before": len(raw_before),
                                 "after": len(raw_after) - dense + sparse_encoded_bytes(pruned)},
    }


def _sparsity_of(values: dict[str, np.ndarray]) -> float:
    total = sum(v.size for v in values.values())
    return float(sum(v.size - np.count_nonzero(v) for v in values.values()) / total) if total else 0.0


class _WeightPass:
    """Shared steps: prepare, pick the weights, apply masks, validate, save and report."""

    name: str

    @staticmethod
    def apply(model: onnx.ModelProto, masks: dict[str, np.ndarray], index: GraphIndex) -> tuple[onnx.ModelProto, dict]:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = {}
        for name, keep in masks.items():
            values[name] = np.where(keep, index.const(name), 0).astype(index.const(name).dtype)
            replace_initializer(out, name, values[name])
        return out, values

    def finish(self, model: ModelArtifact, source: onnx.ModelProto, pruned: onnx.ModelProto,
               values: dict[str, np.ndarray], weights: list[Weight], output: Path, context: PassContext,
               extra: dict[str, Any], scorer: Scorer | None) -> ModelArtifact:
        checked = validate_and_save(pruned, source, output, what=self.name)
        from accelserve.evaluate.size import count_parameters

        total, nonzero = count_parameters(checked)
        layers = [{"node": w.node, "weight": w.name, "sparsity": _sparsity_of({w.name: values[w.name]})}
                  for w in weights if w.name in values]
        report = {
            "layers": layers, "weight_sparsity": _sparsity_of(values),
            "model_sparsity": 1.0 - nonzero / total if total else 0.0,
            "sizes": size_report(source, checked, values), **extra,
        }
        if scorer is not None:
            report["held_out"] = {"base": scorer.compare(source), "pruned": scorer.compare(checked),
                                  "error_unit": scorer.error_kind, **scorer.samples.describe()}
        context.report.update(report)
        sizes = report["sizes"]
        context.log.append(
            f"{len(layers)} weight tensors at {100 * report['weight_sparsity']:.1f}% sparsity "
            f"(model {100 * report['model_sparsity']:.1f}%): file {sizes['file_bytes']['after']:,} B (dense runtimes "
            f"gain no speed), zipped {sizes['zipped_bytes']['before']:,} -> {sizes['zipped_bytes']['after']:,} B, "
            f"sparse-encoded {sizes['sparse_encoded_bytes']['after']:,} B")
        if scorer is not None:
            context.log.append(scorer.describe_line(report["held_out"]["base"], report["held_out"]["pruned"]))
        meta = {self.name: {"weight_sparsity": report["weight_sparsity"], "layers": len(layers)}}
        if extra.get("tensorrt_sparse_weights"):
            meta["tensorrt"] = {"sparse_weights": True}
        return model.derive(output, self.name, metadata=meta)


class MagnitudePruningConfig(PassConfig):
    sparsity: float = Field(0.5, description="fraction of the weights to zero, in [0, 1)")
    scope: Literal["layer", "global"] = Field("layer", description="one threshold per layer, or one for all")
    nodes: list[str] = Field(default_factory=list, description="prune only these nodes (default all)")
    exclude_nodes: list[str] = Field(default_factory=list, description="never prune these nodes")
    accuracy_budget: float | None = Field(None, ge=0.0, description="sparsity then grows per layer up to `sparsity` "
                                          "while the error stays within this; " + BUDGET_HELP)
    labels: str | None = None
    metric: str | None = None
    max_samples: int = Field(512, ge=1)

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {v}")
        return v


class MagnitudePruning(_WeightPass, Pass[MagnitudePruningConfig]):
    """Zero the smallest-magnitude weights of Conv/Gemm/MatMul layers."""

    name = "prune-magnitude"
    config_class = MagnitudePruningConfig
    search_space: ClassVar[dict[str, list[Any]]] = {"sparsity": [0.5, 0.7, 0.8, 0.9], "scope": ["layer", "global"]}

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        source, index = load_indexed(model, cfg.nodes, cfg.exclude_nodes)
        weights = prunable_weights(index, cfg.nodes, cfg.exclude_nodes)
        if not weights:
            raise OptimizationError("prune-magnitude found no Conv/Gemm/MatMul with constant float weights"
                                    + (f" among {', '.join(cfg.nodes)}" if cfg.nodes else ""))
        samples = load_samples(source, context.calibration, max_samples=cfg.max_samples, labels=cfg.labels,
                               need="prune-magnitude with accuracy_budget" if cfg.accuracy_budget is not None else None)
        scorer = Scorer(source, samples, cfg.metric)
        values = {w.name: index.const(w.name) for w in weights}
        extra: dict[str, Any] = {"scope": cfg.scope}
        if cfg.accuracy_budget is not None and weights:
            steps = [cfg.sparsity * k / 4 for k in range(1, 5)]

            def build(levels: dict[str, float]) -> onnx.ModelProto:
                chosen = {n: values[n] for n in levels}
                return self.apply(source, magnitude_masks(chosen, levels, "layer"), index)[0]

            sched = budget_schedule([w.name for w in weights], steps, build, scorer.error,
                                    cfg.accuracy_budget, context.log.append)
            masks = magnitude_masks({n: values[n] for n in sched.levels}, sched.levels, "layer")
            extra["schedule"] = sched.to_dict()
        else:
            masks = magnitude_masks(values, cfg.sparsity, cfg.scope)
        pruned, new_values = self.apply(source, masks, index)
        for w in weights:
            new_values.setdefault(w.name, values[w.name])
        return self.finish(model, source, pruned, new_values, weights, output, context, extra, scorer)


class SemiStructuredConfig(PassConfig):
    nodes: list[str] = Field(default_factory=list, description="prune only these nodes (default all)")
    exclude_nodes: list[str] = Field(default_factory=list, description="never prune these nodes")
    labels: str | None = None
    metric: str | None = None
    max_samples: int = Field(512, ge=1)


class SemiStructuredPruning(_WeightPass, Pass[SemiStructuredConfig]):
    """2:4 semi-structured sparsity along the input dimension; marks the model for TensorRT's sparse weights."""

    name = "prune-2:4"
    config_class = SemiStructuredConfig

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        source, index = load_indexed(model, cfg.nodes, cfg.exclude_nodes)
        weights, skipped = [], []
        for w in prunable_weights(index, cfg.nodes, cfg.exclude_nodes):
            size = index.const(w.name).shape[w.input_axis]
            if size % 4:
                skipped.append({"node": w.node, "reason": f"{size} input channels is not a multiple of 4"})
            else:
                weights.append(w)
        if not weights:
            raise OptimizationError(
                "prune-2:4 found no Conv/Gemm/MatMul weight whose input dimension is a multiple of 4"
                + (f" (skipped: {'; '.join(s['node'] + ': ' + s['reason'] for s in skipped)})" if skipped else ""))
        samples = load_samples(source, context.calibration, max_samples=cfg.max_samples, labels=cfg.labels)
        masks = {w.name: two_four_mask(index.const(w.name), w.input_axis) for w in weights}
        pruned, values = self.apply(source, masks, index)
        for w in weights:
            if not is_two_four(values[w.name], w.input_axis):
                raise InternalError(f"prune-2:4 produced a weight of '{w.node}' that is not 2:4 sparse")
        layers = [w.node for w in weights]
        for key, value in ((SPARSITY_KEY, "2:4"), (TRT_SPARSE_KEY, "true"),
                           ("accelserve.sparsity.layers", ",".join(layers))):
            entry = next((p for p in pruned.metadata_props if p.key == key), None) or pruned.metadata_props.add()
            entry.key, entry.value = key, value
        for s in skipped:
            context.log.append(f"left dense: {s['node']} ({s['reason']})")
        extra = {"pattern": "2:4", "skipped": skipped, "tensorrt_sparse_weights": True}
        context.log.append("marked for TensorRT sparse weights (metadata "
                           f"{TRT_SPARSE_KEY}=true; trtexec --sparsity=enable)")
        return self.finish(model, source, pruned, values, weights, output, context, extra,
                           Scorer(source, samples, cfg.metric))
