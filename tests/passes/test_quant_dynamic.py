"""The int8-dynamic pass (weight-only INT8 MatMuls) and the CPU probe that picks its weight format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from accelserve.artifact import ModelArtifact
from accelserve.evaluate import accuracy_vs_base
from accelserve.passes.base import PassContext
from accelserve.passes import quantize_dynamic
from accelserve.passes.quantize_cpu import CpuFeatures, cpu_features, machine_info, u8s8_saturates
from accelserve.passes.quantize_dynamic import Int8DynamicConfig, Int8DynamicPass, choose_weights
from tests.evaluate.models import make_mlp_block, op_counts


def _feeds(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    return [{"x": rng.standard_normal((2, 6, 16)).astype(np.float32)} for _ in range(n)]


def _run(tmp_path: Path, **config):
    model = make_mlp_block(tmp_path / "mlp.onnx")
    ctx = PassContext(work_dir=tmp_path / "work")
    ctx.work_dir.mkdir(exist_ok=True)
    return model, Int8DynamicPass(config).run(ModelArtifact(model), tmp_path / "dyn.onnx", ctx), ctx


def _weight_arrays(path: Path) -> list[np.ndarray]:
    return [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
            if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) == 2]


def test_matmuls_become_integer_with_int8_weights(tmp_path: Path) -> None:
    model, out, ctx = _run(tmp_path)
    counts = op_counts(out.path)
    onnx.checker.check_model(str(out.path), full_check=True)
    assert counts.get("MatMul", 0) == 0 and counts["MatMulInteger"] == 2 and counts["DynamicQuantizeLinear"] >= 1
    weights = _weight_arrays(out.path)
    assert len(weights) == 2 and all(w.dtype == (np.uint8 if ctx.report["weight_type"] == "uint8" else np.int8)
                                     for w in weights)
    assert ctx.report["integer_nodes"] == 2 and ctx.report["left_in_float"] == []
    assert ctx.report["why"] and out.precision == "int8"
    assert accuracy_vs_base(model, out.path, _feeds()).cosine > 0.99


def test_explicit_uint8_weights_and_reduce_range(tmp_path: Path) -> None:
    _, out, ctx = _run(tmp_path, weight_type="uint8", reduce_range=False)
    assert all(w.dtype == np.uint8 for w in _weight_arrays(out.path)) and ctx.report["weight_type"] == "uint8"
    _, out, ctx = _run(tmp_path, weight_type="int8", reduce_range=True)
    assert all(w.min() >= -64 and w.max() <= 64 for w in _weight_arrays(out.path))
    assert ctx.report["reduce_range"] is True


def test_excluded_matmul_stays_float(tmp_path: Path) -> None:
    _, out, ctx = _run(tmp_path, exclude_nodes=["down_proj"])
    assert op_counts(out.path)["MatMul"] == 1
    assert ctx.report["left_in_float"] == [{"node": "down_proj", "op_type": "MatMul", "reason": "excluded by name"}]


def _probe(monkeypatch: pytest.MonkeyPatch, machine: str, saturates: bool) -> None:
    """Inject the CPU probe's answer, so every branch runs on any CPU (this one may well have VNNI)."""
    fake = CpuFeatures(model="injected", machine=machine, cores=2, flags=("avx2",) if machine == "x86_64" else ())
    monkeypatch.setattr(quantize_dynamic, "cpu_features", lambda: fake)
    monkeypatch.setattr(quantize_dynamic, "u8s8_saturates", lambda: saturates)


@pytest.mark.parametrize("machine, saturates, config, expected, why", [
    ("aarch64", False, {}, ("int8", False), "aarch64: no u8 x s8 saturation issue"),
    ("x86_64", False, {}, ("int8", False), "do not saturate on this CPU"),
    ("x86_64", True, {}, ("int8", True), "7-bit INT8 weights (reduce_range)"),
    ("x86_64", True, {"saturation_fix": "uint8_weights"}, ("uint8", False), "UINT8 weights"),
    ("x86_64", True, {"reduce_range": False}, ("int8", False), "reduce_range was set explicitly"),
    ("x86_64", True, {"weight_type": "int8", "reduce_range": False}, ("int8", False), "as given"),
    ("x86_64", True, {"weight_type": "uint8"}, ("uint8", True), "7-bit"),
], ids=["arm", "vnni", "no-vnni", "no-vnni-uint8-fix", "no-vnni-explicit-rr", "all-explicit", "no-vnni-uint8-given"])
def test_auto_weight_choice_follows_the_kernel_probe(
    monkeypatch: pytest.MonkeyPatch, machine: str, saturates: bool, config: dict, expected: tuple, why: str
) -> None:
    _probe(monkeypatch, machine, saturates)
    weight_type, reduce_range, reason = choose_weights(Int8DynamicConfig(**config))
    assert (weight_type, reduce_range) == expected
    assert why in reason


@pytest.mark.parametrize("saturates", [True, False], ids=["no-vnni", "vnni"])
def test_pass_writes_7_bit_weights_exactly_when_the_probe_says_the_kernels_saturate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, saturates: bool
) -> None:
    _probe(monkeypatch, "x86_64", saturates)
    model, out, ctx = _run(tmp_path)
    weights = _weight_arrays(out.path)
    assert len(weights) == 2 and all(w.dtype == np.int8 for w in weights)
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    if saturates:  # reduce_range: 7-bit weights, so u8 x s8 pair sums cannot overflow 16 bits
        assert widest <= 64 and ctx.report["reduce_range"] is True and "saturate" in ctx.report["why"]
        assert any("7-bit, reduce_range" in line for line in ctx.log)
    else:
        assert widest == 127 and ctx.report["reduce_range"] is False
    assert accuracy_vs_base(model, out.path, _feeds()).cosine > 0.99


def test_cpu_probe_agrees_with_vnni_flags_on_x86() -> None:
    info = machine_info()
    assert info["cores"] >= 1 and isinstance(info["u8s8_saturates"], bool)
    cpu = cpu_features()
    if not cpu.x86 or "avx2" not in cpu.flags:
        pytest.skip("the u8 x s8 saturation question is about x86 AVX2/AVX-512 kernels")
    # VNNI's vpdpbusd accumulates u8 x s8 products in 32 bits; without it vpmaddubsw saturates 16-bit pair sums
    assert u8s8_saturates() is (not cpu.vnni)


def test_accuracy_budget_on_sample_cosine_keeps_worst_matmul_float(tmp_path: Path) -> None:
    from accelserve.calibration import load_calibration

    model = make_mlp_block(tmp_path / "mlp.onnx")
    calib = load_calibration(lambda: _feeds(2), model)
    ctx = PassContext(work_dir=tmp_path / "work", calibration=calib)
    ctx.work_dir.mkdir(exist_ok=True)
    probe = Int8DynamicPass({"sensitivity": True, "sensitivity_metric": "sample_cosine"})
    probe.run(ModelArtifact(model), tmp_path / "probe.onnx", ctx)
    sens = ctx.report["sensitivity"]
    assert sens["metric"] == "sample_cosine" and {x["node"] for x in sens["layers"]} == {"up_proj", "down_proj"}
    budget = sens["full_error"] * 0.99
    ctx = PassContext(work_dir=tmp_path / "work", calibration=calib)
    out = Int8DynamicPass({"accuracy_budget": budget, "sensitivity_metric": "sample_cosine"}).run(
        ModelArtifact(model), tmp_path / "budget.onnx", ctx)
    kept = ctx.report["sensitivity"]["excluded_for_budget"]
    assert kept and kept[0] == sens["layers"][0]["node"] and ctx.report["sensitivity"]["final_error"] <= budget
    assert op_counts(out.path)["MatMul"] == len(kept)
