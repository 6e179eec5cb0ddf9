"""End to end: train the digits CNN (PyTorch), export it with accelserve, remove half of its channels with
reconstruction through ``optimize``, serve the pruned model on the real tritonserver and compare its answers with
local ONNX Runtime.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. So "Triton matches local ONNX Runtime" compares ONNX Runtime with itself: it
checks the repository entry, config and serving path (batching, tensor names and types), not a second runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")
pytest.importorskip("sklearn", reason="scikit-learn (the digits data) is not installed")

from accelserve.evaluate._ort import run_model
from accelserve.examples.digits import digits_cnn, top1_accuracy
from accelserve.optimize import optimize

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def pruned_digits(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("digits")
    model, data = digits_cnn(work / "digits.onnx", width=16, head="dense", epochs=4)
    np.savez(work / "calib.npz", x=data.x_train[:512])
    np.save(work / "labels.npy", data.y_train[:512])
    result = optimize(model, "prune-channels", work / "pruned.onnx",
                      {"ratio": 0.5, "importance": "activation", "labels": str(work / "labels.npy")},
                      calibration=work / "calib.npz", evaluate=False)
    return model, result, data


def test_half_the_channels_removed_accuracy_kept(pruned_digits) -> None:
    model, result, data = pruned_digits
    report = result.passes[0].report
    assert report["groups_pruned"] == 4  # three convolutions and the hidden Linear; the classifier is the output
    assert report["parameters"]["after"] < 0.4 * report["parameters"]["before"]
    base = top1_accuracy(model, data.x_test, data.y_test)
    pruned = top1_accuracy(result.output.path, data.x_test, data.y_test)
    assert base > 0.9
    assert pruned >= base - 0.03, (base, pruned)  # bench/pruning.py measures the 2-point target at full size
    held = report["held_out"]
    assert held["error_unit"] == "top1_accuracy drop (points)"
    assert held["pruned"]["accuracy"] >= held["pruned_without_reconstruction"]["accuracy"]


@pytest.mark.e2e
def test_pruned_model_served_by_triton_matches_onnxruntime(pruned_digits, tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")
    from accelserve.triton.client import TritonClient
    from accelserve.triton.repository import add_model
    from accelserve.triton.server import TritonServer

    _, result, data = pruned_digits
    repo = tmp_path / "repo"
    add_model(result.output.path, repo, "digits_pruned")
    x = data.x_test[:32]
    (local,) = run_model(result.output.path, [{"x": x}])
    with TritonServer(repo) as server, TritonClient(server.http_url) as client:
        served = client.infer("digits_pruned", {"x": x})
    assert set(served) == set(local)
    for name, value in local.items():
        np.testing.assert_allclose(served[name], value, rtol=1e-4, atol=1e-4)
    assert (served[name].argmax(axis=1) == data.y_test[:32]).mean() > 0.85
