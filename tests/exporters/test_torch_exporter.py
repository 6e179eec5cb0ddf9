"""PyTorch -> ONNX exporter: dynamic axes that really stay dynamic, every source kind, verification, bad input."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from accelserve.errors import ExportError, InvalidInputError, MissingDependencyError, VerificationError
from accelserve.exporters.base import ExportOptions
from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
from accelserve.specs import InputSpec

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'accelserve[torch]')")

from accelserve.exporters.torch_exporter import TorchExporter, export_torch  # noqa: E402
from accelserve.exporters.torch_loading import archive_kind, load_torch_model  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    # TorchScript is deprecated in torch 2.13; the archives are still a supported input
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

MODELS = Path(__file__).with_name("torch_models.py")
FAST = ExportOptions(verify_random_inputs=1)


def src(attr: str) -> str:
    return f"{MODELS}:{attr}"


def _dims(path: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(values: Any) -> dict[str, list[Any]]:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return dims(graph.input), dims(graph.output)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _export(source: Any, specs: list[str], out: Path, options: ExportOptions = FAST) -> Any:
    return TorchExporter().export(source, [InputSpec.parse(s) for s in specs], out, replace(options))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch_export")


@pytest.fixture(scope="module")
def models() -> Any:
    from accelserve.examples import models

    return models


@pytest.fixture(scope="module")
def encoder_onnx(workdir: Path) -> tuple[Path, Any]:
    out = workdir / "encoder" / "encoder.onnx"
    result = _export("accelserve.examples.models:tiny_encoder", ["input_ids:1xseq=16:int64"], out,
                     ExportOptions(verify_random_inputs=2))
    return out, result


@pytest.fixture(scope="module")
def mlp_onnx(workdir: Path) -> Path:
    out = workdir / "mlp.onnx"
    _export(src("mlp"), ["x:2x8"], out)
    return out


# --------------------------------------------------------------------------------------------------------------
# dynamic axes


def test_transformer_encoder_batch_and_seq_stay_dynamic(encoder_onnx: tuple[Path, Any], models: Any) -> None:
    path, result = encoder_onnx
    inputs, outputs = _dims(path)
    assert inputs == {"input_ids": ["batch", "seq"]}
    assert outputs == {"output": ["batch", 64]}
    session = OnnxRuntimeSession(path)
    model = models.tiny_encoder()
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 1), (1, 7), (3, 5), (2, 33), (4, 64)]:
        ids = rng.integers(0, 1000, size=(batch, seq), dtype=np.int64)
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).numpy()
        actual = session.run({"input_ids": ids})["output"]
        assert actual.shape == (batch, 64)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-3)


def test_export_result_and_single_file(encoder_onnx: tuple[Path, Any]) -> None:
    path, result = encoder_onnx
    assert result.artifact.path == path
    assert result.artifact.source_framework == "torch"
    assert result.artifact.history == ("export:torch",)
    assert sorted(p.name for p in path.parent.iterdir()) == ["encoder.onnx"]  # no .data, no temp directory
    report = result.verification
    assert report.passed and len({c.sample for c in report.comparisons}) == 3  # sample + 2 random sets
    meta = result.artifact.metadata
    assert meta["inputs"] == {"input_ids": ["batch", "seq"]}
    assert meta["opset"] == 20 and meta["verification"]["passed"] is True


def test_shared_axis_name_is_one_dim(workdir: Path) -> None:
    tokens, mask = InputSpec.parse("tokens:2xseq=5x8"), InputSpec.parse("mask:2xseq")
    mask = replace(mask, low=0.0, high=1.0)
    out = workdir / "masked.onnx"
    result = TorchExporter().export(src("MaskedMean"), [tokens, mask], out, replace(FAST))
    assert result.verification.passed
    inputs, outputs = _dims(out)
    assert inputs == {"tokens": ["batch", "seq", 8], "mask": ["batch", "seq"]}
    assert outputs["output"] == ["batch", 8]
    # given in another order, inputs named like forward()'s parameters bind by name
    swapped = workdir / "masked_swapped.onnx"
    assert TorchExporter().export(src("MaskedMean"), [mask, tokens], swapped, replace(FAST)).verification.passed
    assert list(_dims(swapped)[0]) == ["tokens", "mask"]
    session = OnnxRuntimeSession(out)
    for b, s in [(1, 3), (4, 11)]:
        got = session.run({"tokens": np.ones((b, s, 8), np.float32), "mask": np.ones((b, s), np.float32)})
        assert got["output"].shape == (b, 8)


def test_axes_the_model_forces_equal_need_one_name(workdir: Path) -> None:
    out = workdir / "pair.onnx"
    with pytest.raises(ExportError, match="must always be equal") as info:
        _export(src("PairSum"), ["a:2xn=3", "b:2xm=3"], out)
    assert "same name" in info.value.hint
    result = _export(src("PairSum"), ["a:2xn=3", "b:2xn=3"], out)
    assert result.verification.passed
    assert _dims(out)[0] == {"a": ["batch", "n"], "b": ["batch", "n"]}


def test_axis_fixed_by_the_code_is_an_export_error(workdir: Path) -> None:
    out = workdir / "fixed.onnx"
    with pytest.raises(ExportError, match=r"batch.*\n?.*(specialized|constant)") as info:
        _export(src("FixedBatch"), ["x:4x3"], out)
    assert "static" in str(info.value.hint)
    assert not out.exists()


def test_axis_the_code_bounds_stays_dynamic_with_the_bound_reported(workdir: Path) -> None:
    out = workdir / "positions.onnx"
    # a sample at the bound: verification's random sizes must stay within it
    result = _export(src("LearnedPositions"), ["input_ids:2xseq=32:int64"], out, replace(FAST, verify_random_inputs=3))
    assert result.verification.passed
    assert any("'seq'" in m and "32" in m for m in result.messages), result.messages
    assert _dims(out)[0] == {"input_ids": ["batch", "seq"]}
    session = OnnxRuntimeSession(out)
    for seq in (3, 32):  # other lengths within the bound run
        ids = np.random.default_rng(seq).integers(0, 100, size=(2, seq)).astype(np.int64)
        assert session.run({"input_ids": ids})["output"].shape == (2, 8)


def test_token_input_with_fixed_length_is_warned_about(workdir: Path) -> None:
    out = workdir / "positions_fixed.onnx"
    result = _export(src("LearnedPositions"), ["input_ids:2x12:int64"], out, replace(FAST, verify_random_inputs=0))
    warnings = [m for m in result.messages if m.startswith("warning:")]
    assert len(warnings) == 1 and "'input_ids'" in warnings[0] and "input_ids:2xseq=12:int64" in warnings[0]
    assert _dims(out)[0] == {"input_ids": ["batch", 12]}  # what the warning is about
    named = _export(src("LearnedPositions"), ["input_ids:2xseq=12:int64"], workdir / "positions_named.onnx",
                    replace(FAST, verify_random_inputs=0))
    assert not [m for m in named.messages if m.startswith("warning:")]


def test_static_batch_spec(workdir: Path) -> None:
    out = workdir / "fixed_static.onnx"
    spec = InputSpec.parse("x:4x3", dynamic_batch=False)
    result = TorchExporter().export(src("FixedBatch"), [spec], out, replace(FAST))
    assert result.verification.passed
    assert _dims(out)[0] == {"x": [4, 3]}


# --------------------------------------------------------------------------------------------------------------
# Python API


def test_export_torch_api_with_tensor_sample(workdir: Path, models: Any) -> None:
    import accelserve

    out = workdir / "cnn.onnx"
    result = accelserve.export_torch(models.small_cnn(), torch.randn(1, 3, 32, 32), out, verify_random_inputs=1)
    assert result.verification.passed
    assert _dims(out) == ({"input": ["batch", 3, 32, 32]}, {"output": ["batch", 10]})
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = models.small_cnn()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OnnxRuntimeSession(out).run({"input": x})["output"], expected, atol=1e-4)


def test_export_torch_api_dict_sample_dynamic_axes_and_int_range(workdir: Path, models: Any) -> None:
    out = workdir / "enc_api.onnx"
    ids = torch.randint(0, 1000, (2, 12))
    result = export_torch(models.tiny_encoder(), {"input_ids": ids}, out, dynamic_axes={"input_ids": {1: "seq"}},
                          verify_random_inputs=1)
    assert _dims(out)[0] == {"input_ids": ["batch", "seq"]}
    assert result.verification.passed


def test_export_torch_dict_outputs_are_named(workdir: Path) -> None:
    out = workdir / "dict.onnx"
    result = export_torch(src("DictOut"), np.ones((2, 5), np.float32), out, verify_random_inputs=1)
    assert list(_dims(out)[1]) == ["logits", "probs"]
    assert result.verification.passed


def test_export_torch_output_names_and_opset(workdir: Path) -> None:
    out = workdir / "named.onnx"
    export_torch(src("mlp"), None, out, inputs=["x:1x8"], output_names=["scores"], opset=18, verify=False)
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["scores"]
    assert {i.version for i in model.opset_import if i.domain in ("", "ai.onnx")} == {18}


def test_export_torch_rejects_unknown_option(workdir: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'atoll'"):
        export_torch(src("mlp"), None, workdir / "x.onnx", inputs=["x:1x8"], atoll=1)


# --------------------------------------------------------------------------------------------------------------
# source kinds


@pytest.fixture(scope="module")
def archives(workdir: Path) -> dict[str, Path]:
    from tests_torch_models import mlp  # type: ignore[import-not-found]

    model = mlp()
    with torch.no_grad():  # "trained" weights, unlike the ones MLP() starts with
        for param in model.parameters():
            param.mul_(-1.5).add_(0.25)
    x = torch.randn(2, 8)
    paths = {k: workdir / "archives" / name for k, name in {
        "script": "mlp_script.pt", "trace": "mlp_trace.pt", "pt2": "mlp.pt2", "sd": "mlp_sd.pt",
        "ckpt": "mlp_ckpt.pth", "pickled": "mlp_pickled.pt", "legacy": "mlp_legacy.pt"}.items()}
    paths["script"].parent.mkdir()
    torch.jit.save(torch.jit.script(model), str(paths["script"]))
    torch.jit.save(torch.jit.trace(model, x), str(paths["trace"]))
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(paths["pt2"]))
    torch.save(model.state_dict(), paths["sd"])
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               paths["ckpt"])
    torch.save(model, paths["pickled"])
    torch.save(model.state_dict(), paths["legacy"], _use_new_zipfile_serialization=False)
    return paths


@pytest.fixture(scope="module", autouse=True)
def _models_importable() -> Any:
    """The archives pickle classes by module name: make torch_models importable as a module for them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_torch_models", MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tests_torch_models"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("tests_torch_models", None)


def test_archive_kinds(archives: dict[str, Path]) -> None:
    kinds = {k: archive_kind(p) for k, p in archives.items()}
    assert kinds == {"script": "torchscript", "trace": "torchscript", "pt2": "exported_program", "sd": "checkpoint",
                     "ckpt": "checkpoint", "pickled": "checkpoint", "legacy": "checkpoint"}


@pytest.mark.parametrize("kind", ["script", "trace", "pt2"])
def test_export_archives(archives: dict[str, Path], kind: str, workdir: Path) -> None:
    out = workdir / f"from_{kind}.onnx"
    result = _export(str(archives[kind]), ["x:2x8"], out)
    assert result.verification.passed
    assert _dims(out)[0] == {"x": ["batch", 8]}
    assert OnnxRuntimeSession(out).run({"x": np.ones((7, 8), np.float32)})["output"].shape == (7, 4)


@pytest.mark.parametrize("kind", ["sd", "ckpt", "legacy"])
def test_state_dict_checkpoint_with_factory(archives: dict[str, Path], kind: str, workdir: Path) -> None:
    out = workdir / f"from_{kind}.onnx"
    options = ExportOptions(verify_random_inputs=1, factory=src("MLP"))
    result = _export(str(archives[kind]), ["x:1x8"], out, options)
    assert result.verification.passed
    # the ONNX model computes with the checkpoint's weights, not the ones the factory starts with
    trained = torch.jit.load(str(archives["script"]))
    fresh = load_torch_model(src("MLP")).module
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
        untrained = fresh(torch.from_numpy(x)).numpy()
    actual = OnnxRuntimeSession(out).run({"x": x})["output"]
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert not np.allclose(actual, untrained, atol=1e-3)


def test_checkpoint_without_factory(archives: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="state-dict checkpoint") as info:
        load_torch_model(str(archives["sd"]))
    assert "--factory" in info.value.hint


def test_pickled_model_is_refused(archives: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match=r"pickled Python objects.*tests_torch_models\.MLP.*weights_only"):
        load_torch_model(str(archives["pickled"]), factory=src("MLP"))


def test_checkpoint_that_does_not_fit_the_factory(archives: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="do not fit the model built by"):
        load_torch_model(str(archives["sd"]), factory=src("MaskedMean"))


def test_factory_only_with_checkpoints(archives: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="only used with a state-dict checkpoint"):
        load_torch_model(str(archives["pt2"]), factory=src("MLP"))
    with pytest.raises(InvalidInputError, match="only used with a state-dict checkpoint"):
        load_torch_model(src("mlp"), factory=src("MLP"))


def test_unknown_files(workdir: Path, mlp_onnx: Path) -> None:
    junk = workdir / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(InvalidInputError, match="neither a TorchScript archive"):
        load_torch_model(str(junk))
    with pytest.raises(InvalidInputError, match="ONNX model already"):
        load_torch_model(str(mlp_onnx))
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_torch_model(str(workdir / "missing.pt"))


@pytest.mark.parametrize("attr", ["MLP", "mlp", "mlp_instance"])
def test_module_attr_forms(attr: str) -> None:
    loaded = load_torch_model(src(attr))
    assert isinstance(loaded.module, torch.nn.Module) and not loaded.module.training


def test_dotted_module_name() -> None:
    loaded = load_torch_model("accelserve.examples.models:SmallCNN")
    assert type(loaded.module).__name__ == "SmallCNN"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (src("nope"), r"has no attribute 'nope'"),
        ("accelserve.examples.models:small_cnn.nope", r"has no attribute 'nope'"),
        ("no_such_module_xyz:Net", r"no Python module named 'no_such_module_xyz'"),
        ("no_such_dir/model.py:Net", r"Python file no_such_dir/model.py does not exist"),
        (src("NeedsArgs"), r"needs argument\(s\) width"),
        (src("broken"), r"factory exploded"),
        (src("not_a_model"), r"is a int, not a torch.nn.Module"),
        ("just_a_word", r"neither MODULE:ATTR nor an existing file"),
    ],
)
def test_bad_sources(source: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        load_torch_model(source)


# --------------------------------------------------------------------------------------------------------------
# bad inputs and verification


def test_wrong_rank_sample_input(workdir: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"failed on inputs input\[2x32 float32\].*4D") as info:
        _export("accelserve.examples.models:small_cnn", ["input:2x32"], workdir / "rank.onnx")
    assert "--input shapes" in info.value.hint
    assert not (workdir / "rank.onnx").exists()


def test_wrong_number_of_inputs(workdir: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"forward\(x\) takes 1 tensor\(s\), but 2 input\(s\)"):
        _export(src("mlp"), ["x:2x8", "y:2x8"], workdir / "two.onnx")
    with pytest.raises(InvalidInputError, match="needs one --input"):
        TorchExporter().export(src("mlp"), [], workdir / "none.onnx")


def test_verification_failure_writes_nothing(workdir: Path) -> None:
    out_dir = workdir / "noisy"
    out_dir.mkdir()
    out = out_dir / "noisy.onnx"
    with pytest.raises(VerificationError, match=r"(?s)was not written.*max_abs_err.*FAIL") as info:
        _export(src("Noisy"), ["x:2x16"], out)
    assert "--no-verify" in info.value.hint
    assert list(out_dir.iterdir()) == []
    result = _export(src("Noisy"), ["x:2x16"], out, ExportOptions(verify=False))
    assert result.verification is None and out.exists()


def test_external_data_then_single_file(workdir: Path) -> None:
    out_dir = workdir / "ext"
    out = out_dir / "mlp.onnx"
    _export(src("mlp"), ["x:2x8"], out, ExportOptions(verify_random_inputs=1, external_data=True))
    assert sorted(p.name for p in out_dir.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    assert OnnxRuntimeSession(out).run({"x": np.ones((3, 8), np.float32)})["output"].shape == (3, 4)
    _export(src("mlp"), ["x:2x8"], out)  # the default: one file; the stale .data goes
    assert sorted(p.name for p in out_dir.iterdir()) == ["mlp.onnx"]


def test_load_reference_runs_the_model(models: Any) -> None:
    ref = TorchExporter().load_reference("accelserve.examples.models:small_cnn")
    x = np.zeros((2, 3, 32, 32), np.float32)
    (out,) = ref({"input": x})
    with torch.no_grad():
        np.testing.assert_allclose(out, models.small_cnn()(torch.from_numpy(x)).numpy())


def test_output_must_be_onnx(workdir: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"should end in \.onnx"):
        _export(src("mlp"), ["x:2x8"], workdir / "model.pt")


def test_missing_torch_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch is installed here; hiding it from the import system is how "not installed" looks to accelserve
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="needs the Python package 'torch'") as info:
        load_torch_model("pkg:Model")
    assert "accelserve[torch]" in info.value.hint
    with pytest.raises(MissingDependencyError):
        TorchExporter().export("pkg:Model", [InputSpec.parse("x:1x2")], Path("unused.onnx"))


def test_user_files_import_under_stable_names(tmp_path: Path) -> None:
    """The module name lands in the ONNX metadata: no per-process hash; two files of one stem stay apart."""
    from accelserve.exporters.torch_loading import resolve_object

    for sub, value in (("a", 1), ("b", 2)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "stable_stem_model.py").write_text(f"VALUE = {value}\n")
    try:
        assert resolve_object(f"{tmp_path / 'a' / 'stable_stem_model.py'}:VALUE") == 1
        assert resolve_object(f"{tmp_path / 'b' / 'stable_stem_model.py'}:VALUE") == 2
        assert resolve_object(f"{tmp_path / 'a' / 'stable_stem_model.py'}:VALUE") == 1
        names = sorted(n for n in sys.modules if n.startswith("_accelserve_user_stable_stem_model"))
        assert names[0] == "_accelserve_user_stable_stem_model" and len(names) == 2
    finally:
        for n in [n for n in sys.modules if n.startswith("_accelserve_user_stable_stem_model")]:
            del sys.modules[n]


def test_the_bound_reaches_the_repository_entry(workdir: Path, tmp_path: Path) -> None:
    import json

    from accelserve.onnx_io import axis_bounds, read_onnx
    from accelserve.triton.python_model.model import MAX_SHAPE_PARAMETER
    from accelserve.triton.repository import add_model

    out = workdir / "positions_bound.onnx"
    result = _export(src("LearnedPositions"), ["input_ids:2xseq=32:int64"], out, replace(FAST))
    assert axis_bounds(read_onnx(out)) == {"seq": 32} == result.artifact.metadata["axis_max_sizes"]
    added = add_model(out, tmp_path / "repo", "positions")
    assert json.loads(added.config.parameters[MAX_SHAPE_PARAMETER].string_value) == {"input_ids": [32]}
    assert any("input_ids dim 1 <= 32" in note for note in added.notes), added.notes
