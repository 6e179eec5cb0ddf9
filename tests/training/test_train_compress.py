"""QAT, distillation and prune → fine-tune on a CNN trained on scikit-learn's digits, through to ONNX, with the
evaluation report on the held-out split. Kept small: a width-8 CNN, one or two epochs per method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from accelserve.errors import OptimizationError  # noqa: E402
from accelserve.examples.digits import digits_training_data  # noqa: E402
from accelserve.training.api import train_compress  # noqa: E402
from accelserve.training.distill import DistillConfig, PruneFinetuneConfig  # noqa: E402
from accelserve.training.qat import QATConfig  # noqa: E402
from tests.training.models import trained_digits  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("target, activation_type", [("ort-cpu", None), ("tensorrt", onnx.TensorProto.INT8)])
def test_qat_exports_qdq_that_matches_the_fake_quant_model(tmp_path: Path, target: str, activation_type):
    model = trained_digits()
    out = tmp_path / "qat.onnx"
    result = train_compress(model, digits_training_data(), "qat", out, config=QATConfig(epochs=1, target=target),
                            evaluate_speed=False, quiet=True)
    assert result.complete and out.is_file()
    f = result.figures
    assert f["onnx_vs_fake_quant_agreement"] >= 0.99
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    graph = onnx.load(str(out)).graph
    inits = {t.name: t for t in graph.initializer}
    act_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    zero_points = [inits[n.input[2]] for n in act_q if len(n.input) > 2 and n.input[2] in inits]
    if activation_type is not None:  # TensorRT: symmetric signed activations
        assert zero_points and all(z.data_type == activation_type for z in zero_points)
        assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    evaluation = result.evaluation.to_dict()
    (candidate,) = evaluation["candidates"]
    # a trained model on held-out labels: the exported INT8 model loses at most 2 points against the float model
    # (fine-tuning may also gain: the small base model is trained only briefly), and its accuracy is the fake-quant
    # model's
    assert candidate["metric"] >= evaluation["base"]["metric"] - 0.02
    assert abs(candidate["metric"] - f["qat_accuracy"]) <= 0.005
    assert evaluation["base"]["metric"] > 0.9  # really trained (random weights would sit near 0.1)


def test_qat_export_carries_the_training_ranges(tmp_path: Path):
    """The Q/DQ model gets the activation ranges the training used (learned here), not recalibrated ones; biases are
    re-quantized to the new input scale; per-tensor 7-bit weights as configured."""
    from accelserve.training.export import export_qat
    from accelserve.training.qat import qat

    data = digits_training_data()
    r = qat(trained_digits(), data, QATConfig(epochs=1, lr=1e-3, ranges="learnable", per_channel=False,
                                              reduce_range=True))
    v = export_qat(r.model, r.scheme, tmp_path / "q.onnx", data, ["x"], work_dir=tmp_path)
    wrappers = [m for m in r.model.modules() if hasattr(m, "input_quant") and hasattr(m, "layer")]
    assert v.ranges_transferred == len(wrappers) + 1  # every layer's input, and the logits (ort-cpu)
    assert v.agreement >= 0.99
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    for node, wrapper in zip(convs, wrappers):
        scale, zero = (t.detach() for t in wrapper.input_quant.qparams()[:2])
        dq_x, dq_w = producers[node.input[0]], producers[node.input[1]]
        assert float(inits[dq_x.input[1]]) == pytest.approx(float(scale), rel=1e-6)
        assert int(inits[dq_x.input[2]]) == int(zero)
        assert inits[dq_w.input[1]].size == 1  # per-tensor weight scale
        assert np.abs(inits[dq_w.input[0]]).max() <= 64  # reduce_range: 7-bit weights
        dq_b = producers[node.input[2]]
        np.testing.assert_allclose(inits[dq_b.input[1]], float(scale) * inits[dq_w.input[1]], rtol=1e-6)


def test_distillation_trains_a_pruned_student(tmp_path: Path):
    out = tmp_path / "student.onnx"
    result = train_compress(trained_digits(), digits_training_data(), "distill", out,
                            config=DistillConfig(epochs=2, prune_ratio=0.5, lr=3e-3), evaluate_speed=False, quiet=True)
    f = result.figures
    assert f["student_parameters"] < 0.4 * f["teacher_parameters"]
    assert f["student_accuracy"] > f["student_accuracy_before"] + 0.1  # the training did recover accuracy
    assert f["student_accuracy"] > 0.8
    params = sum(onnx.numpy_helper.to_array(t).size for t in onnx.load(str(out)).graph.initializer)
    assert params < 0.4 * f["teacher_parameters"]


def test_prune_finetune_steps_and_budget(tmp_path: Path):
    out = tmp_path / "pruned.onnx"
    result = train_compress(trained_digits(), digits_training_data(), "prune-finetune", out,
                            config=PruneFinetuneConfig(target_ratio=0.5, steps=2, epochs_per_step=1, lr=3e-3,
                                                       accuracy_budget=None), evaluate_speed=False, quiet=True)
    steps = result.figures["steps"]
    assert [s["ratio"] for s in steps] == [0.25, 0.5] and all(s["kept"] for s in steps)
    assert steps[1]["parameters"] < steps[0]["parameters"]
    assert result.figures["pruned_ratio"] == 0.5 and out.is_file()
    # a budget no pruning can meet: an error, nothing written
    impossible = tmp_path / "none.onnx"
    with pytest.raises(OptimizationError, match="even the first step"):
        train_compress(trained_digits(), digits_training_data(), "prune-finetune", impossible,
                       config=PruneFinetuneConfig(target_ratio=0.9, steps=1, epochs_per_step=0, accuracy_budget=0.0),
                       evaluate_speed=False, quiet=True, report_json=tmp_path / "r.json")
    assert not impossible.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["complete"] is False and "even the first step" in report["reason"]
    assert not list(tmp_path.glob(".accelserve-train-*"))


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelserve", "train-compress", "tests.training.models:trained_digits",
            "--train", "accelserve.examples.digits:digits_training_data", "-o", str(tmp_path / "out.onnx"),
            "--json", str(tmp_path / "report.json"), "--no-speed", *extra]


def test_cli_writes_model_and_report_that_repo_add_takes(tmp_path: Path):
    proc = subprocess.run(_cli(tmp_path, "--method", "qat", "--epochs", "1", "--per-tensor-weights",
                               "--reduce-range", "true"), capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "qat: epoch 1/1" in proc.stderr  # plain progress lines in a log
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] and report["method"] == "qat" and len(report["epochs"]) == 1
    assert report["figures"]["reduce_range"] is True and report["figures"]["ranges_from_training"] > 0
    graph = onnx.load(str(tmp_path / "out.onnx")).graph
    weight_scales = [onnx.numpy_helper.to_array(t).size for t in graph.initializer if t.name.endswith("weight_scale")]
    assert weight_scales and all(size == 1 for size in weight_scales)  # --per-tensor-weights reached the export
    assert report["evaluation"]["candidates"][0]["metric"] > 0.9
    add = subprocess.run([sys.executable, "-m", "accelserve", "repo", "add", str(tmp_path / "out.onnx"), "--repo",
                          str(tmp_path / "repo"), "--name", "digits_qat"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert add.returncode == 0, add.stderr
    bad = subprocess.run(_cli(tmp_path, "--method", "qat", "--student", "x:y"), capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert bad.returncode == 1 and "--student only applies to --method distill" in bad.stderr


def test_sigterm_writes_a_partial_report_and_no_model(tmp_path: Path):
    """What a CI system sends on cancel: the run stops, exits 143, and the JSON report says what was done."""
    proc = subprocess.Popen(_cli(tmp_path, "--method", "distill", "--epochs", "200"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    seen = ""
    while "epoch 1/200" not in seen and time.monotonic() < deadline:  # wait for a finished epoch
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "epoch 1/200" in seen, seen
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] is False and report["reason"] == "interrupted (SIGTERM)" and report["epochs"]
    assert not (tmp_path / "out.onnx").exists()
    assert not list(tmp_path.glob(".accelserve-train-*"))
    assert "Traceback" not in err
