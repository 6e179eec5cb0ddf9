"""Importing TensorRT lazily, with one clear error when it is not there."""

from __future__ import annotations

from types import ModuleType

from accelserve.errors import MissingDependencyError

INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU and NVIDIA's libraries: run inside NVIDIA's Triton or TensorRT container "
    "(nvcr.io/nvidia/tritonserver:<yy.mm>-py3, nvcr.io/nvidia/tensorrt:<yy.mm>-py3), or on a GPU host "
    "`pip install tensorrt` (NVIDIA's wheels, matching your CUDA version; see NVIDIA's TensorRT install guide)"
)


def load_tensorrt(purpose: str) -> ModuleType:
    """``import tensorrt`` or raise a MissingDependencyError saying what needed it and how to install it."""
    try:
        import tensorrt  # noqa: PLC0415 - optional and heavy: imported only here
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer / CUDA is not
        raise MissingDependencyError(
            f"{purpose} needs TensorRT, which could not be imported ({exc})", hint=INSTALL_HINT
        ) from exc
    return tensorrt


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``."""
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    if not parts:
        raise ValueError(f"not a TensorRT version: {version!r}")
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def version_number(version: str) -> int:
    """TensorRT's ``NV_TENSORRT_VERSION`` integer, as it appears in calibration cache headers:
    ``major*1000 + minor*100 + patch`` before TensorRT 10 (8.6.1 -> 8601), ``major*10000 + minor*100 + patch`` from
    10 on (10.1.0 -> 100100)."""
    major, minor, patch = version_tuple(version)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def supports_explicit_only(version: str) -> bool:
    """TensorRT 10.1 deprecated implicit (calibrator-driven) INT8; explicit Q/DQ is the way from then on."""
    return version_tuple(version) >= (10, 1, 0)
