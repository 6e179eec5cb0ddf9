"""accelserve: take a trained PyTorch or TensorFlow model to NVIDIA Triton Inference Server.

The public API is imported lazily, so ``import accelserve`` stays light and imports no deep-learning framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute"
_API = {
    "ModelArtifact": "accelserve.artifact:ModelArtifact",
    "InputSpec": "accelserve.specs:InputSpec",
    "AccelserveError": "accelserve.errors:AccelserveError",
    "export_torch": "accelserve.exporters.torch_exporter:export_torch",
    "export_tensorflow": "accelserve.exporters.tensorflow_exporter:export_tensorflow",
    "verify": "accelserve.verify:verify",
    "add_model": "accelserve.triton.repository:add_model",
    "validate_repository": "accelserve.triton.validate:validate_repository",
    "TritonServer": "accelserve.triton.server:TritonServer",
    "optimize": "accelserve.optimize:optimize",
    "run_pipeline": "accelserve.pipeline:run_pipeline",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'accelserve' has no attribute '{name}'")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
