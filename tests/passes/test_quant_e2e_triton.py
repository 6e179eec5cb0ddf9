"""End to end: a CNN trained here on scikit-learn's digits, quantized to INT8 with each calibration method, added
to a Triton model repository, served by the real tritonserver; Triton's answers must match local ONNX Runtime, and
the held-out accuracy must stay close to the float model's.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. So "Triton matches local ONNX Runtime" compares ONNX Runtime with itself: it
checks the repository entry, config and serving path (batching, tensor names and types, the Q/DQ graph loading in
the served process), not the native backend's INT8 kernels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")
pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install scikit-learn)")
pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")

from accelserve.evaluate import run_model
from accelserve.examples.digits import digits_cnn, top1_accuracy
from accelserve.optimize import optimize
from accelserve.triton.client import TritonClient
from accelserve.triton.repository import add_model
from accelserve.triton.server import TritonServer

pytestmark = [pytest.mark.e2e, pytest.mark.torch, pytest.mark.slow]
METHODS = ("minmax", "entropy", "percentile")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):

    work = tmp_path_factory.mktemp("digits")
    mp = pytest.MonkeyPatch()
    mp.setenv("ACCELSERVE_CACHE_DIR", str(work / "cache"))  # calibration statistics stay in the test's directory
    _, data = digits_cnn(work / "digits.onnx", width=16, head="pool", epochs=15)
    np.savez(work / "calib.npz", x=data.x_train[:256])
    models = {}
    for method in METHODS:
        out = work / f"digits_int8_{method}.onnx"
        result = optimize(work / "digits.onnx", "simplify,int8", out, {"method": method},
                          calibration=str(work / "calib.npz"), evaluate=False)
        assert result.output.precision == "int8"
        models[method] = out
    mp.undo()
    return work, models, data.x_test, data.y_test


def test_int8_keeps_held_outtop1_accuracy(quantized) -> None:
    work, models, x_test, y_test = quantized
    base = top1_accuracy(work / "digits.onnx", x_test, y_test)
    assert base > 0.9  # the float model learned the task
    for method, path in models.items():
        drop = 100 * (base - top1_accuracy(path, x_test, y_test))
        assert drop <= 2.0, f"{method}: accuracy drop {drop:.2f} points"


def test_triton_serves_the_int8_models_like_local_onnxruntime(quantized) -> None:
    work, models, x_test, _ = quantized
    repo = work / "repo"
    for method, path in models.items():
        add_model(path, repo, f"digits_int8_{method}")
    batch = {"x": x_test[:16]}
    with TritonServer(repo) as server, TritonClient(server.http_url) as client:
        for method, path in models.items():
            served = client.infer(f"digits_int8_{method}", batch)
            (local,) = run_model(path, [batch])
            assert served.keys() == local.keys()
            for name, expected in local.items():
                got = served[name]
                assert got.shape == expected.shape
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
                assert (np.argmax(got, -1) == np.argmax(expected, -1)).all()
