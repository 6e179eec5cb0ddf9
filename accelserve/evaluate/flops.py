"""FLOPs of the compute-heavy ops (Conv, ConvTranspose, Gemm, MatMul and their quantized forms), from the shapes
ONNX shape inference gives. One multiply-accumulate counts as two FLOPs; other ops are not counted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from accelserve.onnx_io import read_onnx

#: op type -> (index of the data input, index of the weight input)
_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


@dataclass
class FlopCount:
    total: int = 0  #: FLOPs (2 x MACs) of all counted nodes
    per_node: dict[str, int] = field(default_factory=dict)  #: node name (or op_type#index) -> FLOPs
    by_op_type: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  #: counted-op nodes whose shapes stayed unknown

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_op_type": dict(self.by_op_type), "unknown": list(self.unknown)}


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in vi.type.tensor_type.shape.dim)


def _fix_inputs(model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None) -> None:
    initializers = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        given = (input_shapes or {}).get(vi.name)
        if given is not None:
            if len(given) != len(dims):
                from accelserve.errors import InvalidInputError

                raise InvalidInputError(f"input shape for '{vi.name}' has rank {len(given)}, the model's has {len(dims)}")
            for d, size in zip(dims, given):
                d.Clear()
                d.dim_value = int(size)
        elif dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = 1  # dynamic batch counts as 1


def flops(model: onnx.ModelProto | str | Path, input_shapes: dict[str, Sequence[int]] | None = None) -> FlopCount:
    """Count FLOPs for ``input_shapes`` (input name -> shape); a dynamic batch axis not given counts as 1."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model if isinstance(model, onnx.ModelProto) else read_onnx(model))
    _fix_inputs(proto, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to whatever shapes the file carries
        inferred = proto
    shapes: dict[str, tuple[int | None, ...] | None] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[vi.name] = _shape_of(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)

    result = FlopCount()
    for idx, node in enumerate(inferred.graph.node):
        if node.op_type not in _CONV and node.op_type not in _MATMUL and node.op_type != "ConvTranspose":
            continue
        key = node.name or f"{node.op_type}#{idx}"
        macs = _macs(node, shapes)
        if macs is None:
            result.unknown.append(key)
            continue
        result.per_node[key] = 2 * macs
        result.by_op_type[node.op_type] = result.by_op_type.get(node.op_type, 0) + 2 * macs
        result.total += 2 * macs
    return result


def _known(shape: tuple[int | None, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _macs(node: onnx.NodeProto, shapes: dict[str, tuple[int | None, ...] | None]) -> int | None:
    out = shapes.get(node.output[0])
    if node.op_type in _CONV:
        _, w_idx = _CONV[node.op_type]
        w = shapes.get(node.input[w_idx]) if len(node.input) > w_idx else None
        if not (_known(out) and _known(w)) or len(w) < 2:
            return None
        # output N x M x spatial; weight M x C/group x kernel
        return math.prod(out) * math.prod(w[1:])
    if node.op_type == "ConvTranspose":
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not (_known(x) and _known(w)) or len(w) < 2:
            return None
        # every input element is multiplied with C_out/group x kernel weights
        return math.prod(x) * math.prod(w[1:])
    a_idx, _ = _MATMUL[node.op_type]
    a = shapes.get(node.input[a_idx])
    if not (_known(out) and _known(a)) or not a:
        return None
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    else:
        k = a[-1]
    return math.prod(out) * k
