"""ONNX in and out: broken files get clear errors; save_onnx writes one file or external data, atomically,
clamped to what the installed ONNX Runtime loads."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from accelserve import onnx_io
from accelserve.errors import InvalidModelError
from accelserve.onnx_io import (
    RuntimeLimits,
    check_model,
    external_data_files,
    load_onnx,
    make_runtime_compatible,
    model_opset,
    move_onnx,
    onnxruntime_limits,
    read_onnx,
    save_onnx,
)
from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
from tests.graphs import make_linear_model


def _big_linear(features: int = 64, opset: int = 17) -> onnx.ModelProto:
    """y = x @ W with a 64x64 weight (16 KiB: above save_onnx's 1 KiB external-data threshold)."""
    w = numpy_helper.from_array(np.arange(features * features, dtype=np.float32).reshape(features, features) / 1e3, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(path: Path, features: int = 64) -> np.ndarray:
    x = np.ones((2, features), dtype=np.float32)
    return OnnxRuntimeSession(path).run({"x": x})["y"]


def _no_temp_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------------------
# broken input files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="does not exist"):
        read_onnx(tmp_path / "nope.onnx")


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="is a directory"):
        read_onnx(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        load_onnx(p)


def test_zip_archive_is_named(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", b"x")
    with pytest.raises(InvalidModelError, match="ZIP archive"):
        load_onnx(p)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_is_named(tmp_path: Path, protocol: int) -> None:
    p = tmp_path / "model.onnx"
    p.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(InvalidModelError, match="pickle"):
        load_onnx(p)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    good = make_linear_model(tmp_path / "good.onnx", in_features=32, out_features=32)
    data = good.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidModelError, match="truncated"):
        load_onnx(bad)
    # check_model on a path reads first, so the same clear error comes back (not a checker message)
    with pytest.raises(InvalidModelError, match="truncated"):
        check_model(bad)


def _save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def test_missing_external_data_is_named(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    _save_external(_big_linear(), p, "m.onnx.data")
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(InvalidModelError, match=r"missing: .*m\.onnx\.data"):
        load_onnx(p)


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd"])
def test_external_data_escaping_the_directory_is_refused(tmp_path: Path, location: str) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    p = model_dir / "m.onnx"
    _save_external(_big_linear(), p, "m.onnx.data")
    model = onnx.load(str(p), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(p))
    (tmp_path / "outside.data").write_bytes((model_dir / "m.onnx.data").read_bytes())
    with pytest.raises(InvalidModelError, match="outside the model's directory"):
        load_onnx(p)


def test_external_data_shorter_than_declared(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    _save_external(_big_linear(), p, "m.onnx.data")
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InvalidModelError, match="external data"):
        load_onnx(p)


def test_checker_failure_names_the_model(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["not_defined"], ["y"])], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "broken.onnx"
    onnx.save(model, str(p))
    with pytest.raises(InvalidModelError, match=r"broken\.onnx fails the ONNX checker"):
        load_onnx(p)
    with pytest.raises(InvalidModelError, match="fails the ONNX checker"):
        check_model(model)


def test_load_onnx_infers_shapes(tmp_path: Path) -> None:
    path = make_linear_model(tmp_path / "lin.onnx")
    model = load_onnx(path)
    inferred = {v.name for v in model.graph.value_info}
    assert {"mm", "pre"} <= inferred


# --------------------------------------------------------------------------------------------------------------
# save_onnx


def test_save_small_model_as_one_file(tmp_path: Path) -> None:
    p = tmp_path / "out" / "m.onnx"
    compat = save_onnx(_big_linear(), p)
    assert compat.changes == []
    assert sorted(f.name for f in p.parent.iterdir()) == ["m.onnx"]
    assert external_data_files(read_onnx(p, load_external_data=False), p.parent) == []
    np.testing.assert_allclose(_run(p), np.ones((2, 64), np.float32) @ numpy_helper.to_array(_big_linear().graph.initializer[0]))


def test_save_with_external_data_and_back_to_one_file(tmp_path: Path) -> None:
    model = _big_linear()
    expected = _run_model_in_memory(model)
    p = tmp_path / "m.onnx"
    save_onnx(model, p, external_data=True)
    data = tmp_path / "m.onnx.data"
    assert data.exists() and data.stat().st_size >= 64 * 64 * 4
    assert external_data_files(read_onnx(p, load_external_data=False), tmp_path) == [data]
    np.testing.assert_allclose(_run(p), expected)
    # the caller's model keeps its weights in memory
    assert not any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert len(model.graph.initializer[0].raw_data) == 64 * 64 * 4
    # saving it again as one file replaces the model and removes the stale .data file
    save_onnx(model, p)
    assert not data.exists()
    np.testing.assert_allclose(_run(p), expected)
    assert _no_temp_left(tmp_path)


def test_models_over_two_gb_keep_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A >2 GB model cannot be built in a unit test: lower the threshold instead (the decision is the same code).
    monkeypatch.setattr(onnx_io, "TWO_GB", 1000)
    p = tmp_path / "m.onnx"
    save_onnx(_big_linear(), p)
    assert (tmp_path / "m.onnx.data").exists()
    assert _run(p).shape == (2, 64)


def test_save_refuses_one_file_without_loaded_external_data(tmp_path: Path) -> None:
    src = tmp_path / "src.onnx"
    _save_external(_big_linear(), src, "src.onnx.data")
    header = read_onnx(src, load_external_data=False)
    with pytest.raises(InvalidModelError, match="external data was not loaded"):
        save_onnx(header, tmp_path / "dst.onnx", external_data=False)
    assert not (tmp_path / "dst.onnx").exists()
    assert _no_temp_left(tmp_path)


def test_failed_save_leaves_previous_file_untouched(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    save_onnx(_big_linear(), p)
    before = p.read_bytes()
    src = tmp_path / "ext" / "src.onnx"
    src.parent.mkdir()
    _save_external(_big_linear(features=8), src, "src.onnx.data")
    with pytest.raises(InvalidModelError):
        save_onnx(read_onnx(src, load_external_data=False), p, external_data=False)
    assert p.read_bytes() == before
    assert _no_temp_left(tmp_path)


def _run_model_in_memory(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.ones((2, 64), np.float32)})[0]


# --------------------------------------------------------------------------------------------------------------
# runtime limits and clamping


def test_onnxruntime_limits_load_in_onnxruntime(tmp_path: Path) -> None:
    limits = onnxruntime_limits()
    assert limits.max_ir_version >= 7 and limits.max_opset >= 13
    model = _big_linear(opset=min(limits.max_opset, onnx.defs.onnx_opset_version()))
    model.ir_version = limits.max_ir_version
    p = tmp_path / "at_limit.onnx"
    onnx.save(model, str(p))
    assert _run(p).shape == (2, 64)


def test_ir_version_above_the_runtime_is_clamped(tmp_path: Path) -> None:
    limits = onnxruntime_limits()
    model = _big_linear()
    model.ir_version = limits.max_ir_version + 1
    p = tmp_path / "future.onnx"
    compat = save_onnx(model, p)
    assert any(c.startswith(f"IR version {limits.max_ir_version + 1} -> {limits.max_ir_version}") for c in compat.changes)
    assert read_onnx(p).ir_version == limits.max_ir_version
    assert _run(p).shape == (2, 64)


def test_opset_above_the_limit_is_converted_down(tmp_path: Path) -> None:
    model = _big_linear(opset=17)
    compat = make_runtime_compatible(model, RuntimeLimits(max_ir_version=8, max_opset=13))
    assert compat.changes == ["opset 17 -> 13 (ONNX Runtime's maximum)"]
    assert model_opset(model) == 13 and model.ir_version == 8
    p = tmp_path / "m13.onnx"
    save_onnx(model, p, runtime_compatible=False)
    assert _run(p).shape == (2, 64)


def test_save_without_runtime_compat_keeps_versions(tmp_path: Path) -> None:
    model = _big_linear()
    model.ir_version = onnxruntime_limits().max_ir_version + 1
    p = tmp_path / "raw.onnx"
    assert save_onnx(model, p, runtime_compatible=False).changes == []
    assert read_onnx(p).ir_version == onnxruntime_limits().max_ir_version + 1


# --------------------------------------------------------------------------------------------------------------
# move_onnx


def test_move_onnx_moves_external_data(tmp_path: Path) -> None:
    src_dir, dst_dir = tmp_path / "a", tmp_path / "b"
    src_dir.mkdir()
    src = src_dir / "m.onnx"
    save_onnx(_big_linear(), src, external_data=True)
    move_onnx(src, dst_dir / "m.onnx")
    assert sorted(f.name for f in dst_dir.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert list(src_dir.iterdir()) == []
    assert _run(dst_dir / "m.onnx").shape == (2, 64)


def test_move_onnx_refuses_to_rename_a_model_with_external_data(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    save_onnx(_big_linear(), src, external_data=True)
    with pytest.raises(ValueError, match="external data"):
        move_onnx(src, tmp_path / "other.onnx")


def test_axis_bounds_become_per_input_max_shapes() -> None:
    from onnx import TensorProto, helper

    from accelserve.onnx_io import axis_bounds, input_max_shapes, set_axis_bounds

    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq", 4]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "other"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq", 4])],
    )
    model = helper.make_model(graph)
    assert axis_bounds(model) == {} and input_max_shapes(model, batched=True) == {}
    set_axis_bounds(model, {"seq": 128})
    set_axis_bounds(model, {"seq": 64})  # replaces, never duplicates
    assert [p.key for p in model.metadata_props] == ["accelserve.axis_max_sizes"]
    assert axis_bounds(model) == {"seq": 64}
    assert input_max_shapes(model, batched=True) == {"ids": [64, 4]}
    assert input_max_shapes(model, batched=False) == {"ids": [-1, 64, 4]}
