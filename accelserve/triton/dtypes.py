"""Tensor element types across ONNX, numpy and Triton.

Triton names a type two ways: the ``DataType`` enum of its model configuration (``TYPE_FP32``, used in
``config.pbtxt``) and the wire datatype of its inference protocol (``"FP32"``, used by clients). This module maps
both to ONNX ``TensorProto`` element types and numpy dtypes. ONNX<->numpy goes through ``onnx.helper`` and
wire<->numpy through ``tritonclient.utils``; the one table written here is ONNX<->Triton.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidInputError, InvalidModelError

#: ONNX element type -> Triton model-config DataType. Every type Triton serves has exactly one ONNX counterpart.
_ONNX_TO_TRITON: dict[int, int] = {
    TensorProto.BOOL: mc.TYPE_BOOL,
    TensorProto.UINT8: mc.TYPE_UINT8,
    TensorProto.UINT16: mc.TYPE_UINT16,
    TensorProto.UINT32: mc.TYPE_UINT32,
    TensorProto.UINT64: mc.TYPE_UINT64,
    TensorProto.INT8: mc.TYPE_INT8,
    TensorProto.INT16: mc.TYPE_INT16,
    TensorProto.INT32: mc.TYPE_INT32,
    TensorProto.INT64: mc.TYPE_INT64,
    TensorProto.FLOAT16: mc.TYPE_FP16,
    TensorProto.FLOAT: mc.TYPE_FP32,
    TensorProto.DOUBLE: mc.TYPE_FP64,
    TensorProto.STRING: mc.TYPE_STRING,
    TensorProto.BFLOAT16: mc.TYPE_BF16,
}
_TRITON_TO_ONNX: dict[int, int] = {v: k for k, v in _ONNX_TO_TRITON.items()}


def onnx_type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"<unknown ONNX type {elem_type}>"


def triton_type_name(data_type: int) -> str:
    """``TYPE_FP32`` style name of a Triton DataType enum value."""
    try:
        return mc.DataType.Name(data_type)
    except ValueError:
        return f"<unknown Triton type {data_type}>"


def triton_type_from_name(name: str) -> int:
    """Triton DataType from ``TYPE_FP32``, ``FP32`` (wire name), or ``BYTES``."""
    key = name.strip().upper()
    if key == "BYTES":
        key = "STRING"
    if not key.startswith("TYPE_"):
        key = "TYPE_" + key
    try:
        value = mc.DataType.Value(key)
    except ValueError:
        value = mc.TYPE_INVALID
    if value == mc.TYPE_INVALID:
        valid = ", ".join(n for n in mc.DataType.keys() if n != "TYPE_INVALID")
        raise InvalidInputError(f"unknown Triton data type '{name}'", hint=f"use one of: {valid}")
    return value


def onnx_to_triton(elem_type: int, *, tensor: str = "tensor") -> int:
    """Triton DataType for an ONNX element type; a type Triton cannot serve is a user error."""
    try:
        return _ONNX_TO_TRITON[elem_type]
    except KeyError:
        raise InvalidModelError(
            f"{tensor} has ONNX type {onnx_type_name(elem_type)}, which Triton cannot serve",
            hint="cast it to a supported type (float32, float16, int64, ...) in the model before exporting",
        ) from None


def triton_to_onnx(data_type: int) -> int:
    try:
        return _TRITON_TO_ONNX[data_type]
    except KeyError:
        raise InvalidInputError(f"Triton type {triton_type_name(data_type)} has no ONNX equivalent") from None


def triton_to_numpy(data_type: int) -> np.dtype:
    """numpy dtype for a Triton DataType (``TYPE_STRING`` -> object, ``TYPE_BF16`` -> ml_dtypes.bfloat16)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(triton_to_onnx(data_type)))


def numpy_to_triton(dtype: np.dtype | type | str) -> int:
    """Triton DataType for a numpy dtype (``bytes_``/``str_``/object arrays are TYPE_STRING)."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return mc.TYPE_STRING
    try:
        elem_type = helper.np_dtype_to_tensor_dtype(dt)
    except (KeyError, ValueError, TypeError):
        elem_type = None
    if elem_type not in _ONNX_TO_TRITON:
        raise InvalidInputError(f"numpy dtype {dt} has no Triton equivalent")
    return _ONNX_TO_TRITON[elem_type]


def onnx_to_numpy(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def triton_to_wire(data_type: int) -> str:
    """Wire datatype of the inference protocol (``TYPE_FP32`` -> ``"FP32"``, ``TYPE_STRING`` -> ``"BYTES"``)."""
    if data_type == mc.TYPE_STRING:
        return "BYTES"
    if data_type not in _TRITON_TO_ONNX:
        raise InvalidInputError(f"Triton type {triton_type_name(data_type)} has no wire datatype")
    return triton_type_name(data_type).removeprefix("TYPE_")


def wire_to_triton(wire: str) -> int:
    return triton_type_from_name(wire)
