"""Engine build plans (precision flags, sparsity, profiles, trtexec line) decided without TensorRT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from accelserve.errors import InvalidInputError, MissingDependencyError
from accelserve.tensorrt.build import SPARSE_MARKER, EngineBuildConfig, build_engine, plan_build
from accelserve.tensorrt.profiles import InputProfile, derive_profiles, parse_profile_override, trtexec_shapes
from tests.evaluate.models import make_cnn

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except (ImportError, OSError):
    HAVE_TRT = False


def _encoder(path: Path) -> Path:
    """ids[batch, seq] (int64) -> Gather -> out[batch, seq, 4]."""
    table = onnx.numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"])], "enc",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4])], initializer=[table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_batch_profile_covers_every_batch_triton_sends(tmp_path: Path):
    model = onnx.load(str(make_cnn(tmp_path / "cnn.onnx")))
    (p,) = derive_profiles(model, max_batch_size=16)
    assert (p.min, p.opt, p.max) == ((1, 1, 8, 8), (16, 1, 8, 8), (16, 1, 8, 8))
    (p,) = derive_profiles(model, max_batch_size=16, opt_batch_size=4)
    assert p.opt == (4, 1, 8, 8)
    assert trtexec_shapes([p]) == {"--minShapes": "x:1x1x8x8", "--optShapes": "x:4x1x8x8", "--maxShapes": "x:16x1x8x8"}


def test_other_dynamic_axes_need_a_bound(tmp_path: Path):
    model = onnx.load(str(_encoder(tmp_path / "enc.onnx")))
    with pytest.raises(InvalidInputError, match="axis 'seq' is dynamic and has no known bound") as err:
        derive_profiles(model, max_batch_size=8)
    assert "--profile ids:" in err.value.hint
    (p,) = derive_profiles(model, max_batch_size=8, dim_bounds={"seq": 128})
    assert (p.min, p.max) == ((1, 1), (8, 128))
    (p,) = derive_profiles(model, max_batch_size=8, overrides=[parse_profile_override("ids:1x1,8x64,8x256")])
    assert p == InputProfile("ids", (1, 1), (8, 64), (8, 256))


@pytest.mark.parametrize("text, match", [
    ("ids:1x1,8x64", "one shape or three"),
    ("ids:1x1,8x64,4x64", "min <= opt <= max"),
    ("ids:1xa", "not a shape"),
    ("1x1,8x64,8x64", "not NAME:MIN,OPT,MAX"),
])
def test_bad_profile_overrides(text: str, match: str):
    with pytest.raises(InvalidInputError, match=match):
        parse_profile_override(text)


def test_override_must_serve_max_batch_and_keep_fixed_dims(tmp_path: Path):
    model = onnx.load(str(make_cnn(tmp_path / "cnn.onnx")))
    with pytest.raises(InvalidInputError, match="allows batch <= 8, but Triton may send up to max_batch_size=16"):
        derive_profiles(model, max_batch_size=16, overrides=[parse_profile_override("x:1x1x8x8,8x1x8x8,8x1x8x8")])
    with pytest.raises(InvalidInputError, match="axis 2 is fixed at 8"):
        derive_profiles(model, max_batch_size=16, overrides=[parse_profile_override("x:1x1x9x8,16x1x9x8,16x1x9x8")])
    with pytest.raises(InvalidInputError, match="unknown input"):
        derive_profiles(model, max_batch_size=16, overrides=[parse_profile_override("nope:1x1")])


def test_float_model_gets_fp16_and_fp32_turns_tf32_off(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    plan = plan_build(model, tmp_path / "m.plan")
    assert plan.fp16 and not plan.strongly_typed and not plan.sparse_weights
    argv = plan.trtexec_argv()
    assert "--fp16" in argv and "--stronglyTyped" not in argv and "--noTF32" not in argv
    fp32 = plan_build(model, tmp_path / "m.plan", EngineBuildConfig(precision="fp32"))
    assert not fp32.fp16 and not fp32.tf32 and "--noTF32" in fp32.trtexec_argv()


def test_qdq_model_is_strongly_typed(tmp_path: Path):
    from accelserve.optimize import optimize

    model = make_cnn(tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    q = tmp_path / "q.onnx"
    optimize(model, ["int8"], q, {"target": "tensorrt"}, calibration=str(tmp_path / "calib.npz"), evaluate=False)
    plan = plan_build(q, tmp_path / "q.plan", EngineBuildConfig(precision="fp16"))
    assert plan.strongly_typed and not plan.fp16 and not plan.int8_implicit
    assert "--stronglyTyped" in plan.trtexec_argv() and "--fp16" not in plan.trtexec_argv()
    assert any("ignored" in n for n in plan.notes)
    with pytest.raises(InvalidInputError, match="carries its own scales"):
        plan_build(q, tmp_path / "q.plan", EngineBuildConfig(calibration_cache=tmp_path / "x.calib"))


def test_sparse_weights_follow_the_two_four_marker(tmp_path: Path):
    path = make_cnn(tmp_path / "cnn.onnx")
    model = onnx.load(str(path))
    assert not plan_build(path, tmp_path / "m.plan").sparse_weights
    entry = model.metadata_props.add()
    entry.key, entry.value = SPARSE_MARKER, "true"
    onnx.save(model, str(tmp_path / "sparse.onnx"))
    plan = plan_build(tmp_path / "sparse.onnx", tmp_path / "m.plan")
    assert plan.sparse_weights and "--sparsity=enable" in plan.trtexec_argv()
    assert not plan_build(tmp_path / "sparse.onnx", tmp_path / "m.plan",
                          EngineBuildConfig(sparse_weights=False)).sparse_weights


def test_implicit_int8_needs_a_calibration_cache(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(InvalidInputError, match="needs --calibration-cache"):
        plan_build(model, tmp_path / "m.plan", EngineBuildConfig(precision="int8"))
    missing = EngineBuildConfig(precision="int8", calibration_cache=tmp_path / "none.calib")
    with pytest.raises(InvalidInputError, match="does not exist and no calibration data"):
        plan_build(model, tmp_path / "m.plan", missing)
    plan = plan_build(model, tmp_path / "m.plan", missing, calibrating=True)
    assert plan.int8_implicit and f"--calib={tmp_path / 'none.calib'}" in plan.trtexec_argv()


def test_trtexec_line_carries_every_build_option(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    config = EngineBuildConfig(timing_cache=tmp_path / "t.cache", optimization_level=4, workspace_bytes=3 * 2**20 + 1,
                               version_compatible=True, hardware_compatibility="ampere+", max_batch_size=8)
    argv = plan_build(model, tmp_path / "m.plan", config).trtexec_argv()
    assert argv[:3] == ["trtexec", f"--onnx={model}", f"--saveEngine={tmp_path / 'm.plan'}"]
    for flag in (f"--timingCacheFile={tmp_path / 't.cache'}", "--builderOptimizationLevel=4",
                 "--memPoolSize=workspace:4", "--versionCompatible", "--hardwareCompatibilityLevel=ampere+",
                 "--maxShapes=x:8x1x8x8"):
        assert flag in argv


def test_unbatched_model_cannot_claim_a_batch(tmp_path: Path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    with pytest.raises(InvalidInputError, match="no dynamic first axis"):
        plan_build(tmp_path / "s.onnx", tmp_path / "s.plan")
    (p,) = plan_build(tmp_path / "s.onnx", tmp_path / "s.plan", EngineBuildConfig(max_batch_size=0)).profiles
    assert p.is_static and p.min == (4, 3)


@pytest.mark.skipif(HAVE_TRT, reason="checks the error shown when TensorRT is missing; TensorRT is installed here")
def test_missing_tensorrt_is_one_clear_error(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(MissingDependencyError, match="needs TensorRT") as err:
        build_engine(model, tmp_path / "m.plan")
    assert "nvcr.io/nvidia/tritonserver" in err.value.hint and "pip install tensorrt" in err.value.hint
    proc = subprocess.run([sys.executable, "-m", "accelserve", "build-engine", str(model), "-o",
                           str(tmp_path / "m.plan")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert "trtexec equivalent" not in proc.stdout  # nothing is planned out loud that cannot be carried out
    assert not (tmp_path / "m.plan").exists()


def test_dry_run_cli_writes_the_plan_report(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    report = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "accelserve", "build-engine", str(model), "-o", str(tmp_path / "m.plan"),
                           "--dry-run", "--max-batch-size", "4", "--report", str(report)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["trtexec"].startswith("trtexec --onnx=") and "--maxShapes=x:4x1x8x8" in data["trtexec"]
    assert data["profiles"][0]["max"] == [4, 1, 8, 8]
    assert "trtexec equivalent: trtexec" in proc.stdout and not (tmp_path / "m.plan").exists()
