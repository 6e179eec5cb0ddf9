"""The lowrank pass: rank choice, exactness on low-rank weights, node rewriting, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from accelserve.artifact import ModelArtifact
from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.onnx_io import check_model, read_onnx
from accelserve.passes.base import PassContext
from accelserve.passes.lowrank import LowRank, factorize, find_layers
from accelserve.passes.pruning.graph import GraphIndex, prepare, run, sample_batches
from tests.passes.pruning.builders import GraphBuilder, set_weight


def low_rank(rng: np.random.Generator, rows: int, cols: int, rank: int) -> np.ndarray:
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(rank)).astype(np.float32)


def model_with_rank(path: Path, rank: int = 6) -> Path:
    """MatMul 32->48, Gemm 48->40 (transB, alpha/beta), 1x1 Conv 40->36, a small Gemm; weights of rank ``rank``."""
    rng = np.random.default_rng(0)
    g = GraphBuilder(1)
    x = g.relu(g.matmul(g.input("input", ["N", 32]), 32, 48, name="mm"))
    w = g.const(low_rank(rng, 40, 48, rank))
    x = g.relu(g.op("Gemm", [x, w, g.const(rng.standard_normal(40).astype(np.float32))], name="gemm", transB=1,
                    alpha=0.5, beta=2.0))
    x = g.op("Reshape", [x, g.const(np.array([-1, 40, 1, 1], dtype=np.int64))])
    x = g.relu(g.conv(x, 40, 36, k=1, name="pointwise"))
    x = g.op("Flatten", [x])
    model = g.build([g.gemm(x, 36, 4, name="small")])
    set_weight(model, "mm", low_rank(rng, 32, 48, rank))
    set_weight(model, "pointwise", low_rank(rng, 36, 40, rank).reshape(36, 40, 1, 1))
    onnx.save(model, str(path))
    return path


def run_lowrank(config: dict, model: Path, out: Path) -> tuple[onnx.ModelProto, PassContext]:
    ctx = PassContext(out.parent)
    artifact = LowRank(config).run(ModelArtifact.from_onnx(model), out, ctx)
    return check_model(read_onnx(artifact.path)), ctx


def outputs_close(a: Path, b: onnx.ModelProto, tol: float) -> float:
    original = read_onnx(a)
    feeds = sample_batches(original, count=2, batch=5)
    want, got = run(original, feeds), run(b, feeds)
    err = max(float(np.abs(got[k] - want[k]).max() / (np.abs(want[k]).max() + 1e-9)) for k in want)
    assert err < tol, err
    return err


def test_energy_finds_the_true_rank_and_is_exact(tmp_path: Path) -> None:
    path = model_with_rank(tmp_path / "m.onnx", rank=6)
    pruned, ctx = run_lowrank({"energy": 0.999999}, path, tmp_path / "out.onnx")
    layers = {r["node"]: r for r in ctx.report["layers"]}
    for name in ("mm", "gemm", "pointwise"):
        assert layers[name]["factorized"] and layers[name]["rank"] == 6
    assert "small" not in layers  # 36x4 = 144 weights: under min_size
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Gemm") == 3 and ops.count("Conv") == 2
    assert ctx.report["parameters"]["after"] < ctx.report["parameters"]["before"]
    assert ctx.report["flops_per_sample"]["after"] < ctx.report["flops_per_sample"]["before"]
    outputs_close(path, pruned, 1e-4)


def test_ratio_sets_the_rank_and_reports_the_error(tmp_path: Path) -> None:
    path = model_with_rank(tmp_path / "m.onnx", rank=20)
    _, ctx = run_lowrank({"ratio": 0.75}, path, tmp_path / "out.onnx")
    layers = {r["node"]: r for r in ctx.report["layers"]}
    assert layers["mm"]["rank"] == 8 and layers["gemm"]["rank"] == 10 and layers["pointwise"]["rank"] == 9
    for r in layers.values():
        if r["factorized"]:
            assert 0 < r["weight_rel_error"] < 1 and r["params_after"] < r["params_before"]
    err = ctx.report["held_out"]["factorized"]["rel_l2_error"]
    assert 0 < err < 1


def test_only_factorizes_where_it_saves(tmp_path: Path) -> None:
    model = prepare(read_onnx(model_with_rank(tmp_path / "m.onnx", rank=20)))
    layers = find_layers(GraphIndex(model), ["mm"], [], 0)
    out, (result,) = factorize(model, layers, None, None, 0.1)
    assert result.rank == 29 and not result.factorized  # 29 * (32 + 48) > 32 * 48
    assert "saves nothing" in result.reason
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    _, (done,) = factorize(model, layers, None, None, 0.5)
    assert done.factorized and done.rank == 16 and done.params_after == 16 * 80


@pytest.mark.parametrize("bad, message", [
    ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
    ({"ratio": 0.5, "energy": 0.9}, "not both"),
    ({"energy": 1.5}, "energy"),
])
def test_bad_options(bad: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        LowRank(bad)


def test_unknown_or_unsuitable_nodes(tmp_path: Path) -> None:
    path = model_with_rank(tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match="do not exist.*ghost"):
        run_lowrank({"nodes": ["ghost"]}, path, tmp_path / "o.onnx")
    relu = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Relu")
    with pytest.raises(InvalidInputError, match="cannot factorize"):
        run_lowrank({"nodes": [relu]}, path, tmp_path / "o.onnx")


def test_no_factorizable_layer_is_an_optimization_error(tmp_path: Path) -> None:
    path = model_with_rank(tmp_path / "m.onnx", rank=20)
    with pytest.raises(OptimizationError, match="factorized no layer.*saves nothing"):
        run_lowrank({"ratio": 0.05}, path, tmp_path / "o.onnx")
    with pytest.raises(OptimizationError, match="found no Gemm/MatMul"):
        run_lowrank({"min_size": 10**6}, path, tmp_path / "o.onnx")
