"""The prune-channels pass: options, errors, validity of what it writes, importance, reconstruction, schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from accelserve.artifact import ModelArtifact
from accelserve.calibration import CalibrationData, load_calibration
from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.onnx_io import check_model, read_onnx
from accelserve.optimize import optimize
from accelserve.passes.base import PassContext
from accelserve.passes.pruning.channels import ChannelPruning
from accelserve.passes.pruning.graph import run
from tests.passes.pruning.builders import GraphBuilder, set_weight, weight


def residual_cnn(path: Path, seed: int = 0) -> Path:
    g = GraphBuilder(seed)
    stem = g.relu(g.bn(g.conv(g.input("input", ["N", 3, 8, 8]), 3, 16, name="stem"), 16))
    y = g.relu(g.bn(g.conv(stem, 16, 16, name="b1"), 16))
    y = g.bn(g.conv(y, 16, 16, name="b2"), 16)
    x = g.op("MaxPool", [g.relu(g.op("Add", [stem, y]))], kernel_shape=[2, 2], strides=[2, 2])
    x = g.relu(g.bn(g.conv(x, 16, 32, name="c3"), 32))
    out = g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [x])]), 32, 10, name="fc")
    onnx.save(g.build([out]), str(path))
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return residual_cnn(tmp_path / "cnn.onnx")


@pytest.fixture
def calib(model_path: Path, tmp_path: Path) -> CalibrationData:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((96, 3, 8, 8)).astype(np.float32))
    return load_calibration(tmp_path / "calib.npz", model_path)


def prune(model_path: Path, out: Path, config: dict, calib: CalibrationData | None
          ) -> tuple[ModelArtifact, PassContext]:
    ctx = PassContext(out.parent / "work", calibration=calib)
    return ChannelPruning(config).run(ModelArtifact.from_onnx(model_path), out, ctx), ctx


@pytest.mark.parametrize("bad", [{"ratio": 1.0}, {"ratio": -0.1}, {"node_ratios": {"stem": 1.5}},
                                 {"importance": "l3"}, {"sparsity": 0.5}])
def test_bad_options_are_user_errors(bad: dict) -> None:
    with pytest.raises(InvalidInputError, match="invalid options for pass 'prune-channels'") as err:
        ChannelPruning(bad)
    if "ratio" in bad:
        assert "[0, 1)" in str(err.value)


def test_unknown_node_names_are_user_errors(model_path: Path, tmp_path: Path, calib: CalibrationData) -> None:
    with pytest.raises(InvalidInputError, match="exclude_nodes names node.*nope"):
        prune(model_path, tmp_path / "out.onnx", {"exclude_nodes": ["nope"]}, calib)
    with pytest.raises(InvalidInputError, match="node_ratios names node.*missing"):
        prune(model_path, tmp_path / "out.onnx", {"node_ratios": {"missing": 0.5}}, calib)


def test_reconstruction_without_calibration_is_a_clear_error(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="needs calibration data") as err:
        prune(model_path, tmp_path / "out.onnx", {"ratio": 0.5}, None)
    assert "--calib" in str(err.value) and "reconstruct=false" in str(err.value)
    assert not (tmp_path / "out.onnx").exists()


def test_output_is_valid_smaller_and_keeps_the_signature(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    artifact, ctx = prune(model_path, out, {"ratio": 0.5, "reconstruct": False}, None)
    assert artifact.path == out and artifact.history[-1] == "prune-channels"
    pruned, original = check_model(read_onnx(out)), read_onnx(model_path)
    assert [(i.name, i.type) for i in pruned.graph.input] == [(i.name, i.type) for i in original.graph.input]
    assert [(o.name, o.type) for o in pruned.graph.output] == [(o.name, o.type) for o in original.graph.output]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((2, 3, 8, 8), np.float32)})[0].shape == (2, 10)
    report = ctx.report
    assert report["parameters"]["after"] < 0.5 * report["parameters"]["before"]
    assert report["flops_per_sample"]["after"] < 0.5 * report["flops_per_sample"]["before"]
    assert report["groups_pruned"] == 3  # {stem, b2} coupled by the residual, b1, c3; fc reaches the output
    assert [g["sources"] for g in report["groups_kept"]] == [["fc"]]
    assert any("kept group" in line and "graph output" in line for line in ctx.log)
    assert weight(pruned, "stem").shape[0] == weight(pruned, "b2").shape[0] == 8


def test_reconstruction_lowers_the_error(model_path: Path, tmp_path: Path, calib: CalibrationData) -> None:
    _, ctx = prune(model_path, tmp_path / "out.onnx", {"ratio": 0.5}, calib)
    held = ctx.report["held_out"]
    assert held["pruned"]["rel_l2_error"] < 0.8 * held["pruned_without_reconstruction"]["rel_l2_error"]
    fits = ctx.report["reconstruction"]
    assert {f["node"] for f in fits} == {"b1", "b2", "c3", "fc"}
    assert all(f["error_after"] < f["error_before"] for f in fits if f["accepted"])


def test_activation_importance_removes_dead_channels_exactly(tmp_path: Path, calib: CalibrationData,
                                                             model_path: Path) -> None:
    """Channels 0..7 of b1 have the largest weights but a bias that keeps them below zero: ReLU kills them.
    Weight norms would keep them; activation statistics remove exactly them, without changing the output."""
    model = onnx.load(str(model_path))
    w, bn_bias = weight(model, "b1"), None
    w[:8] *= 5.0
    set_weight(model, "b1", w)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[0] == "b1_out")
    bn_bias = weight(model, bn.name, 2)
    bn_bias[:8] = -1e4
    set_weight(model, bn.name, bn_bias, 2)
    path = tmp_path / "dead.onnx"
    onnx.save(model, str(path))
    config = {"ratio": 0.5, "reconstruct": False, "nodes": ["b1"]}
    _, ctx = prune(path, tmp_path / "act.onnx", {**config, "importance": "activation"}, calib)
    assert ctx.report["held_out"]["pruned"]["max_abs_error"] < 1e-4
    _, ctx = prune(path, tmp_path / "l2.onnx", {**config, "importance": "l2"}, calib)
    assert ctx.report["held_out"]["pruned"]["max_abs_error"] > 1e-2


def test_round_to_keeps_a_multiple(model_path: Path, tmp_path: Path) -> None:
    _, ctx = prune(model_path, tmp_path / "out.onnx", {"ratio": 0.4, "round_to": 4, "reconstruct": False}, None)
    kept = {tuple(g["sources"]): g["channels"] - g["removed"] for g in ctx.report["groups"] if g["prunable"]}
    assert kept[("c3",)] == 20 and kept[("b1",)] == 12  # 32 - floor(12.8) = 20; 16 - 6 = 10 -> 12


def test_accuracy_budget_keeps_the_model_within_budget(model_path: Path, tmp_path: Path,
                                                       calib: CalibrationData) -> None:
    config = {"ratio": 0.75, "accuracy_budget": 5.0, "reconstruct": False}
    _, ctx = prune(model_path, tmp_path / "out.onnx", config, calib)
    held, schedule = ctx.report["held_out"], ctx.report["schedule"]
    assert held["error_unit"] == "top-1 disagreement with the base (points)"
    assert held["base"]["error"] == 0.0
    assert held["pruned"]["error"] <= 5.0
    assert held["pruned"]["error"] == pytest.approx(100 * (1 - held["pruned"]["top1_agreement"]))
    assert set(schedule["sensitivity"]) == {"0", "1", "2"}
    assert max(schedule["sensitivity"].values()) > 5.0  # the budget binds: not everything can reach 75%
    assert min(schedule["levels"].get(g, 0.0) for g in ("0", "1", "2")) < 0.75
    assert ctx.report["groups_pruned"] >= 1
    assert all(0 <= level <= 0.75 for level in schedule["levels"].values())
    assert any("sensitivity" in line for line in ctx.log)


def test_through_optimize_with_calibration(model_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "c.npz", input=rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    result = optimize(model_path, "prune-channels", tmp_path / "opt.onnx", {"ratio": 0.5, "importance": "activation"},
                      calibration=tmp_path / "c.npz", evaluate=False)
    report = result.passes[0].report
    assert report["parameters"]["after"] < report["parameters"]["before"]
    feeds = [{"input": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}]
    assert run(read_onnx(tmp_path / "opt.onnx"), feeds)["fc_out"].shape == (4, 10)


def test_nothing_prunable_is_an_optimization_error(tmp_path: Path) -> None:
    g = GraphBuilder()
    x = g.relu(g.conv(g.input("input", ["N", 4, 6, 6]), 4, 8, name="a"))
    path = tmp_path / "m.onnx"
    onnx.save(g.build([g.relu(g.conv(x, 8, 8, group=2, name="grouped"))]), str(path))
    with pytest.raises(OptimizationError, match="no channel group it can prune.*grouped Conv 'grouped'"):
        prune(path, tmp_path / "out.onnx", {"reconstruct": False}, None)
    assert not (tmp_path / "out.onnx").exists()


def test_agreement_on_a_random_weight_model_is_flagged_not_meaningful(model_path: Path, calib: CalibrationData,
                                                                      tmp_path: Path) -> None:
    # random weights: the base puts every input in one class, so "0 points disagreement" is no evidence
    _, ctx = prune(model_path, tmp_path / "p.onnx", {"ratio": 0.5}, calib)
    final = ctx.log[-1]
    assert "held-out top-1 disagreement" in final and "NOT MEANINGFUL: degenerate base" in final
    assert "centred cosine" in final
