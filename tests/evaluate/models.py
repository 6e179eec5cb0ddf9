"""Tiny ONNX graphs (onnx.helper) for the optimize/quantization/evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def make_cnn(path: Path, *, seed: int = 0, with_identity: bool = True, classes: int = 5, opset: int = 17) -> Path:
    """x[batch,1,8,8] -> Conv -> BatchNorm -> Relu -> (Identity) -> Conv -> Relu -> Add(residual) -> MaxPool ->
    Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[batch,classes]. Named nodes."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = [
        _init("w1", rng.standard_normal((8, 1, 3, 3)).astype(f) * 0.5), _init("b1", rng.standard_normal(8).astype(f) * 0.1),
        _init("bn_scale", rng.uniform(0.5, 1.5, 8).astype(f)), _init("bn_bias", rng.standard_normal(8).astype(f) * 0.1),
        _init("bn_mean", rng.standard_normal(8).astype(f) * 0.1), _init("bn_var", rng.uniform(0.5, 1.5, 8).astype(f)),
        _init("w2", rng.standard_normal((8, 8, 3, 3)).astype(f) * 0.2), _init("b2", rng.standard_normal(8).astype(f) * 0.1),
        _init("w3", rng.standard_normal((16, 8, 3, 3)).astype(f) * 0.2), _init("b3", rng.standard_normal(16).astype(f) * 0.1),
        _init("wf", rng.standard_normal((classes, 16)).astype(f) * 0.5), _init("bf", rng.standard_normal(classes).astype(f) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
    ]
    r1 = "r1"
    if with_identity:
        nodes.append(helper.make_node("Identity", ["r1"], ["r1_id"], name="identity"))
        r1 = "r1_id"
    nodes += [
        helper.make_node("Conv", [r1, "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", r1], ["res"], name="residual_add"),
        helper.make_node("MaxPool", ["res"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_mlp_block(path: Path, *, seed: int = 0, hidden: int = 32, width: int = 16) -> Path:
    """A transformer-style MLP block: x[batch,seq,width] -> MatMul -> Add -> Relu -> MatMul -> Add -> + x ->
    Softmax -> y. Two MatMuls with constant weights (what int8-dynamic quantizes)."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = [
        _init("w_up", rng.standard_normal((width, hidden)).astype(f) * 0.3), _init("b_up", rng.standard_normal(hidden).astype(f) * 0.1),
        _init("w_down", rng.standard_normal((hidden, width)).astype(f) * 0.3), _init("b_down", rng.standard_normal(width).astype(f) * 0.1),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_up"], ["up"], name="up_proj"),
        helper.make_node("Add", ["up", "b_up"], ["up_b"], name="up_bias"),
        helper.make_node("Relu", ["up_b"], ["act"], name="act"),
        helper.make_node("MatMul", ["act", "w_down"], ["down"], name="down_proj"),
        helper.make_node("Add", ["down", "b_down"], ["down_b"], name="down_bias"),
        helper.make_node("Add", ["down_b", "x"], ["res"], name="residual"),
        helper.make_node("Softmax", ["res"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "mlp_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def cnn_feeds(count: int = 4, batch: int = 8, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)} for _ in range(count)]


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out
