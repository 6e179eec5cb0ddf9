"""ONNX Runtime (CPU) as an accelserve runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accelserve.errors import InvalidInputError, InvalidModelError
from accelserve.runtimes.base import Runtime, Session, TensorInfo

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}


def _info(arg) -> TensorInfo:  # noqa: ANN001 - onnxruntime NodeArg
    dtype = np.dtype(_ORT_TYPES.get(arg.type, np.float32))
    shape = tuple(d if isinstance(d, (int, str)) else None for d in (arg.shape or []))
    return TensorInfo(arg.name, dtype, shape)


class OnnxRuntimeSession(Session):
    def __init__(self, model_path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(model_path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            raise InvalidModelError(f"ONNX Runtime cannot load {model_path}: {str(exc).strip()}") from exc
        self._inputs = [_info(a) for a in self._sess.get_inputs()]
        self._outputs = [_info(a) for a in self._sess.get_outputs()]

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        expected = {i.name for i in self._inputs}
        if set(feeds) != expected:
            raise InvalidInputError(
                f"inputs {sorted(feeds)} do not match the model's inputs {sorted(expected)}"
            )
        names = output_names or [o.name for o in self._outputs]
        try:
            values = self._sess.run(names, feeds)
        except Exception as exc:
            raise InvalidInputError(f"ONNX Runtime rejected the inputs: {str(exc).strip()}") from exc
        return dict(zip(names, values))


class OnnxRuntimeCPU(Runtime):
    name = "onnxruntime"

    def load(self, model_path: str | Path, *, threads: int | None = None) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(model_path, threads=threads)
