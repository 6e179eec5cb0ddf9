"""A Triton python-backend model that fails to load with the reason Triton's onnxruntime backend would give.

``accelserve serve`` links this file, instead of the ONNX Runtime stand-in, into a shadow version directory whose
ONNX model and config disagree in a way the native onnxruntime backend rejects at load time (see
``accelserve/triton/ort_rules.py``): the model then fails to load with that reason, as it would in production,
instead of loading and answering wrongly. The reason is in ``accelserve_load_error.txt`` beside this file.
"""

from __future__ import annotations

import os

ERROR_FILENAME = "accelserve_load_error.txt"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], ERROR_FILENAME)
        with open(path, encoding="utf-8") as fh:
            reason = fh.read().strip()
        raise ValueError(reason)

    def execute(self, requests: list) -> list:  # never reached: initialize always fails
        raise RuntimeError("this model did not load")
