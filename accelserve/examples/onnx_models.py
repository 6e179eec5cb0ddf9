"""ONNX models built directly with onnx.helper for the pruning/low-rank benchmarks and tests (no downloads).

The digits CNN lives in :mod:`accelserve.examples.digits`.

* :func:`resnet_onnx` -- a ResNet-style CNN with residual basic blocks (Conv/BatchNorm/ReLU, 1x1 projection
  shortcuts), random weights, built directly as ONNX: input ``[batch, 3, 32, 32]``.
* :func:`resnet18_onnx` -- ResNet-18's layout (torchvision's: 7x7/2 stem + max-pool, four stages of two basic
  blocks, 64-512 channels), random weights, input ``[batch, 3, image, image]``: for timing (speed only).
* :func:`ffn_onnx` -- a transformer feed-forward block ``LayerNorm(x + W2 gelu(W1 x + b1) + b2)`` on
  ``[batch, seq, d_model]``; ``spectrum="decaying"`` gives weights with a power-law singular spectrum (what trained
  weights tend to have), ``"gaussian"`` plain random ones (the worst case for a low-rank factorization).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accelserve.onnx_io import check_model, save_onnx


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, value: np.ndarray, base: str) -> str:
        self.count += 1
        name = f"{base}_{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.count += 1
        name = f"{op.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        fan_in = cin * k * k
        w = self.rng.standard_normal((cout, cin, k, k)).astype(np.float32) * np.sqrt(2.0 / fan_in)
        y = self.node("Conv", [x, self.const(w, "w")], kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2)
        params = [self.rng.uniform(0.5, 1.0, cout), self.rng.normal(0, 0.1, cout), self.rng.normal(0, 0.1, cout),
                  self.rng.uniform(0.5, 1.5, cout)]
        y = self.node("BatchNormalization", [y] + [self.const(p.astype(np.float32), "bn") for p in params])
        return self.node("Relu", [y]) if relu else y

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], opset: int
              ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bench", inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def resnet_onnx(path: str | Path, *, widths: tuple[int, ...] = (32, 64, 128), blocks: int = 2, seed: int = 0,
                image: int = 32) -> Path:
    """A ResNet-style classifier (basic blocks, projection shortcuts between stages) with random weights."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, widths[0], 3)
    cin = widths[0]
    for si, width in enumerate(widths):
        for bi in range(blocks):
            stride = 2 if (si > 0 and bi == 0) else 1
            y = b.conv_bn(x, cin, width, 3, stride)
            y = b.conv_bn(y, width, width, 3, relu=False)
            shortcut = x if (stride == 1 and cin == width) else b.conv_bn(x, cin, width, 1, stride, relu=False)
            x = b.node("Relu", [b.node("Add", [y, shortcut])])
            cin = width
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    w = b.const(b.rng.standard_normal((10, cin)).astype(np.float32) * 0.1, "fc_w")
    b.nodes.append(helper.make_node("Gemm", [x, w, b.const(np.zeros(10, np.float32), "fc_b")], ["logits"],
                                    name="fc", transB=1))
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, image, image])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], 17)
    check_model(model, what="resnet benchmark model")
    save_onnx(model, Path(path))
    return Path(path)


def resnet18_onnx(path: str | Path, *, image: int = 224, classes: int = 1000, seed: int = 0) -> Path:
    """ResNet-18's layout with random weights (speed only: a random-weight network says nothing about accuracy)."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, 2)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for si, width in enumerate((64, 128, 256, 512)):
        for bi in range(2):
            stride = 2 if (si > 0 and bi == 0) else 1
            y = b.conv_bn(x, cin, width, 3, stride)
            y = b.conv_bn(y, width, width, 3, relu=False)
            shortcut = x if (stride == 1 and cin == width) else b.conv_bn(x, cin, width, 1, stride, relu=False)
            x = b.node("Relu", [b.node("Add", [y, shortcut])])
            cin = width
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    w = b.const(b.rng.standard_normal((classes, cin)).astype(np.float32) * np.sqrt(1.0 / cin), "fc_w")
    b.nodes.append(helper.make_node("Gemm", [x, w, b.const(np.zeros(classes, np.float32), "fc_b")], ["logits"],
                                    name="fc", transB=1))
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, image, image])],
                    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], 17)
    check_model(model, what="resnet18 benchmark model")
    save_onnx(model, Path(path))
    return Path(path)


def _weights(rng: np.random.Generator, rows: int, cols: int, spectrum: str) -> np.ndarray:
    g = rng.standard_normal((rows, cols)) / np.sqrt(rows)
    if spectrum == "gaussian":
        return g.astype(np.float32)
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    sigma = (np.arange(1, min(rows, cols) + 1) ** -0.8).astype(np.float64)
    return (u * (sigma / sigma[0] * 2.0)) @ vt


def ffn_onnx(path: str | Path, *, d_model: int = 256, d_ff: int = 1024, spectrum: str = "decaying",
             seed: int = 0) -> Path:
    """A transformer feed-forward block on ``input [batch, seq, d_model]``."""
    if spectrum not in ("decaying", "gaussian"):
        raise ValueError(f"spectrum must be 'decaying' or 'gaussian', got {spectrum!r}")
    b = _Builder(seed)
    w1 = b.const(_weights(b.rng, d_model, d_ff, spectrum).astype(np.float32), "w1")
    w2 = b.const(_weights(b.rng, d_ff, d_model, spectrum).astype(np.float32), "w2")
    h = b.node("Add", [b.node("MatMul", ["input", w1]), b.const(b.rng.normal(0, 0.02, d_ff).astype(np.float32), "b1")])
    h = b.node("Gelu", [h])
    h = b.node("Add", [b.node("MatMul", [h, w2]), b.const(b.rng.normal(0, 0.02, d_model).astype(np.float32), "b2")])
    h = b.node("Add", ["input", h])
    ones, zeros = np.ones(d_model, np.float32), np.zeros(d_model, np.float32)
    b.nodes.append(helper.make_node("LayerNormalization", [h, b.const(ones, "ln_s"), b.const(zeros, "ln_b")],
                                    ["output"], name="ln", axis=-1))
    spec = ["batch", "seq", d_model]
    model = b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, spec)],
                    [helper.make_tensor_value_info("output", TensorProto.FLOAT, spec)], 20)
    check_model(model, what="feed-forward benchmark model")
    save_onnx(model, Path(path))
    return Path(path)
