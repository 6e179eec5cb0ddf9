"""A tiny builder for ONNX test graphs (onnx.helper underneath) with random, deterministic weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, seed: int = 0, opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, outputs: int = 1, **attrs) -> str:
        name = name or self._name(op_type.lower())
        outs = [f"{name}_out"] + [f"{name}_out{i}" for i in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs  # type: ignore[return-value]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, stride: int = 1,
             name: str | None = None) -> str:
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.3)
        inputs = [x, w] + ([self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1)] if bias else [])
        return self.op("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride] * 2)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.1, r.standard_normal(c) * 0.1,
                  r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x] + [self.const(p.astype(np.float32)) for p in params], name)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1, name: str | None = None) -> str:
        shape = (n, k) if trans_b else (k, n)
        w = self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.2)
        b = self.const(self.rng.standard_normal(n).astype(np.float32) * 0.1)
        return self.op("Gemm", [x, w, b], name, transB=trans_b)

    def matmul(self, x: str, k: int, n: int, name: str | None = None) -> str:
        return self.op("MatMul", [x, self.const(self.rng.standard_normal((k, n)).astype(np.float32) * 0.2)], name)

    def build(self, outputs: Sequence[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test", self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        done = onnx.shape_inference.infer_shapes(model).graph
        inferred = {vi.name: vi for vi in [*done.value_info, *done.output]}
        for out in model.graph.output:
            out.CopyFrom(inferred[out.name])
        onnx.checker.check_model(model)
        return model


def weight(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[index])
    return numpy_helper.to_array(init).copy()


def set_weight(model: onnx.ModelProto, node_name: str, value: np.ndarray, index: int = 1) -> None:
    node = next(n for n in model.graph.node if n.name == node_name)
    for t in model.graph.initializer:
        if t.name == node.input[index]:
            t.CopyFrom(numpy_helper.from_array(value.astype(np.float32), t.name))


def node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def zero_channels(model: onnx.ModelProto, node_name: str, channels: Sequence[int], axis: int = 0) -> None:
    """Make output ``channels`` of a Conv/Gemm/MatMul/BatchNormalization node exactly zero (weights and bias, or
    BatchNorm's bias and mean)."""
    node = node_by_name(model, node_name)
    idx = list(channels)
    if node.op_type == "BatchNormalization":
        for i in (2, 3):  # B and mean: y = scale * (x - mean) / sqrt(var) + B = 0 where x == 0
            v = weight(model, node_name, i)
            v[idx] = 0
            set_weight(model, node_name, v, i)
        return
    w = weight(model, node_name, 1)
    sl = [slice(None)] * w.ndim
    sl[axis] = idx
    w[tuple(sl)] = 0
    set_weight(model, node_name, w, 1)
    if len(node.input) > 2:
        b = weight(model, node_name, 2)
        b[idx] = 0
        set_weight(model, node_name, b, 2)
