"""TensorFlow / Keras -> ONNX exporter: every source kind, names, dynamic batch, verification, bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest

from accelserve.errors import (
    ExportError,
    InvalidInputError,
    InvalidModelError,
    MissingDependencyError,
    VerificationError,
)
from accelserve.onnx_io import onnxruntime_limits
from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

tensorflow = pytest.mark.tensorflow


@pytest.fixture(scope="module")
def tfm() -> ModuleType:
    """The fixture models (imports TensorFlow; skips the test when it is not installed)."""
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'accelserve[tensorflow]')")
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install 'accelserve[tensorflow]')")
    from tests.fixtures import tf_models

    return tf_models


@pytest.fixture(scope="module")
def export_tensorflow(tfm: ModuleType) -> Any:
    from accelserve.exporters.tensorflow_exporter import export_tensorflow

    return export_tensorflow


def _io(path: Path) -> tuple[dict[str, list], dict[str, list]]:
    """{name: dims} of the graph inputs and outputs (dims: int or dim_param name)."""
    graph = onnx.load(str(path)).graph

    def dims(v: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


@pytest.fixture(scope="module")
def cnn(tfm: ModuleType, export_tensorflow: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    model = tfm.functional_cnn()
    result = export_tensorflow(model, output=tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return model, result


# --------------------------------------------------------------------------------------------------------------
# Sources


@tensorflow
def test_functional_cnn_keeps_names_nhwc_and_a_dynamic_batch(cnn: tuple[Any, Any]) -> None:
    model, result = cnn
    path = result.artifact.path
    inputs, outputs = _io(path)
    assert inputs == {"image": ["batch", 32, 32, 3]}  # NHWC as the Keras model defines it
    assert outputs == {"logits": ["batch", 10]}
    assert result.artifact.source_framework == "tensorflow"
    assert result.verification.passed
    assert len({c.sample for c in result.verification.comparisons}) == 4  # the sample + 3 random input sets
    assert len({c.shape[0] for c in result.verification.comparisons}) > 1  # varied batch sizes
    proto = onnx.load(str(path))
    assert proto.ir_version <= onnxruntime_limits().max_ir_version
    assert max(i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")) <= 18
    # independent of the exporter's own check: ONNX Runtime vs Keras at a batch size not used in verification
    x = np.random.default_rng(7).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    got = OnnxRuntimeSession(path).run({"image": x})["logits"]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-3, atol=1e-4)
    assert not list(path.parent.glob(".*"))  # no temporary directory left behind


@tensorflow
def test_sequential_model_exports_where_from_keras_fails(tfm: ModuleType, export_tensorflow: Any,
                                                        tmp_path: Path) -> None:
    import tf2onnx

    model = tfm.sequential_mlp()
    # the failure the exporter works around (module docstring): tf2onnx's from_keras on a Keras 3 Sequential model.
    # If a tf2onnx release fixes it, this fails: then the docstring's reason is outdated, not the exporter
    with pytest.raises(KeyError, match="keras_tensor"):
        tf2onnx.convert.from_keras(model, opset=17)
    result = export_tensorflow(model, output=tmp_path / "mlp.onnx")
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"features": ["batch", tfm.MLP_FEATURES]}
    assert outputs == {"probs": ["batch", 3]}
    x = np.random.default_rng(1).normal(size=(4, tfm.MLP_FEATURES)).astype(np.float32)
    got = OnnxRuntimeSession(result.artifact.path).run({"features": x})["probs"]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-3, atol=1e-5)


@tensorflow
def test_subclassed_model_needs_and_uses_input_specs(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    model = tfm.subclassed_model()
    with pytest.raises(InvalidInputError, match="does not define its inputs") as info:
        export_tensorflow(model, output=tmp_path / "sub.onnx")
    assert "--input" in str(info.value)
    assert not (tmp_path / "sub.onnx").exists()

    result = export_tensorflow(model, inputs=["x:2x8:float32"], output=tmp_path / "sub.onnx")
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"x": ["batch", 8]}
    assert outputs == {"output_0": ["batch", 4]}
    assert result.verification.passed


@tensorflow
def test_functional_model_with_dict_inputs_and_outputs(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    keras = tfm.keras
    keras.utils.set_random_seed(0)
    beta, alpha = keras.Input((2,), name="beta"), keras.Input((3,), name="alpha")
    head = keras.layers.Dense(2, name="head")(keras.layers.Concatenate()([alpha, beta]))
    model = keras.Model({"beta": beta, "alpha": alpha},
                        {"out": head, "total": keras.ops.sum(head, axis=-1, keepdims=True)})
    result = export_tensorflow(model, output=tmp_path / "dict.onnx")
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"alpha": ["batch", 3], "beta": ["batch", 2]}
    assert outputs == {"out": ["batch", 2], "total": ["batch", 1]}
    feeds = {"alpha": np.ones((2, 3), np.float32), "beta": np.full((2, 2), 0.5, np.float32)}
    got = OnnxRuntimeSession(result.artifact.path).run(feeds)
    expected = model.predict(feeds, verbose=0)
    for name in ("out", "total"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


@tensorflow
def test_saved_model_directory_with_two_inputs_of_different_dtypes(tfm: ModuleType, export_tensorflow: Any,
                                                                   tmp_path: Path) -> None:
    saved = tfm.save_scoring_saved_model(tmp_path / "scoring")
    result = export_tensorflow(str(saved), output=tmp_path / "scoring.onnx")
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"features": ["batch", 8], "token": ["batch"]}
    assert outputs == {"embedding": ["batch", 4], "score": ["batch", 1]} and list(outputs) == ["embedding", "score"]
    session = OnnxRuntimeSession(result.artifact.path)
    assert [i.dtype for i in session.inputs] == [np.float32, np.int64]
    rng = np.random.default_rng(3)
    feeds = {"features": rng.normal(size=(3, 8)).astype(np.float32), "token": rng.integers(0, 200, 3)}
    expected = tfm.tf.saved_model.load(str(saved)).signatures["serving_default"](
        features=feeds["features"], token=feeds["token"]
    )
    got = session.run(feeds)
    for name in ("score", "embedding"):
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-5)


@tensorflow
def test_keras_files_and_keras_saved_model_give_the_same_model(tfm: ModuleType, export_tensorflow: Any,
                                                              cnn: tuple[Any, Any], tmp_path: Path) -> None:
    model, _ = cnn
    model.save(tmp_path / "cnn.keras")
    from_file = export_tensorflow(tmp_path / "cnn.keras", output=tmp_path / "from_file.onnx")
    assert _io(from_file.artifact.path)[0] == {"image": ["batch", 32, 32, 3]}
    model.save(tmp_path / "cnn.h5")  # the legacy HDF5 format loads too
    from_h5 = export_tensorflow(tmp_path / "cnn.h5", output=tmp_path / "from_h5.onnx")
    assert _io(from_h5.artifact.path) == _io(from_file.artifact.path)
    saved = tfm.save_keras_saved_model(tmp_path / "cnn_saved")
    from_saved = export_tensorflow(str(saved), output=tmp_path / "from_saved.onnx")
    inputs, outputs = _io(from_saved.artifact.path)
    assert inputs == {"image": ["batch", 32, 32, 3]} and list(outputs) == ["output_0"]  # Keras' signature names
    x = np.random.default_rng(5).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    a = OnnxRuntimeSession(from_file.artifact.path).run({"image": x})["logits"]
    b = OnnxRuntimeSession(from_saved.artifact.path).run({"image": x})["output_0"]
    np.testing.assert_allclose(a, model.predict(x, verbose=0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


@tensorflow
def test_tf_function_from_module_attr_string(export_tensorflow: Any, tmp_path: Path) -> None:
    result = export_tensorflow("tests.fixtures.tf_models:weighted_sum", output=tmp_path / "ws.onnx")
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"a": ["batch", 4], "b": ["batch", 4]}
    assert outputs == {"output_0": ["batch"], "output_1": ["batch"]}
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    got = OnnxRuntimeSession(result.artifact.path).run({"a": a, "b": b})
    np.testing.assert_allclose(got["output_0"], (0.25 * a + 0.75 * b).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(got["output_1"], (0.25 * a + 0.75 * b).max(-1), rtol=1e-6)


@tensorflow
def test_factory_from_module_attr_string(export_tensorflow: Any, tmp_path: Path) -> None:
    result = export_tensorflow("tests.fixtures.tf_models:sequential_mlp", output=tmp_path / "mlp.onnx")
    assert list(_io(result.artifact.path)[1]) == ["probs"]


# --------------------------------------------------------------------------------------------------------------
# Options


@tensorflow
def test_input_names_mapped_by_position_are_reported(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    result = export_tensorflow(tfm.sequential_mlp(), inputs=["x:4x8:float32"], output=tmp_path / "m.onnx")
    assert list(_io(result.artifact.path)[0]) == ["x"]
    assert any("'features'" in m and "'x'" in m for m in result.messages)


@tensorflow
def test_fixed_batch(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    result = export_tensorflow(tfm.sequential_mlp(), output=tmp_path / "m.onnx", dynamic_batch=False)
    inputs, outputs = _io(result.artifact.path)
    assert inputs == {"features": [1, 8]} and outputs == {"probs": [1, 3]}


@tensorflow
def test_input_spec_that_contradicts_the_model(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    model = tfm.sequential_mlp()
    with pytest.raises(InvalidInputError, match="dtype int64.*float32"):
        export_tensorflow(model, inputs=["features:1x8:int64"], output=tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match="fixes it at 8"):
        export_tensorflow(model, inputs=["features:1x5:float32"], output=tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match="has 1 input"):
        export_tensorflow(model, inputs=["a:1x8", "b:1x8"], output=tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@tensorflow
def test_failed_verification_writes_nothing(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    # a cosine above 1 cannot be reached: the check must fail and leave no output (nor temporary files)
    with pytest.raises(VerificationError, match="m.onnx was not written"):
        export_tensorflow(tfm.sequential_mlp(), output=tmp_path / "m.onnx", min_cosine=1.5)
    assert not list(tmp_path.iterdir())


@tensorflow
def test_opset_above_tf2onnx_maximum_is_refused(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="opset 19 at most|opset 18 at most"):
        export_tensorflow(tfm.sequential_mlp(), output=tmp_path / "m.onnx", opset=19)


@tensorflow
def test_unknown_option_is_refused(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown export option.*batch_size"):
        export_tensorflow(tfm.sequential_mlp(), output=tmp_path / "m.onnx", batch_size=4)


@tensorflow
def test_load_reference_runs_tensorflow_in_onnx_output_order(tfm: ModuleType, export_tensorflow: Any,
                                                             tmp_path: Path) -> None:
    from accelserve.exporters.tensorflow_exporter import TensorFlowExporter
    from accelserve.verify import verify

    saved = tfm.save_scoring_saved_model(tmp_path / "scoring")
    exported = export_tensorflow(str(saved), output=tmp_path / "scoring.onnx")
    reference = TensorFlowExporter().load_reference(str(saved))
    feeds = {"token": np.array([1, 2, 70], np.int64), "features": np.ones((3, 8), np.float32)}
    module = tfm.ScoringModule()  # kept alive: the tf.function method holds it weakly
    expected = module.serve(tfm.tf.constant(feeds["features"]), tfm.tf.constant(feeds["token"]))
    by_name = dict(zip(_io(exported.artifact.path)[1], reference(feeds)))
    for name in ("score", "embedding"):
        np.testing.assert_allclose(by_name[name], expected[name].numpy(), rtol=1e-6)
    assert verify(exported.artifact.path, [feeds], reference).passed  # what `accelserve verify --framework` does


@tensorflow
def test_registered_as_exporter_plugin(tfm: ModuleType) -> None:
    from accelserve import plugins
    from accelserve.exporters.tensorflow_exporter import TensorFlowExporter

    assert plugins.load("exporters", "tensorflow") is TensorFlowExporter
    assert TensorFlowExporter.name == "tensorflow"


# --------------------------------------------------------------------------------------------------------------
# Through the CLI (`accelserve export tensorflow ...`, `accelserve verify --framework tensorflow ...`)


@tensorflow
def test_cli_export_then_verify_a_saved_model(tfm: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from accelserve.cli.main import main

    saved = tfm.save_scoring_saved_model(tmp_path / "scoring")
    out = tmp_path / "scoring.onnx"
    # a signature's outputs come in name order: embedding, score
    assert main(["export", "tensorflow", str(saved), "-o", str(out), "--output-name", "e", "--output-name", "s"]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "input  token: int64 [batch]" in printed
    assert _io(out)[1] == {"e": ["batch", 4], "s": ["batch", 1]}
    assert list(_io(out)[1]) == ["e", "s"]
    # the reference lines up by position, so renamed outputs still verify
    assert main(["verify", str(out), "--framework", "tensorflow", "--source", str(saved)]) == 0
    assert "PASS" in capsys.readouterr().out


@tensorflow
def test_cli_user_error_exits_1_without_traceback(tfm: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from accelserve.cli.main import main

    code = main(["export", "tensorflow", "tests.fixtures.tf_models:uses_lgamma", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Lgamma" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------------------
# Bad input


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@tensorflow
@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda d: d / "missing.keras", InvalidInputError, "does not exist and is not MODULE:ATTR"),
        (lambda d: d, InvalidInputError, "not a TensorFlow SavedModel"),
        (lambda d: _file(d / "m.onnx", b"x"), InvalidInputError, "an ONNX model already"),
        (lambda d: _file(d / "w.npz", b"x"), InvalidInputError, "not a Keras model file"),
        (lambda d: _file(d / "b.keras", b"not a zip"), InvalidModelError, "Keras cannot load"),
        (lambda d: "tests.fixtures.tf_models:not_a_model", InvalidInputError, "is a int, not a Keras model"),
        (lambda d: "tests.fixtures.tf_models:nothing_here", InvalidInputError, "has no attribute 'nothing_here'"),
        (lambda d: "tests.fixtures.tf_models:no_signature", InvalidInputError, "does not define its inputs"),
    ],
    ids=["missing", "plain-dir", "onnx-file", "other-file", "broken-keras", "not-a-model", "no-attr", "no-signature"],
)
def test_bad_sources(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path, make: Any, error: type,
                     pattern: str) -> None:
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    with pytest.raises(error, match=pattern):
        export_tensorflow(make(source_dir), output=tmp_path / "out" / "m.onnx")
    assert not (tmp_path / "out" / "m.onnx").exists()


@tensorflow
def test_saved_model_without_serving_signature_lists_what_it_has(tfm: ModuleType, export_tensorflow: Any,
                                                                 tmp_path: Path) -> None:
    saved = tfm.save_saved_model_without_serving(tmp_path / "other_only")
    with pytest.raises(InvalidModelError, match="no 'serving_default' signature.*'other' \\(features: float32"):
        export_tensorflow(str(saved), output=tmp_path / "m.onnx")
    result = export_tensorflow(str(saved), output=tmp_path / "m.onnx", signature="other")  # the way out it names
    assert set(_io(result.artifact.path)[0]) == {"features", "token"}
    loaded = tfm.tf.saved_model.load(str(saved))  # in memory: the signature itself (its owner kept alive)
    from_function = export_tensorflow(loaded.signatures["other"], output=tmp_path / "f.onnx")
    assert _io(from_function.artifact.path) == _io(result.artifact.path)


@tensorflow
def test_unsupported_op_is_named_with_tf2onnx_message(tfm: ModuleType, export_tensorflow: Any, tmp_path: Path) -> None:
    with pytest.raises(ExportError) as info:
        export_tensorflow(tfm.uses_lgamma, output=tmp_path / "m.onnx")
    text = str(info.value)
    assert "Lgamma (x1)" in text  # the op, counted
    assert "is not supported" in text  # tf2onnx's own message
    assert not list(tmp_path.iterdir())


def test_missing_tensorflow_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # TensorFlow cannot be uninstalled for one test: hide it (a None entry in sys.modules makes import fail)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    from accelserve.exporters.tensorflow_exporter import export_tensorflow

    (tmp_path / "m.keras").write_bytes(b"PK")  # a model file exists: only TensorFlow is missing
    with pytest.raises(MissingDependencyError, match="tensorflow") as info:
        export_tensorflow(tmp_path / "m.keras", output=tmp_path / "m.onnx")
    assert "pip install 'accelserve[tensorflow]'" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()
