"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.graphs import make_linear_model


@pytest.fixture
def linear_model(tmp_path: Path) -> Path:
    return make_linear_model(tmp_path / "linear.onnx")
