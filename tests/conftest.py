"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.models import make_cnn
from tests.graphs import make_linear_model


@pytest.fixture
def linear_model(tmp_path: Path) -> Path:
    return make_linear_model(tmp_path / "linear.onnx")


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep calibration statistics written by any test out of the user's cache directory."""
    monkeypatch.setenv("ACCELSERVE_CACHE_DIR", str(tmp_path / "accelserve-cache"))


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    """A small Conv/BN/Relu/Gemm classifier built with onnx.helper (tests/evaluate/models.py)."""
    return make_cnn(tmp_path / "cnn.onnx")
