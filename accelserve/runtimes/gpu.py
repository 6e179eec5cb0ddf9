"""GPU runtimes: ONNX Runtime with the CUDA or TensorRT execution provider (``onnxruntime-gpu``), and TensorRT engines
run directly. Each registers in the ``accelserve.runtimes`` group like a third-party plugin would.

None of these run without an NVIDIA GPU: loading one on a CPU-only machine raises a MissingDependencyError that
says what is missing. Timing on the GPU is synchronous: ``run`` returns only after the device finished (ONNX
Runtime's ``run`` copies outputs back to the host; the TensorRT session synchronises its stream), so wall-clock
timing around ``run`` measures the device work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accelserve.errors import InvalidInputError, MissingDependencyError
from accelserve.runtimes.base import Runtime, Session, TensorInfo
from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

GPU_ORT_HINT = "pip install onnxruntime-gpu (instead of onnxruntime) on a machine with an NVIDIA GPU, CUDA and cuDNN"


def _require_provider(provider: str) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise MissingDependencyError(
            f"ONNX Runtime's {provider} is not available here (available: {', '.join(available)})",
            hint=GPU_ORT_HINT + ("; TensorRT's libraries too" if provider.startswith("Tensorrt") else ""),
        )


class OnnxRuntimeCUDA(Runtime):
    name = "onnxruntime-cuda"

    def load(self, model_path: str | Path, *, threads: int | None = None) -> OnnxRuntimeSession:
        _require_provider("CUDAExecutionProvider")
        return OnnxRuntimeSession(model_path, threads=threads, providers=["CUDAExecutionProvider"])


class OnnxRuntimeTensorRT(Runtime):
    """TensorRT inside ONNX Runtime (what Triton's onnxruntime backend runs with the tensorrt accelerator)."""

    name = "onnxruntime-tensorrt"

    def load(self, model_path: str | Path, *, threads: int | None = None) -> OnnxRuntimeSession:
        _require_provider("TensorrtExecutionProvider")
        return OnnxRuntimeSession(model_path, threads=threads,
                                  providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])


class TensorRTSession(Session):
    """A deserialized engine and one execution context; host arrays in and out through device buffers."""

    def __init__(self, engine_bytes: bytes, source: str) -> None:
        from accelserve.tensorrt.api import load_tensorrt
        from accelserve.tensorrt.calibrator import _DeviceMemory

        trt = load_tensorrt("running a TensorRT engine")
        self._trt = trt
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self._engine is None:
            raise InvalidInputError(f"TensorRT cannot deserialize the engine of {source}")
        self._context = self._engine.create_execution_context()
        self._memory = _DeviceMemory()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        infos = {n: TensorInfo(n, np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))),
                               tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(n))) for n in names}
        self._inputs = [infos[n] for n in names if self._engine.get_tensor_mode(n) == mode]
        self._outputs = [infos[n] for n in names if self._engine.get_tensor_mode(n) != mode]

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        from cuda import cudart  # noqa: PLC0415 - the TensorRT runtime's device copies use cuda-python

        expected = {i.name for i in self._inputs}
        if set(feeds) != expected:
            raise InvalidInputError(f"inputs {sorted(feeds)} do not match the engine's inputs {sorted(expected)}")
        for info in self._inputs:
            array = np.ascontiguousarray(feeds[info.name], dtype=info.dtype)
            self._context.set_input_shape(info.name, array.shape)
            self._context.set_tensor_address(info.name, self._memory.upload(info.name, array))
        host = {}
        for info in self._outputs:
            shape = tuple(self._context.get_tensor_shape(info.name))
            host[info.name] = np.empty(shape, dtype=info.dtype)
            self._context.set_tensor_address(info.name, self._memory.upload(info.name, host[info.name]))
        err, stream = cudart.cudaStreamCreate()
        try:
            if not self._context.execute_async_v3(stream):
                raise InvalidInputError("TensorRT failed to execute the engine on these inputs")
            cudart.cudaStreamSynchronize(stream)
        finally:
            cudart.cudaStreamDestroy(stream)
        names = output_names or [o.name for o in self._outputs]
        for name in names:
            ptr, _ = self._memory._buffers[name]
            cudart.cudaMemcpy(host[name].ctypes.data, ptr, host[name].nbytes,
                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        return {name: host[name] for name in names}


class TensorRTRuntime(Runtime):
    """A ``.plan`` engine as it is, or an ONNX model built into an engine first (FP32 unless it has Q/DQ nodes)."""

    name = "tensorrt"

    def load(self, model_path: str | Path, *, threads: int | None = None) -> TensorRTSession:
        import tempfile

        from accelserve.tensorrt.build import EngineBuildConfig, build_engine

        path = Path(model_path)
        if path.suffix in (".plan", ".engine"):
            return TensorRTSession(path.read_bytes(), str(path))
        with tempfile.TemporaryDirectory(prefix="accelserve-trt-") as tmp:
            result = build_engine(path, Path(tmp) / "model.plan", EngineBuildConfig(precision="fp32"))
            return TensorRTSession(result.engine.read_bytes(), str(path))
