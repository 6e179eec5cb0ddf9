"""The simplify pass: Conv+BN folding, identity removal, portable output by default, outputs unchanged."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from accelserve.artifact import ModelArtifact
from accelserve.evaluate import accuracy_vs_base
from accelserve.passes.base import PassContext
from accelserve.passes.simplify import SimplifyPass
from tests.evaluate.models import cnn_feeds, make_cnn, op_counts


def _simplify(model: Path, tmp_path: Path, **config):
    ctx = PassContext(work_dir=tmp_path / "work")
    ctx.work_dir.mkdir(exist_ok=True)
    return SimplifyPass(config).run(ModelArtifact(model), tmp_path / "simple.onnx", ctx), ctx


@pytest.mark.parametrize("backend", ["auto", "onnxslim", "ort"])
def test_batchnorm_is_folded_and_identity_removed(tmp_path: Path, backend: str) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    before = op_counts(model)
    out, ctx = _simplify(model, tmp_path, backend=backend)
    after = op_counts(out.path)
    assert before["BatchNormalization"] == 1 and before["Identity"] == 1
    assert "BatchNormalization" not in after and "Identity" not in after
    assert after["Conv"] == before["Conv"]
    assert ctx.report["nodes_after"] == ctx.report["nodes_before"] - 2
    assert ctx.report["removed_ops"] == {"BatchNormalization": 1, "Identity": 1}
    stats = accuracy_vs_base(model, out.path, cnn_feeds(count=2))
    assert stats.max_abs_error < 1e-4


def test_default_output_is_portable_and_ort_target_may_fuse(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    out, ctx = _simplify(model, tmp_path)
    assert {n.domain for n in onnx.load(str(out.path)).graph.node} <= {"", "ai.onnx"}
    assert ctx.report["portable"] is True
    fused, ctx = _simplify(model, tmp_path, target="ort")
    domains = {n.domain for n in onnx.load(str(fused.path)).graph.node}
    assert "com.microsoft" in domains  # e.g. FusedConv: runs on ONNX Runtime only
    assert ctx.report["portable"] is False
    assert accuracy_vs_base(model, fused.path, cnn_feeds(count=1)).max_abs_error < 1e-4


def test_unknown_option_is_rejected() -> None:
    from accelserve.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="invalid options for pass 'simplify'"):
        SimplifyPass({"backend": "onnxsim"})
