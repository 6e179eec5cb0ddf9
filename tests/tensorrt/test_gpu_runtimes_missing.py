"""The GPU runtimes say what is missing on a machine without a GPU (this one, and CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelserve import plugins
from accelserve.errors import MissingDependencyError
from accelserve.verify import verify
from tests.evaluate.models import make_cnn


def _has_provider(name: str) -> bool:
    import onnxruntime as ort

    return name in ort.get_available_providers()


def test_gpu_runtimes_are_registered_like_plugins():
    assert {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"} <= set(plugins.names("runtimes"))


@pytest.mark.skipif(_has_provider("CUDAExecutionProvider"), reason="onnxruntime-gpu is installed here")
@pytest.mark.parametrize("runtime, provider", [("onnxruntime-cuda", "CUDAExecutionProvider"),
                                               ("onnxruntime-tensorrt", "TensorrtExecutionProvider")])
def test_missing_gpu_provider_is_a_clear_error(tmp_path: Path, runtime: str, provider: str):
    model = make_cnn(tmp_path / "cnn.onnx")
    feeds = [{"x": np.zeros((1, 1, 8, 8), np.float32)}]
    with pytest.raises(MissingDependencyError, match=f"{provider} is not available here") as err:
        verify(model, feeds, [{"y": np.zeros((1, 5), np.float32)}], runtime=runtime)
    assert "onnxruntime-gpu" in err.value.hint


def test_cpu_runtime_still_verifies(tmp_path: Path):
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

    model = make_cnn(tmp_path / "cnn.onnx")
    feeds = [{"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}]
    session = OnnxRuntimeSession(model)
    assert verify(model, feeds, lambda f: session.run(dict(f)), runtime="onnxruntime").passed
    wrong = [{"y": session.run(feeds[0])["y"] + 1.0}]
    assert not verify(model, feeds, wrong, runtime="onnxruntime").passed
