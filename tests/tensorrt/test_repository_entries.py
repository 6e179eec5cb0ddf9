"""tensorrt_plan entries and the onnxruntime backend's TensorRT accelerator parameters in repositories."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from accelserve.errors import InvalidInputError, MissingDependencyError
from accelserve.tensorrt.accelerator import parse_trt_options, trt_parameter_problems
from accelserve.triton.config import TritonModelOptions, read_config
from accelserve.triton.repository import add_model
from accelserve.triton.validate import validate_repository
from tests.evaluate.models import make_cnn

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except (ImportError, OSError):
    HAVE_TRT = False


def _tree(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _engine_bytes(path: Path) -> Path:
    path.write_bytes(b"not-an-onnx-model" * 64)  # stands for an engine: only TensorRT could read a real one
    return path


def test_plan_entry_from_the_onnx_model_it_was_built_from(tmp_path: Path):
    onnx_model = make_cnn(tmp_path / "cnn.onnx")
    plan = _engine_bytes(tmp_path / "cnn.plan")
    result = add_model(plan, tmp_path / "repo", "cnn_trt", TritonModelOptions(max_batch_size=8),
                       onnx_source=onnx_model)
    config = read_config(result.config_path)
    assert config.platform == "tensorrt_plan" and not config.backend
    assert config.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [1, 8, 8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [5])]
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert (result.version_dir / "model.plan").read_bytes() == plan.read_bytes()
    assert any("not read from the engine" in n for n in result.notes)
    assert validate_repository(tmp_path / "repo") == []
    # a second engine version for the same signature is accepted; an ONNX model under that name is not
    add_model(plan, tmp_path / "repo", "cnn_trt", TritonModelOptions(max_batch_size=8), onnx_source=onnx_model)
    before = _tree(tmp_path / "repo")
    with pytest.raises(Exception, match="platform/backend 'tensorrt_plan' -> 'onnxruntime_onnx'"):
        add_model(onnx_model, tmp_path / "repo", "cnn_trt", TritonModelOptions(max_batch_size=8))
    assert _tree(tmp_path / "repo") == before


@pytest.mark.skipif(HAVE_TRT, reason="checks the error shown when TensorRT is missing; TensorRT is installed here")
def test_plan_without_tensorrt_or_onnx_source_changes_nothing(tmp_path: Path):
    plan = _engine_bytes(tmp_path / "cnn.plan")
    with pytest.raises(MissingDependencyError, match="reading a TensorRT engine's inputs and outputs needs TensorRT"):
        add_model(plan, tmp_path / "repo", "m")
    assert not (tmp_path / "repo").exists()
    proc = subprocess.run([sys.executable, "-m", "accelserve", "repo", "add", str(plan), "--repo",
                           str(tmp_path / "repo"), "--name", "m"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs TensorRT" in proc.stderr and "pass --from-onnx MODEL.onnx" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_plan_options_that_do_not_apply_are_refused(tmp_path: Path):
    onnx_model = make_cnn(tmp_path / "cnn.onnx")
    plan = _engine_bytes(tmp_path / "cnn.plan")
    with pytest.raises(InvalidInputError, match="a .plan is already an engine"):
        add_model(plan, tmp_path / "repo", "m", TritonModelOptions(accelerator="tensorrt"), onnx_source=onnx_model)
    with pytest.raises(InvalidInputError, match="GPU instances"):
        add_model(plan, tmp_path / "repo", "m", TritonModelOptions(instance_kind="cpu"), onnx_source=onnx_model)
    with pytest.raises(Exception, match="--from-onnx describes a TensorRT engine"):
        add_model(onnx_model, tmp_path / "repo", "m", onnx_source=onnx_model)
    assert not (tmp_path / "repo").exists()


def test_validate_flags_an_onnx_file_posing_as_an_engine_and_an_empty_one(tmp_path: Path):
    onnx_model = make_cnn(tmp_path / "cnn.onnx")
    plan = _engine_bytes(tmp_path / "cnn.plan")
    result = add_model(plan, tmp_path / "repo", "m", TritonModelOptions(max_batch_size=8), onnx_source=onnx_model)
    (result.version_dir / "model.plan").write_bytes(onnx_model.read_bytes())
    problems = [str(p) for p in validate_repository(tmp_path / "repo")]
    assert any("is an ONNX model, not a TensorRT engine" in p for p in problems), problems
    (result.version_dir / "model.plan").write_bytes(b"")
    problems = [str(p) for p in validate_repository(tmp_path / "repo")]
    assert any("engine file is empty" in p for p in problems), problems


def test_trt_accelerator_parameters_are_checked_by_name_and_type():
    assert trt_parameter_problems({"precision_mode": "FP16", "trt_engine_cache_enable": "1",
                                   "trt_builder_optimization_level": "3",
                                   "trt_profile_min_shapes": "x:1x3", "trt_profile_opt_shapes": "x:8x3",
                                   "trt_profile_max_shapes": "x:32x3"}) == []
    problems = trt_parameter_problems({"trt_engine_cache_enabel": "1", "precision_mode": "fp16",
                                       "trt_builder_optimization_level": "9", "trt_dla_core": "x",
                                       "trt_timing_cache_enable": "yes", "trt_profile_min_shapes": "x:1x3"})
    text = "\n".join(problems)
    assert "'trt_engine_cache_enabel' (did you mean 'trt_engine_cache_enable'?)" in text
    assert "'precision_mode' must be one of FP32, FP16, INT8" in text
    assert "must be in 0..5" in text and "'trt_dla_core' must be an integer" in text
    assert "'trt_timing_cache_enable' must be one of" in text and "need all three" in text
    assert len(problems) == 6
    with pytest.raises(InvalidInputError, match="not KEY=VALUE"):
        parse_trt_options(["novalue"])


def test_repo_add_writes_checked_trt_options_and_validate_catches_typos(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    options = TritonModelOptions(accelerator="tensorrt", precision="fp16",
                                 trt_parameters=(("trt_timing_cache_enable", "1"),
                                                 ("int8_calibration_table_name", "cnn.calib")))
    result = add_model(model, tmp_path / "repo", "cnn", options)
    (accel,) = read_config(result.config_path).optimization.execution_accelerators.gpu_execution_accelerator
    assert dict(accel.parameters) == {"precision_mode": "FP16", "trt_timing_cache_enable": "1",
                                      "int8_calibration_table_name": "cnn.calib"}
    assert validate_repository(tmp_path / "repo") == []
    text = result.config_path.read_text().replace("trt_timing_cache_enable", "trt_timing_cache_enabled")
    result.config_path.write_text(text)
    problems = [str(p) for p in validate_repository(tmp_path / "repo")]
    assert any("did you mean 'trt_timing_cache_enable'" in p for p in problems), problems
    with pytest.raises(InvalidInputError, match="only apply to the TensorRT accelerator"):
        add_model(model, tmp_path / "repo2", "cnn", TritonModelOptions(trt_parameters=(("trt_dla_core", "0"),)))
    with pytest.raises(InvalidInputError, match="set twice"):
        add_model(model, tmp_path / "repo2", "cnn", TritonModelOptions(
            accelerator="tensorrt", precision="fp16", trt_parameters=(("precision_mode", "FP32"),)))
    assert not (tmp_path / "repo2").exists()
