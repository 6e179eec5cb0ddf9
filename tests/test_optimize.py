"""accelserve.optimize and the `optimize` CLI: recipes, option routing, calibration, atomic output, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from accelserve.cli.main import main
from accelserve.cli.optimize_cmd import OPTION_FLAGS, parse_set
from accelserve.errors import InvalidInputError, OptimizationError, PluginError
from accelserve.optimize import EvaluationSettings, load_pass_class, optimize, parse_recipe, split_options
from tests.evaluate.models import cnn_feeds, op_counts


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in cnn_feeds(count=4)]))
    return tmp_path / "calib.npz"


def test_recipe_parsing_and_option_routing() -> None:
    assert parse_recipe(" simplify, int8 ") == ["simplify", "int8"]
    with pytest.raises(InvalidInputError, match="recipe is empty"):
        parse_recipe(",")
    names = ["simplify", "int8"]
    classes = [load_pass_class(n) for n in names]
    routed = split_options(names, classes, {"target": "tensorrt", "method": "entropy", "backend": "ort"})
    assert routed == [{"target": "tensorrt", "backend": "ort"}, {"target": "tensorrt", "method": "entropy"}]
    with pytest.raises(InvalidInputError, match="--sparsity is not an option of any pass in recipe 'int8'"):
        split_options(["int8"], [classes[1]], {"sparsity": 0.5})
    with pytest.raises(PluginError) as err:
        load_pass_class("int9")
    assert err.value.message == "no pass named 'int9'"  # not "no passe named"


def test_simplify_then_int8_writes_model_and_reports(cnn: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cnn_int8.onnx"
    result = optimize(cnn, "simplify,int8", out, {"method": "percentile"}, calibration=str(calib),
                      evaluation=EvaluationSettings(batch_sizes=(1, 4), max_seconds=0.3, memory=False))
    assert result.output.path == out and out.exists()
    assert result.output.history == ("simplify", "int8") and result.output.precision == "int8"
    counts = op_counts(out)
    assert "BatchNormalization" not in counts and counts["QuantizeLinear"] > 0
    assert [p.name for p in result.passes] == ["simplify", "int8"]
    assert result.passes[1].config["method"] == "percentile"
    files = {f.name for f in result.report_files}
    assert files == {"cnn_int8.report.json", "cnn_int8.report.md", "cnn_int8.report.png"}
    doc = json.loads((out.parent / "cnn_int8.report.json").read_text())
    assert doc["recipe"] == ["simplify", "int8"] and doc["calibration"]["random"] is False
    cand = doc["evaluation"]["candidates"][0]
    assert cand["accuracy"]["cosine"] > 0.99 and cand["size"]["file_bytes"] < doc["evaluation"]["base"]["size"]["file_bytes"]
    assert "calibration data" in doc["evaluation"]["data"]["note"]
    assert not list(out.parent.glob(".*"))  # no staging leftovers


def test_int8_without_calibration_is_an_error_and_writes_nothing(cnn: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    with pytest.raises(InvalidInputError, match="int8 need calibration data"):
        optimize(cnn, "int8", out)
    assert not out.exists()


def test_a_failing_pass_leaves_the_old_output_untouched(cnn: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    optimize(cnn, "int8", out, calibration=str(calib), evaluate=False)
    before = out.read_bytes()
    with pytest.raises(OptimizationError, match="already quantized"):
        optimize(out, "int8", tmp_path / "q2.onnx", calibration=str(calib), evaluate=False)
    with pytest.raises(OptimizationError, match="exclude_nodes names"):
        optimize(cnn, "simplify,int8", out, {"exclude_nodes": ["nope"]}, calibration=str(calib), evaluate=False)
    assert out.read_bytes() == before and not (tmp_path / "q2.onnx").exists()


def test_bad_paths_are_errors(cnn: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is the input model"):
        optimize(cnn, "simplify", cnn)
    with pytest.raises(InvalidInputError, match="must be an .onnx file"):
        optimize(cnn, "simplify", tmp_path / "out.txt")


def test_set_values_parse_as_json_when_they_can() -> None:
    assert parse_set(["per_channel=false", "percentile=99.9", "exclude_nodes=[\"a\",\"b\"]", "target=tensorrt"]) == {
        "per_channel": False, "percentile": 99.9, "exclude_nodes": ["a", "b"], "target": "tensorrt"}
    with pytest.raises(InvalidInputError, match="is not NAME=VALUE"):
        parse_set(["oops"])
    assert all(f.field == f.flag[2:].replace("-", "_") for f in OPTION_FLAGS)


def test_cli_optimize_random_calibration_is_smoke_only(cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.onnx"
    code = main(["optimize", str(cnn), "-o", str(out), "--recipe", "simplify,int8", "--random-calib",
                 "--method", "entropy", "--target", "tensorrt", "--set", "per_channel=false", "--no-memory",
                 "--batch-sizes", "2"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "smoke only" in text and "Smoke only" in text
    doc = json.loads((tmp_path / "q.report.json").read_text())
    assert doc["evaluation"]["smoke_only"] is True
    assert doc["passes"][1]["config"]["per_channel"] is False and doc["passes"][1]["config"]["target"] == "tensorrt"


def test_cli_optimize_errors_exit_1_without_traceback(cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--recipe", "int8", "--random-calib", "--set",
                 "sparsity=0.5"]) == 1
    err = capsys.readouterr().err
    assert "--sparsity is not an option of any pass in recipe 'int8'" in err and "Traceback" not in err
    assert main(["optimize", str(cnn), "-o", str(out), "--recipe", "int8", "--random-calib", "--set",
                 "percentile=200", "--no-evaluate"]) == 1
    assert "invalid options for pass 'int8'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_optimize_json_output(cnn: Path, calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.onnx"
    assert main(["optimize", str(cnn), "-o", str(out), "--recipe", "fp16", "--calib", str(calib), "--no-evaluate",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["output"]["precision"] == "fp16" and doc["evaluation"] is None

