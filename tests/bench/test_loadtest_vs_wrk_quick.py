"""The load-generator fidelity bench runs (its --quick smoke form); its figures are for docs/benchmarks.md, not
asserted here.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loadtest.e2e_helpers import requires_stack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [*requires_stack, pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")]


def test_fidelity_bench_quick_runs_every_sender() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/loadtest_vs_wrk.py", "--quick", "--model", "trivial", "--tools", "http,wrk,grpc"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # concurrency, 3 tools "RPS[, +x%] (p50 / p99)", generator CPU, Triton-counted gRPC req/s
    assert len(cells) == 6
    for cell in cells[1:4]:
        assert re.match(r"^\d+(, [+-]\d+%)? \(\d+\.\d\d / \d+\.\d\d\)$", cell), cell
    assert int(cells[5]) > 0
