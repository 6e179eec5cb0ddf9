"""``accelserve run`` on the trained digits CNN: auto search end to end with a real Triton load test, a must-fail
accuracy budget, cache reuse, and a clean stop on SIGTERM.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from accelserve.cli.main import main
from accelserve.pipeline import run_pipeline
from accelserve.pipeline.progress import Progress
from tests.pipeline.conftest import snapshot

pytestmark = pytest.mark.torch

DATA = """\
data:
  calibration: calib.npz
  evaluation: test.npz
  labels: test_labels.npy
repository:
  path: model_repository
  name: digits
  max_batch_size: 32
  dynamic_batching: true
"""


def write(project: Path, text: str) -> Path:
    path = project / "pipeline.yaml"
    path.write_text(text)
    return path


@pytest.mark.e2e
@pytest.mark.slow
def test_auto_search_end_to_end_with_triton_load_test(digits_project: Path) -> None:
    config = write(digits_project, DATA + """\
model:
  source: digits_model:build
  framework: torch
  inputs: ["x:1x1x8x8:float32"]
  files: [weights.npz]
search:
  candidates: auto
  passes: [int8, prune-channels]
  space: {int8: {method: [minmax, percentile]}, prune-channels: {ratio: [0.25, 0.5]}}
  max_accuracy_drop: 3.0
  objective: throughput
  batch_size: 16
  timing_seconds: 1
loadtest:
  concurrency: [1, 2]
  duration: 2
  warmup: 1
  slo: ["p99_ms<=2000", "throughput>=5"]
""")
    result = run_pipeline(config, progress=Progress(quiet=True))
    report = result.report
    assert result.exit_code == 0, report["messages"]
    cands = {c["recipe"]: c for c in report["candidates"]}
    # auto built the candidates from the search spaces (simplify first, each space point on top of it) ...
    assert {"simplify", "simplify,int8", "simplify,int8(method=percentile)",
            "simplify,prune-channels(ratio=0.25)", "simplify,prune-channels"} <= set(cands)
    # ... and stacked every qualifying pruning variant with the most accurate qualifying int8 variant
    pruned_ok = [r for r, c in cands.items() if "prune" in r and c["origin"] == "auto" and c["verdict"] == "pass"]
    stacked = [c for c in report["candidates"] if c["origin"] == "stacked"]
    assert pruned_ok and {c["parent"] for c in stacked} == set(pruned_ok)
    assert all(c["steps"][-1]["pass"] == "int8" for c in stacked)
    for c in report["candidates"]:
        if c["status"] == "built":
            assert c["latency_p50_ms"] > 0 and c["size_bytes"] > 0 and c["metric"] is not None
            assert c["verdict"] == ("pass" if c["accuracy_drop_points"] <= 3.0 else "fail")
    winner = report["winner"]
    best = max((c for c in report["candidates"] if c["verdict"] == "pass"), key=lambda c: c["throughput"])
    assert winner["recipe"] == best["recipe"] and not winner["fallback"]
    # the load test ran on the real tritonserver and every gate passed
    assert [s["level"] for s in report["loadtest"]["result"]["steps"]] == [1, 2]
    names = [g["name"] for g in report["gates"]]
    assert "loadtest: slo p99_ms<=2000" in names and all(g["passed"] for g in report["gates"])
    # the winner is in the repository, with the repository options
    repo = digits_project / "model_repository" / "digits"
    assert (repo / "1" / "model.onnx").read_bytes() == Path(winner["model"]).read_bytes()
    config_text = (repo / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in config_text and "dynamic_batching" in config_text
    assert not (digits_project / ".accelserve-run" / "pipeline" / "staged-repository").exists()
    # reports: JSON, Markdown, JUnit (one case per gate and per candidate constraint), Pareto PNG
    out = digits_project / ".accelserve-run" / "pipeline" / "reports"
    assert json.loads((out / "report.json").read_text())["schema_version"] == 1
    assert "accelserve pipeline: PASSED" in (out / "report.md").read_text()
    suites = ET.parse(out / "report.xml").getroot()
    cases = suites.findall("./testsuite/testcase")
    built = [c for c in report["candidates"] if c["status"] == "built"]
    others = [c for c in report["candidates"] if c["status"] != "built"]
    assert len(cases) == len(report["gates"]) + sum(len(c["constraints"]) for c in built) + len(others)
    assert int(suites.find("./testsuite[@name='candidates']").get("failures")) == sum(
        not v["passed"] for c in built for v in c["constraints"].values()) + sum(c["status"] == "failed" for c in others)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_must_fail_accuracy_budget_exits_2_and_leaves_repository_unchanged(digits_project: Path, capsys) -> None:
    from accelserve.triton.repository import add_model

    add_model(digits_project / "digits.onnx", digits_project / "model_repository", "digits")
    before = snapshot(digits_project / "model_repository")
    config = write(digits_project, DATA + """\
model: {source: digits.onnx}
search:
  candidates: ["simplify,prune-channels(ratio=0.75,reconstruct=false)", "simplify,int8"]
  max_accuracy_drop: 0.0
  min_accuracy: 0.999
  timing_seconds: 0.5
""")
    junit = digits_project / "junit.xml"
    code = main(["run", str(config), "--junit", str(junit), "--quiet"])
    out = capsys.readouterr().out
    assert code == 2
    assert snapshot(digits_project / "model_repository") == before
    # the report says which constraint each candidate (and the FP32 fallback) missed
    assert "accelserve pipeline: FAILED" in out and "Repository: not changed." in out
    report = json.loads((digits_project / ".accelserve-run" / "pipeline" / "reports" / "report.json").read_text())
    assert report["status"] == "failed" and report["winner"] is None
    pruned = report["candidates"][0]
    assert pruned["constraints"]["accuracy"]["passed"] is False and pruned["accuracy_drop_points"] > 0
    assert all(c["constraints"]["min_accuracy"]["passed"] is False for c in report["candidates"])
    gate = report["gates"][0]
    assert not gate["passed"] and "FP32 fallback: min_accuracy" in gate["detail"]
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert len(failures) >= 3


def test_cache_reuse_and_changed_evaluation_set(digits_project: Path) -> None:
    import numpy as np

    config = write(digits_project, DATA + """\
model: {source: digits.onnx}
search:
  candidates: ["simplify,int8"]
  max_accuracy_drop: 5.0
  timing_seconds: 0.5
""")
    first = run_pipeline(config, progress=Progress(quiet=True)).report
    assert first["status"] == "passed" and first["cached_stages"] == 0
    assert first["repository"]["version"] == 1 and first["repository"]["written"]
    second = run_pipeline(config, progress=Progress(quiet=True)).report
    assert second["status"] == "passed"
    assert [s["stage"] for s in second["stages"]] == [s["stage"] for s in first["stages"]]
    assert all(s["cached"] for s in second["stages"])
    assert second["repository"] == {**first["repository"], "written": False,
                                    "detail": "version 1 already holds this model; nothing written"}
    # a changed evaluation set re-runs evaluation only
    with np.load(digits_project / "test.npz") as npz:
        np.savez(digits_project / "test.npz", x=npz["x"][:300])
    np.save(digits_project / "test_labels.npy", np.load(digits_project / "test_labels.npy")[:300])
    third = run_pipeline(config, progress=Progress(quiet=True)).report
    rerun = {s["stage"] for s in third["stages"] if not s["cached"]}
    assert rerun == {"evaluate-accuracy", "evaluate-speed"}
    assert {s["stage"] for s in third["stages"] if s["cached"]} == {"export", "optimize", "verify"}


SLOW_METRIC = """\
import time

import numpy as np

CALLS = []


def metric(outputs, labels):
    CALLS.append(1)
    if len(CALLS) == 2:  # the first candidate's evaluation: long enough to be stopped in the middle
        time.sleep(120)
    return float(np.mean(next(iter(outputs.values())).argmax(axis=-1) == labels))
"""


def test_sigterm_stops_cleanly_with_partial_report(digits_project: Path) -> None:
    (digits_project / "slow_metric.py").write_text(SLOW_METRIC)
    config = write(digits_project, DATA.replace("labels: test_labels.npy", "labels: test_labels.npy\n  metric: slow_metric:metric")
                   + """\
model: {source: digits.onnx}
search:
  candidates: ["simplify", "simplify,int8"]
""")
    proc = subprocess.Popen([sys.executable, "-m", "accelserve", "run", str(config)], cwd=digits_project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "start evaluate-accuracy [simplify]" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(seen) + rest
    work = digits_project / ".accelserve-run" / "pipeline"
    report = json.loads((work / "reports" / "report.json").read_text())
    assert report["status"] == "interrupted" and "repository is untouched" in report["messages"][0]
    assert not (digits_project / "model_repository").exists()
    # finished stages are kept (export, the FP32 evaluation, simplify's optimize and verify); nothing half-written
    assert {s["stage"] for s in report["stages"]} == {"export", "evaluate-accuracy", "optimize", "verify"}
    assert len(list((work / "cache" / "optimize").iterdir())) == 1
    assert len(list((work / "cache" / "evaluate-accuracy").iterdir())) == 1
    assert not [p for p in (work / "cache").rglob(".*") if p.is_dir()]
