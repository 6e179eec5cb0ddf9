"""``lowrank``: truncated-SVD factorization ``W ~ U V`` of Gemm/MatMul weights and 1x1 Conv kernels.

The rank kept is chosen per layer by an energy threshold (the smallest rank whose singular values hold that share
of ``sum(sigma^2)``) or a ratio (``ratio`` of the rank removed). A layer is factorized only where the rank makes it
cheaper: ``r (K + N) < K N`` parameters and multiply-adds. The node becomes two nodes of the same kind
(MatMul -> MatMul, MatMul; Gemm -> Gemm, Gemm; Conv 1x1 -> Conv 1x1, Conv 1x1) with the bias on the second.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field, model_validator

from accelserve.artifact import ModelArtifact
from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.pruning.data import BUDGET_HELP, Scorer, load_samples
from accelserve.passes.pruning.graph import GraphIndex, attr, load_indexed, unique_name, validate_and_save
from accelserve.passes.pruning.schedule import budget_schedule


class LowRankConfig(PassConfig):
    ratio: float | None = Field(None, description="fraction of each layer's rank removed, in [0, 1) (default 0.5)")
    energy: float | None = Field(None, gt=0.0, le=1.0, description="keep the smallest rank holding this share of "
                                 "the squared singular values (instead of ratio)")
    nodes: list[str] = Field(default_factory=list, description="factorize only these nodes (default all)")
    exclude_nodes: list[str] = Field(default_factory=list, description="never factorize these nodes")
    min_size: int = Field(1024, ge=0, description="leave weights with fewer elements alone")
    accuracy_budget: float | None = Field(None, ge=0.0, description="the ratio then grows per layer up to `ratio` "
                                          "while the error stays within this; " + BUDGET_HELP)
    labels: str | None = None
    metric: str | None = None
    max_samples: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _rank_rule(self) -> LowRankConfig:
        if self.ratio is not None and self.energy is not None:
            raise ValueError("give ratio or energy, not both")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.accuracy_budget is not None and self.energy is not None:
            raise ValueError("accuracy_budget raises the ratio stepwise; use it with ratio, not energy")
        return self

    @property
    def effective_ratio(self) -> float:
        return 0.5 if self.ratio is None else self.ratio


@dataclass
class Layer:
    """One factorizable node: its weight as a K x N matrix (input features x output features)."""

    node: str
    op_type: str
    k: int
    n: int
    matrix: np.ndarray
    spatial: int = 0  #: spatial dims of a 1x1 Conv kernel

    def rank_for(self, ratio: float | None, energy: float | None, sigma: np.ndarray) -> int:
        full = min(self.k, self.n)
        if energy is not None:
            share = np.cumsum(sigma**2) / max(float((sigma**2).sum()), 1e-30)
            return int(min(full, np.searchsorted(share, energy - 1e-12) + 1))
        return max(1, math.ceil(full * (1.0 - float(ratio))))

    def worthwhile(self, rank: int) -> bool:
        return rank * (self.k + self.n) < self.k * self.n


@dataclass
class LayerResult:
    node: str
    op_type: str
    shape: tuple[int, int]
    rank: int
    full_rank: int
    energy_kept: float
    weight_rel_error: float
    params_before: int
    params_after: int
    factorized: bool
    reason: str = ""


def find_layers(index: GraphIndex, nodes: list[str], exclude: list[str], min_size: int) -> list[Layer]:
    out = []
    for node in index.nodes:
        if (nodes and node.name not in nodes) or node.name in exclude:
            continue
        w = index.input_const(node, 1)
        if w is None or not np.issubdtype(w.dtype, np.floating):
            continue
        if node.op_type == "MatMul" and w.ndim == 2 and (index.rank(node.input[0]) or 0) >= 2:
            mat = w
        elif node.op_type == "Gemm" and w.ndim == 2:
            mat = w.T if int(attr(node, "transB", 0)) else w
        elif (node.op_type == "Conv" and w.ndim >= 3 and all(d == 1 for d in w.shape[2:])
              and int(attr(node, "group", 1)) == 1):
            mat = w.reshape(w.shape[0], w.shape[1]).T
        else:
            continue
        if mat.size >= min_size:
            out.append(Layer(node.name, node.op_type, mat.shape[0], mat.shape[1], mat.astype(np.float64),
                             w.ndim - 2 if node.op_type == "Conv" else 0))
    return out


def _replace(model: onnx.ModelProto, node: onnx.NodeProto, first: np.ndarray, second: np.ndarray, dtype: np.dtype,
             spatial: int) -> None:
    """Replace ``node`` by two nodes computing ``x @ first @ second`` (+ the node's bias), in place."""
    graph = model.graph
    pos = list(graph.node).index(node)
    a_name, b_name = unique_name(model, f"{node.name}_lowrank_u"), unique_name(model, f"{node.name}_lowrank_v")
    mid = unique_name(model, f"{node.name}_lowrank_mid")
    out = node.output[0]
    if node.op_type == "MatMul":
        graph.initializer.extend([numpy_helper.from_array(first.astype(dtype), a_name),
                                  numpy_helper.from_array(second.astype(dtype), b_name)])
        n1 = helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{node.name}/u")
        n2 = helper.make_node("MatMul", [mid, b_name], [out], name=f"{node.name}/v")
    elif node.op_type == "Gemm":
        graph.initializer.extend([numpy_helper.from_array(first.astype(dtype), a_name),
                                  numpy_helper.from_array(second.astype(dtype), b_name)])
        n1 = helper.make_node("Gemm", [node.input[0], a_name], [mid], name=f"{node.name}/u",
                              transA=int(attr(node, "transA", 0)))
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        n2 = helper.make_node("Gemm", [mid, b_name, *bias], [out], name=f"{node.name}/v",
                              alpha=float(attr(node, "alpha", 1.0)), beta=float(attr(node, "beta", 1.0)))
    else:  # 1x1 Conv: [r, Cin, 1..] then [Cout, r, 1..]
        ones = [1] * spatial
        w1 = first.T.reshape(first.shape[1], first.shape[0], *ones)
        w2 = second.T.reshape(second.shape[1], second.shape[0], *ones)
        graph.initializer.extend([numpy_helper.from_array(w1.astype(dtype), a_name),
                                  numpy_helper.from_array(w2.astype(dtype), b_name)])
        keep = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
        n1 = helper.make_node("Conv", [node.input[0], a_name], [mid], name=f"{node.name}/u", **keep)
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        n2 = helper.make_node("Conv", [mid, b_name, *bias], [out], name=f"{node.name}/v", kernel_shape=ones)
    graph.node.remove(node)
    graph.node.insert(pos, n2)
    graph.node.insert(pos, n1)


def factorize(model: onnx.ModelProto, layers: list[Layer], ratios: dict[str, float] | None, energy: float | None,
              default_ratio: float) -> tuple[onnx.ModelProto, list[LayerResult]]:
    """The model with each worthwhile layer factorized; ``ratios`` (node -> ratio) overrides the default."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(model)
    nodes = {n.name: n for n in out.graph.node}
    results = []
    for layer in layers:
        ratio = (ratios or {}).get(layer.node, default_ratio if ratios is None else 0.0)
        u, sigma, vt = np.linalg.svd(layer.matrix, full_matrices=False)
        full = sigma.size
        rank = layer.rank_for(ratio, energy if ratios is None else None, sigma)
        energy_kept = float((sigma[:rank] ** 2).sum() / max(float((sigma**2).sum()), 1e-30))
        params = layer.k * layer.n
        result = LayerResult(layer.node, layer.op_type, (layer.k, layer.n), rank, full, energy_kept,
                             math.sqrt(max(0.0, 1.0 - energy_kept)), params, params, False)
        if rank >= full:
            result.reason = "keeps the full rank"
        elif not layer.worthwhile(rank):
            limit = layer.k * layer.n / (layer.k + layer.n)
            result.reason = f"rank {rank} saves nothing (needs rank < {limit:.1f})"
        else:
            root = np.sqrt(sigma[:rank])
            dtype = index.input_const(index.node(layer.node), 1).dtype
            _replace(out, nodes[layer.node], u[:, :rank] * root, root[:, None] * vt[:rank], dtype, layer.spatial)
            result.factorized, result.params_after = True, rank * (layer.k + layer.n)
        results.append(result)
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, results


class LowRank(Pass[LowRankConfig]):
    """Factorize Gemm/MatMul/1x1-Conv weights by truncated SVD where it cuts parameters and FLOPs."""

    name = "lowrank"
    config_class = LowRankConfig
    search_space: ClassVar[dict[str, list[Any]]] = {"ratio": [0.25, 0.5, 0.75], "energy": [0.9, 0.95, 0.99]}

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        source, index = load_indexed(model, cfg.nodes, cfg.exclude_nodes)
        layers = find_layers(index, cfg.nodes, cfg.exclude_nodes, cfg.min_size)
        if cfg.nodes:
            missing = sorted(set(cfg.nodes) - {layer.node for layer in layers})
            if missing:
                raise InvalidInputError(
                    f"lowrank cannot factorize node(s) {', '.join(missing)}: only Gemm/MatMul with a constant 2-D "
                    f"weight and 1x1 Conv (group 1) with at least min_size={cfg.min_size} weights are factorized")
        if not layers:
            raise OptimizationError(
                f"lowrank found no Gemm/MatMul with a constant 2-D weight or 1x1 Conv with at least "
                f"min_size={cfg.min_size} weights" + (f" among {', '.join(cfg.nodes)}" if cfg.nodes else ""),
                hint="lower min_size (--set min_size=0) to include small layers")
        samples = load_samples(source, context.calibration, max_samples=cfg.max_samples, labels=cfg.labels,
                               need="lowrank with accuracy_budget" if cfg.accuracy_budget is not None else None)
        scorer = Scorer(source, samples, cfg.metric)
        extra: dict[str, Any] = {}
        if cfg.accuracy_budget is not None and layers:
            steps = [cfg.effective_ratio * k / 4 for k in range(1, 5)]
            sched = budget_schedule([layer.node for layer in layers], steps,
                                    lambda levels: factorize(source, layers, levels, None, 0.0)[0],
                                    scorer.error, cfg.accuracy_budget, context.log.append)
            result, layer_results = factorize(source, layers, dict(sched.levels), None, 0.0)
            extra["schedule"] = sched.to_dict()
        else:
            result, layer_results = factorize(source, layers, None, cfg.energy, cfg.effective_ratio)
        if cfg.accuracy_budget is None and not any(r.factorized for r in layer_results):
            raise OptimizationError(
                "lowrank factorized no layer: " + "; ".join(f"{r.node}: {r.reason}" for r in layer_results),
                hint="a layer is factorized only where the kept rank cuts its parameters; raise --ratio or lower "
                     "--energy")
        checked = validate_and_save(result, source, output, what="lowrank")
        report = self._report(source, checked, layer_results, scorer, extra)
        context.report.update(report)
        done = [r for r in layer_results if r.factorized]
        p, f = report["parameters"], report["flops_per_sample"]
        context.log.append(f"factorized {len(done)} of {len(layer_results)} candidate layers: parameters "
                           f"{p['before']:,} -> {p['after']:,}, FLOPs/sample {f['before']:,} -> {f['after']:,}")
        for r in layer_results:
            if r.factorized:
                context.log.append(f"{r.node}: rank {r.rank}/{r.full_rank}, energy kept {r.energy_kept:.4f}, "
                                   f"weight error {r.weight_rel_error:.4f}")
            else:
                context.log.append(f"{r.node}: left as is ({r.reason})")
        context.log.append(scorer.describe_line(report["held_out"]["base"], report["held_out"]["factorized"],
                                                "factorized"))
        return model.derive(output, self.name, metadata={"lowrank": {"layers": len(done),
                                                                     "parameters": report["parameters"]}})

    @staticmethod
    def _report(source: onnx.ModelProto, result: onnx.ModelProto, layers: list[LayerResult], scorer: Scorer,
                extra: dict[str, Any]) -> dict[str, Any]:
        from accelserve.evaluate.size import count_parameters

        return {
            "layers": [asdict(r) for r in layers],
            "parameters": {"before": count_parameters(source)[0], "after": count_parameters(result)[0]},
            "flops_per_sample": {"before": scorer.samples.flops(source), "after": scorer.samples.flops(result)},
            "held_out": {"base": scorer.compare(source), "factorized": scorer.compare(result),
                         "error_unit": scorer.error_kind, **scorer.samples.describe()},
            **extra,
        }
