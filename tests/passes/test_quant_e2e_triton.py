"""End to end: a CNN trained here on scikit-learn's digits, quantized to INT8 with each calibration method, added
to a Triton model repository, served by the real tritonserver; Triton's answers must match local ONNX Runtime, and
the held-out accuracy must stay close to the float model's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")
pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install scikit-learn)")
pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")

from accelserve.evaluate import run_model
from accelserve.optimize import optimize
from accelserve.triton.client import TritonClient
from accelserve.triton.repository import add_model
from accelserve.triton.server import TritonServer

pytestmark = [pytest.mark.e2e, pytest.mark.torch, pytest.mark.slow]
METHODS = ("minmax", "entropy", "percentile")


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.3, random_state=0, stratify=digits.target)


def _train(x: np.ndarray, y: np.ndarray):
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory):
    from accelserve import export_torch

    work = tmp_path_factory.mktemp("digits")
    mp = pytest.MonkeyPatch()
    mp.setenv("ACCELSERVE_CACHE_DIR", str(work / "cache"))  # calibration statistics stay in the test's directory
    x_train, x_test, y_train, y_test = _digits()
    export_torch(_train(x_train, y_train), {"x": x_test[:4]}, work / "digits.onnx", inputs=["x:1x1x8x8:float32"])
    np.savez(work / "calib.npz", x=x_train[:256])
    models = {}
    for method in METHODS:
        out = work / f"digits_int8_{method}.onnx"
        result = optimize(work / "digits.onnx", "simplify,int8", out, {"method": method},
                          calibration=str(work / "calib.npz"), evaluate=False)
        assert result.output.precision == "int8"
        models[method] = out
    mp.undo()
    return work, models, x_test, y_test


def _accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    outputs = run_model(model, [{"x": x[i:i + 64]} for i in range(0, len(x), 64)])
    return float(np.mean(np.concatenate([np.argmax(next(iter(o.values())), -1) for o in outputs]) == y))


def test_int8_keeps_held_out_accuracy(quantized) -> None:
    work, models, x_test, y_test = quantized
    base = _accuracy(work / "digits.onnx", x_test, y_test)
    assert base > 0.9  # the float model learned the task
    for method, path in models.items():
        drop = 100 * (base - _accuracy(path, x_test, y_test))
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
