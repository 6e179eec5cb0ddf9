"""`accelserve loadtest` against the real tritonserver: sweeps over HTTP and gRPC, reports, gates, distributed
mode, request options, pre-run errors, and the plain-Locust locustfile. One server for the module.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. Latencies measured here are the stand-in's (python backend + ONNX Runtime),
not those of the native backend a production Triton would use."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.loadtest.e2e_helpers import (
    assert_cli_not_patched,
    assert_sane_step,
    free_port,
    load_json,
    make_repository,
    requires_stack,
    run_cli,
)

pytestmark = requires_stack
REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--duration", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from accelserve.triton.server import TritonServer

    repo = make_repository(tmp_path_factory.mktemp("loadtest"))
    with TritonServer(repo) as s:
        yield s


def test_http_sweep_writes_json_csv_html_and_passes_gates(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "lin", "--concurrency", "1,4", *SHORT, "--json", str(out), "--csv",
                    str(tmp_path / "csv"), "--html", str(tmp_path / "r.html"), "--slo", "p99_ms<=5000",
                    "--slo", "throughput>=1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "gates: 3 passed, 0 failed" in printed
    data = load_json(out)
    assert data["complete"] is True and data["target"]["protocol"] == "http"
    assert [s["level"] for s in data["steps"]] == [1, 4]
    for step in data["steps"]:
        assert_sane_step(step)
        srv = step["server"]
        # Triton's statistics over the same window count the same requests, up to those in flight at its ends and
        # those completed while the statistics call itself was under way (milliseconds, on a busy machine tens of)
        assert abs(srv["requests"] - step["requests"]) <= 2 * step["users"] + 0.05 * step["requests"]
        assert 0 < srv["compute_infer_ms"] <= srv["request_ms"] <= step["latency_ms"]["avg"] * 1.5
    rows = list(csv.DictReader((tmp_path / "csv" / "steps.csv").open()))
    assert [float(r["inferences_per_s"]) for r in rows] == pytest.approx([s["inferences_per_s"] for s in data["steps"]])
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "all 3 gates passed" in page
    assert_cli_not_patched()


def test_grpc_sweep_with_a_gate_that_must_fail_exits_2(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    # stability mode this time: 1 s windows until 2 agree within 50%, at most 4 s per step
    code = run_cli([server.grpc_url, "lin", "--concurrency", "1,4", "--warmup", "1", "--window", "1",
                    "--stable-windows", "2", "--stability", "50%", "--max-step-time", "4", "--json", str(out),
                    "--slo", "throughput>=1e9", "--slo", "p50_ms<=100000"])
    printed = capsys.readouterr().out
    assert code == 2, printed
    assert "FAIL  slo throughput>=1e+09" in printed
    data = load_json(out)
    assert data["complete"] is True and data["target"]["protocol"] == "grpc"
    for step in data["steps"]:
        assert_sane_step(step)
        assert step["server"]["requests"] > 0
        assert step["windows"] == 2 and step["duration_s"] == 2 and len(step["window_series"]) == 2
        # stability mode gives a verdict (never None), and it is perf_analyzer's rule applied to the two windows kept:
        # throughput and p95 each within +/- 50 % of their mean (recomputed here from the reported series)
        assert isinstance(step["stable"], bool)
        agree = all(
            all(abs(v - np.mean(vs)) <= 0.5 * np.mean(vs) for v in vs)
            for vs in ([w["requests_per_s"] for w in step["window_series"]], [w["p95_ms"] for w in step["window_series"]])
        )
        assert step["stable"] is agree, step["window_series"]
    verdicts = {g["name"]: g["passed"] for g in data["gates"]}
    assert verdicts == {"slo throughput>=1e+09": False, "slo p50_ms<=100000": True, "max-error-rate 0": True}
    # the result is a usable baseline: the same run against itself passes the regression gates
    code = run_cli([server.grpc_url, "lin", "--concurrency", "4", *SHORT, "--baseline", str(out),
                    "--max-regression", "500%"])
    assert code == 0, capsys.readouterr().out


def test_two_workers_aggregate_to_the_sum_of_their_counts(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "lin", "--concurrency", "4", "--workers", "2", "--duration", "3",
                    "--warmup", "1", "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    data = load_json(out)
    lg = data["load_generator"]
    assert lg["workers"] == 2 and len(lg["worker_requests"]) == 2
    assert all(n > 0 for n in lg["worker_requests"])  # both workers ran users
    assert lg["total_requests"] == sum(lg["worker_requests"])  # the master's aggregate is exactly the sum
    [step] = data["steps"]
    assert_sane_step(step)
    assert step["requests"] < lg["total_requests"]  # the window excludes warm-up and ramp-down
    assert step["server"]["requests"] > 0


def test_dynamic_dims_come_from_shape_and_batch_counts_in_throughput(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "seq", "--shape", "x=2x16", "--range", "0:5", "--concurrency", "2",
                    "--duration", "1", "--warmup", "0", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    data = load_json(out)
    assert data["target"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 16]}]
    assert data["target"]["batch_size"] == 2
    [step] = data["steps"]
    assert step["inferences_per_s"] == pytest.approx(2 * step["requests_per_s"])
    srv = step["server"]
    # Triton updates its request and inference counters one after the other: a read between them is off by a request
    assert abs(srv["inferences"] - 2 * srv["requests"]) <= 2 * step["users"], srv


def test_request_rate_mode_paces_the_users(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "lin", "--rate", "40,80", "--rate-users", "4", *SHORT, "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    data = load_json(out)
    assert [s["target_rate"] for s in data["steps"]] == [40, 80]
    for step in data["steps"]:
        assert_sane_step(step)
        assert step["users"] == 4
        assert step["requests_per_s"] == pytest.approx(step["target_rate"], rel=0.2)


@pytest.mark.parametrize("args, message", [
    (["lin", "--batch", "64"], "max_batch_size 8"),
    (["lin", "--shape", "x=1x5"], "does not fit"),
    (["seq"], "dynamic dim"),
    (["nope"], "loaded models: lin, seq"),
])
def test_bad_requests_fail_before_the_run(server, args: list[str], message: str, capsys) -> None:
    start = time.monotonic()
    assert run_cli([server.http_url, *args]) == 1
    assert message in capsys.readouterr().err
    assert time.monotonic() - start < 10  # no load process was started


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_server_fails_within_seconds(scheme: str, capsys) -> None:
    start = time.monotonic()
    assert run_cli([f"{scheme}://127.0.0.1:{free_port()}", "lin"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert time.monotonic() - start < 10


def test_locustfile_runs_under_plain_locust(server, tmp_path: Path) -> None:
    prefix = tmp_path / "stats"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtests" / "triton_locustfile.py"), "--headless",
         "-u", "2", "-r", "2", "-t", "2s", "--only-summary", "--csv", str(prefix),
         "--triton-url", server.grpc_url, "--triton-model", "lin", "--triton-batch", "2"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["lin infer"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
