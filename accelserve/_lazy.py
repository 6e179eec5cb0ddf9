"""Lazy imports of heavy, optional dependencies with an actionable error when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from accelserve.errors import MissingDependencyError

_INSTALL_HINTS = {
    "torch": "pip install 'accelserve[torch]'  (pins torch==2.13.0, the CPU build)",
    "onnxscript": "pip install 'accelserve[torch]'",
    "tensorflow": "pip install 'accelserve[tensorflow]'  (installs tensorflow-cpu and tf2onnx)",
    "tf2onnx": "pip install 'accelserve[tensorflow]'",
    "tensorrt": "install TensorRT from NVIDIA (it is not on PyPI for this platform); see the TensorRT install guide",
    "pytriton": "pip install 'accelserve[serve]'  (nvidia-pytriton ships the tritonserver binary)",
    "locust": "pip install 'accelserve[loadtest]'",
    "matplotlib": "pip install matplotlib",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a MissingDependencyError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL_HINTS.get(top, f"pip install {top}")
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{top}', which could not be imported ({exc}).", hint=hint
        ) from exc
