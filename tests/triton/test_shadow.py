"""The shadow repository: which models get the ONNX Runtime stand-in, and how their config is rewritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import ServerError
from accelserve.onnx_io import save_onnx
from accelserve.triton.config import TritonModelOptions, read_config
from accelserve.triton.python_model import model as pm
from accelserve.triton.repository import add_model
from accelserve.triton.shadow import (
    ONNX_FILE_PARAMETER,
    PYTHON_MODEL_FILENAME,
    PYTHON_MODEL_SOURCE,
    build_shadow_repository,
    model_backend,
    stand_in_config,
)
from tests.graphs import make_linear_model
from tests.triton.serve_helpers import reference


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def _production_config() -> mc.ModelConfig:
    config = mc.ModelConfig(name="net", platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8,
                            default_model_filename="net.onnx")
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    config.dynamic_batching.preferred_batch_size.extend([4, 8])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accel.parameters["precision_mode"] = "FP16"
    config.optimization.graph.level = 1
    config.model_warmup.add(name="w", batch_size=1)
    config.parameters["intra_op_thread_count"].string_value = "2"
    return config


def test_stand_in_config_runs_on_python_and_keeps_the_serving_settings() -> None:
    original = _production_config()
    new, changes = stand_in_config(original, "net.onnx")

    assert (new.backend, new.platform, new.runtime) == ("python", "", "")
    assert not new.optimization.HasField("execution_accelerators")
    assert new.optimization.graph.level == 1
    assert new.default_model_filename == PYTHON_MODEL_FILENAME
    assert new.parameters[ONNX_FILE_PARAMETER].string_value == "net.onnx"
    assert new.parameters["intra_op_thread_count"].string_value == "2"
    assert [(g.kind, g.count, list(g.gpus)) for g in new.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 4, [])]
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup"):
        assert getattr(new, field) == getattr(original, field), field
    assert original.backend == "onnxruntime" and original.optimization.HasField("execution_accelerators")
    assert any("execution_accelerators" in c for c in changes) and any("KIND_GPU" in c for c in changes)


@pytest.mark.parametrize(
    ("platform", "backend", "expected"),
    [("onnxruntime_onnx", "", "onnxruntime"), ("", "onnxruntime", "onnxruntime"), ("tensorrt_plan", "", "tensorrt"),
     ("ensemble", "", None), ("", "python", "python")],
)
def test_model_backend(platform: str, backend: str, expected: str | None) -> None:
    assert model_backend(mc.ModelConfig(platform=platform, backend=backend)) == expected


@pytest.fixture
def repository(tmp_path: Path) -> tuple[Path, Path]:
    onnx_path = make_linear_model(tmp_path / "linear.onnx")
    repo = tmp_path / "repo"
    add_model(onnx_path, repo, "lin", TritonModelOptions(max_queue_delay_us=1000))
    add_model(onnx_path, repo, "lin", force_new_version=True)  # a second version
    (repo / "lin" / "labels.txt").write_text("a\nb\nc\n")
    native = repo / "pyonly" / "1"
    native.mkdir(parents=True)
    (native / "model.py").write_text("class TritonPythonModel: pass\n")
    (repo / "pyonly" / "config.pbtxt").write_text('name: "pyonly"\nbackend: "python"\n')
    (repo / ".ipynb_checkpoints").mkdir()
    (repo / "README.md").write_text("not a model\n")
    return repo, onnx_path


def test_shadow_links_files_and_rewrites_only_missing_backends(repository: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _ = repository
    before = _tree_digest(repo)
    shadow = build_shadow_repository(repo, tmp_path / "shadow", {"python"})

    assert shadow is not None
    assert set(shadow.stand_ins) == {"lin"} and shadow.native == ["pyonly"]
    assert sorted(p.name for p in shadow.path.iterdir()) == ["lin", "pyonly"]  # no dot-dirs, no stray files
    assert (shadow.path / "pyonly").is_symlink() and (shadow.path / "pyonly").resolve() == (repo / "pyonly").resolve()
    config = read_config(shadow.path / "lin")
    assert config.backend == "python" and config.max_batch_size == 32
    assert config.dynamic_batching == read_config(repo / "lin").dynamic_batching
    assert config.HasField("dynamic_batching")
    for version in ("1", "2"):
        vdir = shadow.path / "lin" / version
        assert (vdir / "model.onnx").is_symlink()
        assert (vdir / "model.onnx").resolve() == (repo / "lin" / version / "model.onnx").resolve()
        assert (vdir / PYTHON_MODEL_FILENAME).resolve() == PYTHON_MODEL_SOURCE.resolve()
    assert (shadow.path / "lin" / "labels.txt").resolve() == (repo / "lin" / "labels.txt").resolve()
    assert _tree_digest(repo) == before  # the user's repository is untouched


def test_no_shadow_when_every_backend_is_available(repository: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _ = repository
    assert build_shadow_repository(repo, tmp_path / "shadow", {"python", "onnxruntime"}) is None
    assert not (tmp_path / "shadow").exists()


def test_a_backend_the_stand_in_cannot_replace_is_a_server_error(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "engine"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.plan").write_bytes(b"ftrt")
    (model_dir / "config.pbtxt").write_text('name: "engine"\nplatform: "tensorrt_plan"\nmax_batch_size: 1\n')
    with pytest.raises(ServerError, match=r"engine \(backend 'tensorrt'\)") as info:
        build_shadow_repository(tmp_path / "repo", tmp_path / "shadow", {"python"})
    assert "--tritonserver" in str(info.value)


def test_stand_in_runs_a_model_with_external_data_through_the_links(tmp_path: Path) -> None:
    src = make_linear_model(tmp_path / "src.onnx", in_features=64, out_features=32)
    model = onnx.load(str(src))
    repo = tmp_path / "repo"
    vdir = repo / "big" / "1"
    vdir.mkdir(parents=True)
    save_onnx(model, vdir / "model.onnx", external_data=True)
    assert (vdir / "model.onnx.data").is_file()
    config = mc.ModelConfig(name="big", platform="onnxruntime_onnx", max_batch_size=4)
    (repo / "big" / "config.pbtxt").write_text(str(config))

    shadow = build_shadow_repository(repo, tmp_path / "shadow", {"python"})
    assert shadow is not None
    assert (shadow.path / "big" / "1" / "model.onnx.data").is_symlink()
    shadow_config = {"parameters": {ONNX_FILE_PARAMETER: {"string_value": "model.onnx"}}}
    path = pm.onnx_model_path(shadow_config, str(shadow.path / "big"), "1")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(reference(Path(path), {"x": x})["y"], reference(src, {"x": x})["y"], rtol=1e-6)
