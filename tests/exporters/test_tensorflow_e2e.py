"""TensorFlow models end to end: export + verify, add to one repository, serve on the real tritonserver, and compare
Triton's outputs with TensorFlow's (computed here directly, not through the exporter).

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. So Triton's answers are ONNX Runtime's, compared here with TensorFlow."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorflow, pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Case:
    name: str
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  #: TensorFlow's outputs for ``feeds``
    verified: bool


def _cases(tmp: Path) -> list[tuple[Case, Path]]:
    from accelserve.exporters.tensorflow_exporter import export_tensorflow
    from tests.fixtures import tf_models as tfm

    rng = np.random.default_rng(11)
    out: list[tuple[Case, Path]] = []

    def add(name: str, source: Any, feeds: dict[str, np.ndarray], run_tf: Callable[[], dict[str, np.ndarray]],
            inputs: list[str] | None = None) -> None:
        result = export_tensorflow(source, inputs=inputs, output=tmp / f"{name}.onnx")
        out.append((Case(name, feeds, run_tf(), result.verification.passed), result.artifact.path))

    cnn = tfm.functional_cnn()
    image = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    add("tf_functional_cnn", cnn, {"image": image}, lambda: {"logits": cnn.predict(image, verbose=0)})

    mlp = tfm.sequential_mlp()
    features = rng.normal(size=(2, tfm.MLP_FEATURES)).astype(np.float32)
    add("tf_sequential", mlp, {"features": features}, lambda: {"probs": mlp.predict(features, verbose=0)})

    saved = tfm.save_scoring_saved_model(tmp / "scoring_savedmodel")
    scoring_feeds = {"features": rng.normal(size=(4, tfm.MLP_FEATURES)).astype(np.float32),
                     "token": rng.integers(0, 500, 4).astype(np.int64)}

    def run_saved() -> dict[str, np.ndarray]:
        signature = tfm.tf.saved_model.load(str(saved)).signatures["serving_default"]
        return {k: v.numpy() for k, v in signature(**scoring_feeds).items()}

    add("tf_savedmodel", str(saved), scoring_feeds, run_saved)

    sub = tfm.subclassed_model()
    x = rng.normal(size=(2, tfm.MLP_FEATURES)).astype(np.float32)
    add("tf_subclassed", sub, {"x": x}, lambda: {"output_0": sub(x, training=False).numpy()}, inputs=["x:1x8:float32"])
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[Case]]]:
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'accelserve[tensorflow]')")
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install 'accelserve[tensorflow]')")
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")
    from accelserve.triton.repository import add_model
    from accelserve.triton.server import TritonServer

    tmp = tmp_path_factory.mktemp("tf_e2e")
    repo = tmp / "repo"
    cases = []
    for case, path in _cases(tmp):
        add_model(path, repo, case.name)
        cases.append(case)
    with TritonServer(repo) as server:  # one server for all TensorFlow models
        yield server, cases


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_serves_tensorflow_models_with_tensorflow_outputs(served: tuple[Any, list[Case]],
                                                                 protocol: str) -> None:
    from accelserve.triton.client import TritonClient

    server, cases = served
    assert [c.name for c in cases] == ["tf_functional_cnn", "tf_sequential", "tf_savedmodel", "tf_subclassed"]
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonClient(url) as client:
        assert set(client.ready_models()) >= {c.name for c in cases}
        for case in cases:
            assert case.verified, f"{case.name}: the export was not verified against TensorFlow"
            # an input of shape [batch] (the SavedModel's token) is served as dims [1] with an empty reshape,
            # Triton's documented form: the client sends [batch, 1]
            feeds = {k: v.reshape(-1, 1) if v.ndim == 1 else v for k, v in case.feeds.items()}
            got = client.infer(case.name, feeds)
            assert set(got) == set(case.expected), case.name
            for name, expected in case.expected.items():
                np.testing.assert_allclose(got[name], expected, rtol=1e-3, atol=1e-4, err_msg=f"{case.name}/{name}")
