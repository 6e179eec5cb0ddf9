"""One set of model checks (accelserve.onnx_limits via read_onnx) for every command that reads a model: absurd
dims, rank 10000 and external data longer than its file are clear errors (exit 1), never a traceback (exit 3)
and never a repository entry."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelserve.cli.main import main
from accelserve.errors import InvalidInputError, InvalidModelError
from accelserve.onnx_io import read_onnx
from accelserve.specs import random_array
from tests.graphs import make_linear_model


def _relu(path: Path, shape: list) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _external(path: Path, length: int | None = None, truncate: bool = False) -> Path:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    if length is not None:
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "length":
                entry.value = str(length)
        onnx.save(model, str(path))
    if truncate:
        data = path.with_name(path.name + ".data")
        data.write_bytes(data.read_bytes()[:8])
    return path


@pytest.fixture()
def bad(tmp_path: Path) -> dict[str, Path]:
    return {
        "huge": _relu(tmp_path / "huge.onnx", [1_000_000, 1_000_000, 1_000_000]),
        "rank": _relu(tmp_path / "rank.onnx", ["batch"] + [1] * 9999),
        "negative": _relu(tmp_path / "negative.onnx", [-3, 4]),
        "ext_length": _external(tmp_path / "ext_length.onnx", length=2**62),
        "ext_truncated": _external(tmp_path / "ext_truncated.onnx", truncate=True),
    }


MESSAGES = {"huge": "needs 3.5 EiB", "rank": "rank 10000", "negative": "negative dimension",
            "ext_length": "declares 4611686018427387904 bytes", "ext_truncated": "which has 8 bytes"}


def _run(argv: list) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_read_onnx_refuses(bad: dict[str, Path], kind: str) -> None:
    with pytest.raises(InvalidModelError, match=MESSAGES[kind]):
        read_onnx(bad[kind], load_external_data=False)


def test_sane_models_pass(tmp_path: Path) -> None:
    read_onnx(make_linear_model(tmp_path / "lin.onnx"))
    read_onnx(_external(tmp_path / "ok.onnx"))
    read_onnx(_relu(tmp_path / "big_ok.onnx", ["batch", 3, 1024, 1024]))


@pytest.mark.parametrize("kind", ["huge", "rank", "ext_length"])
@pytest.mark.parametrize("command", [
    lambda m, d: ["verify", m, "--reference-onnx", m, "--random", "1"],
    lambda m, d: ["optimize", m, "--recipe", "simplify", "-o", d / "out.onnx"],
    lambda m, d: ["evaluate", m, m, "--random-data", "--no-speed", "--no-memory"],
    lambda m, d: ["repo", "add", m, "--repo", d / "repo", "--name", "m"],
], ids=["verify", "optimize", "evaluate", "repo-add"])
def test_commands_exit_1_with_the_same_message(bad: dict[str, Path], kind: str, command, tmp_path: Path) -> None:
    rc, err = _run(command(bad[kind], tmp_path))
    assert rc == 1, err
    assert MESSAGES[kind] in err and "Traceback" not in err, err
    assert not (tmp_path / "repo").exists() and not (tmp_path / "out.onnx").exists()


def test_repo_validate_reports_such_a_file(bad: dict[str, Path], tmp_path: Path) -> None:
    # a repository written before these checks (or by hand) holding such a file: validate names the problem
    rc, err = _run(["repo", "add", make_linear_model(tmp_path / "lin.onnx"), "--repo", tmp_path / "repo",
                    "--name", "m"])
    assert rc == 0, err
    _relu(tmp_path / "repo" / "m" / "1" / "model.onnx", ["batch"] + [1] * 9999)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(["repo", "validate", str(tmp_path / "repo")])
    assert rc == 1 and "rank 10000" in out.getvalue(), out.getvalue()


def test_random_array_too_big_is_a_user_error() -> None:
    with pytest.raises(InvalidInputError, match="cannot make a random float32 array of shape 1000000x1000000"):
        random_array(np.random.default_rng(0), (1_000_000, 1_000_000, 1_000_000), np.float32)
