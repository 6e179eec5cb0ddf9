"""Tiny ONNX graphs built with onnx.helper, shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_linear_model(path: Path, *, in_features: int = 4, out_features: int = 3, with_identity: bool = False,
                      seed: int = 0) -> Path:
    """y = relu(x @ W + b) with a dynamic batch dim ("batch", in_features) -> ("batch", out_features)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((in_features, out_features)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(out_features).astype(np.float32), "B")
    nodes = []
    x_name = "x"
    if with_identity:
        nodes.append(helper.make_node("Identity", ["x"], ["x_id"]))
        x_name = "x_id"
    nodes += [
        helper.make_node("MatMul", [x_name, "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
