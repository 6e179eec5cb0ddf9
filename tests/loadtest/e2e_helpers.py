"""Models and checks shared by the end-to-end load-test modules (each module starts its own tritonserver)."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from accelserve.cli.main import main
from accelserve.triton.config import TritonModelOptions
from accelserve.triton.repository import add_model
from tests.graphs import make_linear_model

# Locust is looked up, never imported: importing it would gevent-patch the test process
requires_stack = [
    pytest.mark.e2e,
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton is not installed"),
]


def make_seq_model(path: Path) -> Path:
    """y = 2 * x with x of shape (batch, seq): a dynamic dim besides the batch dim."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_repository(root: Path) -> Path:
    """``lin`` (x: batch x 4, max_batch_size 8) and ``seq`` (x: batch x seq)."""
    repo = root / "repo"
    add_model(make_linear_model(root / "linear.onnx"), repo, "lin", TritonModelOptions(max_batch_size=8))
    add_model(make_seq_model(root / "seq.onnx"), repo, "seq", TritonModelOptions(max_batch_size=8))
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(args: list[str]) -> int:
    return main(["loadtest", *args])


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def assert_sane_step(step: dict[str, Any]) -> None:
    lat = step["latency_ms"]
    assert step["requests"] > 0 and step["requests_per_s"] > 0 and step["inferences_per_s"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert step["errors"] == 0 and step["error_rate"] == 0.0


def assert_cli_not_patched() -> None:
    """The accelserve process itself never imports Locust, so gevent never patches it."""
    assert "locust" not in sys.modules
    import gevent.monkey

    assert not gevent.monkey.is_module_patched("socket")
