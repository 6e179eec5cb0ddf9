"""TensorRT's implicit INT8 calibrator (``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator``), fed from
accelserve's calibration data, for TensorRT before 10.1 (still in many Triton containers).

The calibrator follows TensorRT's documented protocol: ``get_batch`` copies the next feed into device buffers and
returns their pointers (``None`` when the data is exhausted); ``read_calibration_cache`` returns the cache file's
bytes when it exists, in which case TensorRT skips calibration; ``write_calibration_cache`` stores the cache
TensorRT produced. Device buffers come from ``cuda-python`` (``cuda.cudart``) or ``pycuda``, whichever is
installed. Needs an NVIDIA GPU: none of this runs on a CPU-only machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import MissingDependencyError

ALGORITHMS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


class _DeviceMemory:
    """cudaMalloc/cudaMemcpy through cuda-python, else pycuda."""

    def __init__(self) -> None:
        try:
            from cuda import cudart  # noqa: PLC0415

            self._cudart, self._pycuda = cudart, None
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401, PLC0415
                import pycuda.driver as driver  # noqa: PLC0415

                self._cudart, self._pycuda = None, driver
            except ImportError as exc:
                raise MissingDependencyError(
                    "TensorRT calibration needs device buffers from cuda-python or pycuda", hint="pip install cuda-python"
                ) from exc
        self._buffers: dict[str, tuple[Any, int]] = {}

    def upload(self, name: str, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        ptr, size = self._buffers.get(name, (None, 0))
        if size < array.nbytes:
            self.free(name)
            ptr = self._malloc(array.nbytes)
            self._buffers[name] = (ptr, array.nbytes)
        if self._cudart is not None:
            (err,) = self._cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes,
                                             self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            self._check(err, "cudaMemcpy")
            return int(ptr)
        self._pycuda.memcpy_htod(ptr, array)
        return int(ptr)

    def _malloc(self, nbytes: int) -> Any:
        if self._cudart is not None:
            err, ptr = self._cudart.cudaMalloc(nbytes)
            self._check(err, "cudaMalloc")
            return ptr
        return self._pycuda.mem_alloc(nbytes)

    def _check(self, err: Any, what: str) -> None:
        if int(err) != 0:
            raise RuntimeError(f"{what} failed with CUDA error {int(err)}")

    def free(self, name: str | None = None) -> None:
        for key in [name] if name else list(self._buffers):
            ptr, _ = self._buffers.pop(key, (None, 0))
            if ptr is None:
                continue
            if self._cudart is not None:
                self._cudart.cudaFree(ptr)
            else:
                ptr.free()


def make_calibrator(trt, cache_path: str | Path, calibration=None, *, algorithm: str = "entropy"):  # noqa: ANN001, ANN201
    """A calibrator instance of TensorRT's class for ``algorithm``, reading/writing ``cache_path``.

    With an existing cache file no device memory is touched: TensorRT reads the cache and skips calibration."""
    base = getattr(trt, ALGORITHMS[algorithm])
    cache_path = Path(cache_path)
    feeds = list(calibration.feeds()) if calibration is not None else []
    batch = int(next(iter(feeds[0].values())).shape[0]) if feeds and next(iter(feeds[0].values())).ndim else 1

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._index = 0
            self._memory: _DeviceMemory | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(feeds):
                return None
            feed = feeds[self._index]
            self._index += 1
            self._memory = self._memory or _DeviceMemory()
            return [self._memory.upload(name, feed[name]) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() and cache_path.stat().st_size else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))
            if self._memory is not None:
                self._memory.free()

    return _Calibrator()
