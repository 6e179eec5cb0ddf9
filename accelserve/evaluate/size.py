"""Size figures of an ONNX model: bytes on disk (with external data), parameter and non-zero parameter counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from accelserve.artifact import ModelArtifact
from accelserve.onnx_io import read_onnx

_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class SizeStats:
    file_bytes: int  #: the .onnx file plus its external-data files
    parameters: int
    nonzero_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else read_onnx(model)


def _parameter_initializers(model: onnx.ModelProto) -> dict[str, tuple[str, int] | None]:
    """Initializers that are parameters -> (consumer op, input index) of one consumer, or None.

    Not parameters: int64 tensors (shapes, axes, indices) and tensors used only as the scale or zero point of
    QuantizeLinear/DequantizeLinear."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, idx))
    out: dict[str, tuple[str, int] | None] = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64:
            continue
        used = uses.get(init.name, [])
        if used and all(op in _QDQ and idx >= 1 for op, idx in used):
            continue
        out[init.name] = used[0] if used else None
    return out


def count_parameters(model: onnx.ModelProto | str | Path) -> tuple[int, int]:
    """(total, non-zero) elements of the model's parameter initializers.

    A quantized weight counts as non-zero where it differs from its zero point (so pruned weights stay zero after
    quantization)."""
    proto = _as_model(model)
    inits = {i.name: i for i in proto.graph.initializer}
    dq_zero_points: dict[str, tuple[str, int]] = {}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) >= 3 and node.input[2] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            dq_zero_points[node.input[0]] = (node.input[2], axis)
    total = nonzero = 0
    for name in _parameter_initializers(proto):
        arr = numpy_helper.to_array(inits[name])
        total += int(arr.size)
        if name in dq_zero_points:
            zp = numpy_helper.to_array(inits[dq_zero_points[name][0]]).astype(np.int64)
            values = arr.astype(np.int64)
            if zp.ndim == 1 and zp.size > 1 and arr.ndim >= 1:
                axis = dq_zero_points[name][1] % arr.ndim
                shape = [1] * arr.ndim
                shape[axis] = zp.size
                zp = zp.reshape(shape)
            nonzero += int(np.count_nonzero(values - zp))
        else:
            nonzero += int(np.count_nonzero(arr))
    return total, nonzero


def size_stats(path: str | Path) -> SizeStats:
    total, nonzero = count_parameters(path)
    return SizeStats(file_bytes=ModelArtifact(Path(path)).size_bytes(), parameters=total, nonzero_parameters=nonzero)
