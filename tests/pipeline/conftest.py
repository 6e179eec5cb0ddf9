"""A pipeline project around the bundled digits CNN, trained once per session on scikit-learn's digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

MODEL_PY = '''\
from pathlib import Path

import numpy as np
import torch

from accelserve.examples.digits import digits_module


def build():
    model = digits_module(16, "pool")
    with np.load(Path(__file__).with_name("weights.npz")) as w:  # plain arrays: nothing is unpickled
        model.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    return model.eval()
'''


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from accelserve.examples.digits import INPUT_NAME, digits_data, train_digits_cnn
    from accelserve.exporters.torch_exporter import export_torch

    root = tmp_path_factory.mktemp("digits-project")
    data = digits_data(0)
    model = train_digits_cnn(data, epochs=8)
    np.savez(root / "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    (root / "digits_model.py").write_text(MODEL_PY)
    np.savez(root / "calib.npz", **{INPUT_NAME: data.x_train[:128]})
    np.savez(root / "test.npz", **{INPUT_NAME: data.x_test})
    np.save(root / "test_labels.npy", data.y_test)
    export_torch(model, {INPUT_NAME: data.x_test[:4]}, root / "digits.onnx", inputs=[f"{INPUT_NAME}:4x1x8x8:float32"])
    return root


@pytest.fixture
def digits_project(digits_files: Path, tmp_path: Path) -> Path:
    """A fresh copy of the project (its own work dir and repository)."""
    dest = tmp_path / "project"
    shutil.copytree(digits_files, dest)
    return dest


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to check a repository is byte-identical)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else {}
