"""The end-to-end test modules say what their "real tritonserver" runs ONNX models with: the nvidia-pytriton
tritonserver has no onnxruntime backend, so ONNX models are served by accelserve's ONNX Runtime stand-in (python
backend), and a comparison of Triton's answers with local ONNX Runtime compares ONNX Runtime with itself."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
#: e2e modules that serve no ONNX model, with the reason
EXEMPT = {"tensorrt/test_triton_config_parser.py": "checks that Triton refuses TensorRT entries for lack of the backend"}


def _e2e_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py")
                  if "mark.e2e" in (text := p.read_text()) or "e2e_helpers import" in text)


def test_every_e2e_module_names_the_onnx_runtime_stand_in() -> None:
    modules = _e2e_modules()
    assert len(modules) >= 8  # the spine, serve/infer, TensorFlow, quantization, pruning, server, load tests
    missing = [str(p.relative_to(TESTS)) for p in modules if str(p.relative_to(TESTS)) not in EXEMPT
               and "ONNX Runtime stand-in" not in " ".join((ast.get_docstring(ast.parse(p.read_text())) or "").split())]
    assert not missing, f"module docstrings that do not say ONNX models run through the stand-in: {missing}"
