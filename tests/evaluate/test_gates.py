"""Accuracy gates (accelserve.evaluate.gates) and the --max-accuracy-drop/--min-cosine/--min-agreement flags of
`evaluate` and `optimize` (exit 2 when one fails)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from accelserve.cli.main import main
from accelserve.errors import InvalidInputError
from accelserve.evaluate import evaluate_models, run_model
from accelserve.evaluate.gates import AccuracyGates, check_accuracy_gates, failed_gates
from tests.evaluate.models import cnn_feeds
from tests.evaluate.test_evaluate import _nearly_constant_cnn, _perturbed_head


@pytest.fixture
def data(cnn: Path, tmp_path: Path) -> tuple[Path, Path]:
    feeds = cnn_feeds(count=4)
    np.savez(tmp_path / "d.npz", x=np.concatenate([f["x"] for f in feeds]))
    labels = np.concatenate([np.argmax(o["y"], -1) for o in run_model(cnn, feeds)])  # the base is 100% right
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path / "d.npz", tmp_path / "labels.npy"


def test_gates_report_which_failed_and_by_how_much(cnn: Path, tmp_path: Path) -> None:
    feeds = cnn_feeds(count=4)
    labels = np.concatenate([np.argmax(o["y"], -1) for o in run_model(cnn, feeds)])
    close = _perturbed_head(tmp_path / "close.onnx", cnn, 0.001)
    far = _perturbed_head(tmp_path / "far.onnx", cnn, 0.6)
    report = evaluate_models(cnn, [close, far], feeds, labels=labels, speed=False, memory=False,
                             names=["close", "far"])
    far_drop = 100 * report.metric_drop(report.candidates[1])
    assert far_drop > 5
    results = check_accuracy_gates(report, AccuracyGates(max_accuracy_drop=5.0, min_cosine=0.99, min_agreement=90))
    by = {(r.candidate, r.gate): r for r in results}
    assert len(results) == 6 and all(by[("close", g)].passed for g in ("max-accuracy-drop", "min-cosine",
                                                                         "min-agreement"))
    drop = by[("far", "max-accuracy-drop")]
    assert not drop.passed and drop.value == pytest.approx(far_drop)
    assert drop.shortfall == pytest.approx(far_drop - 5.0) and "over by" in drop.detail
    assert [r.gate for r in failed_gates(results)][0] == "max-accuracy-drop"
    report.apply_gates(AccuracyGates(max_accuracy_drop=5.0))
    doc = report.to_dict()
    assert doc["gates_passed"] is False and doc["gates"][1]["gate"] == "max-accuracy-drop"
    assert "FAIL max-accuracy-drop [far]" in report.markdown()


def test_agreement_gates_never_pass_on_a_degenerate_base(cnn: Path, tmp_path: Path) -> None:
    base = _nearly_constant_cnn(tmp_path / "flat.onnx", cnn)
    cand = _perturbed_head(tmp_path / "flat_cand.onnx", base, 1e-3)
    report = evaluate_models(base, [cand], cnn_feeds(count=2), speed=False, memory=False)
    assert report.candidates[0].accuracy.cosine > 0.999  # would pass a 0.99 gate
    results = check_accuracy_gates(report, AccuracyGates(min_cosine=0.99, min_agreement=99))
    assert [r.passed for r in results] == [False, False]
    assert all(r.detail.startswith("cannot be judged") and "not meaningful" in r.detail for r in results)


def test_bad_gate_values_and_a_drop_gate_without_labels_are_user_errors() -> None:
    with pytest.raises(InvalidInputError, match="--min-cosine must be in"):
        AccuracyGates(min_cosine=2)
    with pytest.raises(InvalidInputError, match="--min-agreement must be a percentage"):
        AccuracyGates(min_agreement=101)
    with pytest.raises(InvalidInputError, match="--max-accuracy-drop needs labels"):
        AccuracyGates(max_accuracy_drop=1).check_inputs(has_labels=False)


def test_evaluate_cli_exits_2_when_a_gate_fails(cnn: Path, data: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    npz, labels = data
    far = _perturbed_head(tmp_path / "far.onnx", cnn, 0.6)
    common = ["evaluate", str(cnn), str(far), "--data", str(npz), "--labels", str(labels), "--no-speed",
              "--no-memory", "--json", str(tmp_path / "e.json")]
    assert main([*common, "--max-accuracy-drop", "100", "--min-cosine", "0"]) == 0
    capsys.readouterr()
    assert main([*common, "--max-accuracy-drop", "1", "--min-cosine", "0"]) == 2
    err = capsys.readouterr().err
    assert "FAIL max-accuracy-drop [far.onnx]" in err and "over by" in err and "1 passed, 1 failed" in err
    doc = json.loads((tmp_path / "e.json").read_text())  # the report is written before exit 2
    assert doc["gates_passed"] is False and [g["passed"] for g in doc["gates"]] == [False, True]
    assert main(["evaluate", str(cnn), str(far), "--data", str(npz), "--no-speed", "--no-memory",
                 "--max-accuracy-drop", "1"]) == 1
    assert "--max-accuracy-drop needs labels" in capsys.readouterr().err


def test_optimize_cli_exits_2_when_a_gate_fails(cnn: Path, data: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    npz, labels = data
    out = tmp_path / "q.onnx"
    common = ["optimize", str(cnn), "-o", str(out), "--recipe", "int8", "--calib", str(npz), "--labels",
              str(labels), "--batch-sizes", "", "--no-memory"]
    assert main([*common, "--min-cosine", "0.9", "--max-accuracy-drop", "50"]) == 0
    capsys.readouterr()
    assert main([*common, "--min-cosine", "0.9999999"]) == 2
    err = capsys.readouterr().err
    assert "FAIL min-cosine [int8]" in err and "< by" in err
    report = json.loads((tmp_path / "q.report.json").read_text())
    assert report["gates_passed"] is False and report["evaluation"]["gates"][0]["gate"] == "min-cosine"
    assert out.exists()  # the model is written; the exit status says it failed its gate
    assert main([*common, "--min-cosine", "0.9", "--no-evaluate"]) == 1
    assert "accuracy gates need the evaluation" in capsys.readouterr().err
