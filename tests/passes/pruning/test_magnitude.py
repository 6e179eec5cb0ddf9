"""prune-magnitude and prune-2:4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from accelserve import plugins
from accelserve.artifact import ModelArtifact
from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.onnx_io import check_model, read_onnx
from accelserve.passes.base import PassContext
from accelserve.passes.pruning.magnitude import (
    TRT_SPARSE_KEY,
    is_two_four,
    magnitude_masks,
    two_four_mask,
)
from tests.passes.pruning.builders import GraphBuilder, weight


def mixed_model(path: Path) -> Path:
    """Conv (3 input channels: 2:4 impossible), Conv 8->16, Gemm 16->12 (transB), MatMul 12->8."""
    g = GraphBuilder(3)
    x = g.relu(g.conv(g.input("input", ["N", 3, 6, 6]), 3, 8, name="first"))
    x = g.relu(g.conv(x, 8, 16, name="conv"))
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    x = g.relu(g.gemm(x, 16, 12, name="gemm"))
    onnx.save(g.build([g.matmul(x, 12, 8, name="mm")]), str(path))
    return path


def run_pass(name: str, config: dict, model: Path, out: Path) -> tuple[ModelArtifact, PassContext]:
    ctx = PassContext(out.parent)
    return plugins.load("passes", name)(config).run(ModelArtifact.from_onnx(model), out, ctx), ctx


def test_layer_masks_hit_the_target_sparsity_and_drop_the_smallest() -> None:
    rng = np.random.default_rng(0)
    values = {"a": rng.standard_normal((10, 20)), "b": 100 + rng.random((7, 3))}
    masks = magnitude_masks(values, 0.8, "layer")
    assert (~masks["a"]).sum() == 160 and (~masks["b"]).sum() == 16
    assert np.abs(values["a"][~masks["a"]]).max() <= np.abs(values["a"][masks["a"]]).min()
    glob = magnitude_masks(values, 0.5, "global")
    assert sum((~m).sum() for m in glob.values()) == int(0.5 * 221)
    assert glob["b"].all()  # one threshold: the large-magnitude layer keeps everything


def test_two_four_mask_keeps_two_largest_of_every_four() -> None:
    w = np.random.default_rng(0).standard_normal((6, 8, 3, 3))
    keep = two_four_mask(w, axis=1)
    pruned = np.where(keep, w, 0)
    assert is_two_four(pruned, axis=1) and not is_two_four(w, axis=1)
    groups = np.moveaxis(np.abs(w), 1, -1).reshape(6, 3, 3, 2, 4)
    kept = np.moveaxis(keep, 1, -1).reshape(6, 3, 3, 2, 4)
    smallest_kept = np.where(kept, groups, np.inf).min(axis=-1)
    largest_dropped = np.where(kept, -np.inf, groups).max(axis=-1)
    assert (smallest_kept >= largest_dropped).all()


def test_prune_magnitude_pass(tmp_path: Path) -> None:
    model = mixed_model(tmp_path / "m.onnx")
    artifact, ctx = run_pass("prune-magnitude", {"sparsity": 0.75}, model, tmp_path / "out.onnx")
    pruned = check_model(read_onnx(artifact.path))
    for node, w in (("conv", weight(pruned, "conv")), ("gemm", weight(pruned, "gemm")), ("mm", weight(pruned, "mm"))):
        assert abs((w == 0).mean() - 0.75) < 0.02, node
        assert w.shape == weight(onnx.load(str(model)), node).shape
    sizes = ctx.report["sizes"]
    assert sizes["zipped_bytes"]["after"] < 0.6 * sizes["zipped_bytes"]["before"]
    assert sizes["sparse_encoded_bytes"]["after"] < sizes["file_bytes"]["after"]
    assert abs(ctx.report["weight_sparsity"] - 0.75) < 0.01
    assert "dense runtimes gain no speed" in ctx.log[0]


def test_prune_two_four_pass_marks_the_model_for_tensorrt(tmp_path: Path) -> None:
    model = mixed_model(tmp_path / "m.onnx")
    artifact, ctx = run_pass("prune-2:4", {}, model, tmp_path / "out.onnx")
    pruned = check_model(read_onnx(artifact.path))
    assert is_two_four(weight(pruned, "conv"), 1)
    assert is_two_four(weight(pruned, "gemm"), 1)  # transB=1: [out, in]
    assert is_two_four(weight(pruned, "mm"), 0)  # MatMul [in, out]
    assert (weight(pruned, "first") != 0).all()  # 3 input channels: left dense, reported
    assert ctx.report["skipped"][0]["node"] == "first"
    assert {p.key: p.value for p in pruned.metadata_props}[TRT_SPARSE_KEY] == "true"
    assert artifact.metadata["tensorrt"] == {"sparse_weights": True}


@pytest.mark.parametrize("sparsity", [1.0, -0.2, 1.5])
def test_sparsity_outside_range_is_rejected(sparsity: float) -> None:
    with pytest.raises(InvalidInputError, match=r"sparsity must be in \[0, 1\)"):
        plugins.load("passes", "prune-magnitude")({"sparsity": sparsity})


def test_unknown_node_and_nothing_to_prune(tmp_path: Path) -> None:
    model = mixed_model(tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match="do not exist.*ghost"):
        run_pass("prune-magnitude", {"nodes": ["ghost"]}, model, tmp_path / "o.onnx")
    with pytest.raises(OptimizationError, match="no Conv/Gemm/MatMul weight"):
        run_pass("prune-2:4", {"nodes": ["first"]}, model, tmp_path / "o.onnx")
