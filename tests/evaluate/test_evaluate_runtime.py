"""`evaluate --runtime NAME` runs every model through that runtime plugin (the GPU runtimes on a GPU host)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accelserve import plugins
from accelserve.evaluate import evaluate_models
from accelserve.evaluate._ort import RuntimeSession, make_session
from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeCPU
from tests.evaluate.models import make_cnn


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)} for _ in range(3)]


def test_a_runtime_plugin_runs_the_models_of_an_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CPU runtime loaded as a plugin under another name stands for a GPU runtime: same numbers, another path."""
    base, cand = make_cnn(tmp_path / "a.onnx"), make_cnn(tmp_path / "b.onnx", seed=1)
    real_load = plugins.load
    used = []

    def load(group: str, name: str):  # noqa: ANN202
        if group == "runtimes" and name == "cpu-as-plugin":
            used.append(name)
            return OnnxRuntimeCPU
        return real_load(group, name)

    monkeypatch.setattr(plugins, "load", load)
    assert isinstance(make_session(base, runtime="cpu-as-plugin"), RuntimeSession)
    direct = evaluate_models(base, [cand], _feeds(), speed=False, memory=False)
    through = evaluate_models(base, [cand], _feeds(), batch_sizes=(2,), memory=True, runtime="cpu-as-plugin",
                              max_seconds=0.5)
    assert used and through.machine["runtime"] == "cpu-as-plugin" and direct.machine["runtime"] == "onnxruntime"
    assert through.candidates[0].accuracy.max_abs_error == pytest.approx(direct.candidates[0].accuracy.max_abs_error)
    assert through.candidates[0].latency and through.candidates[0].latency[0].batch_size == 2
    assert through.base.memory is None  # the memory probe runs ONNX Runtime on the CPU only


def test_missing_gpu_runtime_is_a_clear_cli_error(tmp_path: Path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    base = make_cnn(tmp_path / "a.onnx")
    proc = subprocess.run([sys.executable, "-m", "accelserve", "evaluate", str(base), str(base), "--random-data",
                           "--runtime", "onnxruntime-cuda", "--no-memory"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "CUDAExecutionProvider is not available here" in proc.stderr
