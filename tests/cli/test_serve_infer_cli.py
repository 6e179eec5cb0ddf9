"""``accelserve serve`` (a real tritonserver in a subprocess) and ``accelserve infer`` against it.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. Outputs compared with local ONNX Runtime are ONNX Runtime's on both sides."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from accelserve.cli.main import main
from accelserve.triton.server import free_port
from tests.graphs import make_linear_model
from tests.triton.serve_helpers import make_serving_repository, pid_alive, port_is_free

READY_TIMEOUT_S = 180


@dataclass
class Served:
    process: subprocess.Popen[str]
    urls: dict[str, str]
    onnx: Path
    lines: list[str]


def _start_serve(repo: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    """Run `accelserve serve` and collect its stdout lines in a thread; the event fires at the ready banner."""
    cmd = [sys.executable, "-m", "accelserve", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
           "--metrics-port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                ready.set()
        ready.set()  # EOF: the process ended

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, ready


def _url(lines: list[str], label: str) -> str:
    for line in lines:
        m = re.match(rf"^\s+{label}\s+(\S+)$", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no {label} URL in the serve output:\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo, onnx_path = make_serving_repository(tmp_path_factory.mktemp("cli_serve"))
    proc, lines, ready = _start_serve(repo)
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        yield Served(proc, {k: _url(lines, k) for k in ("HTTP", "gRPC", "metrics")}, onnx_path, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.e2e
def test_serve_prints_urls_and_models(served: Served) -> None:
    assert served.urls["HTTP"].startswith("http://127.0.0.1:")
    assert served.urls["gRPC"].startswith("grpc://127.0.0.1:")
    text = "\n".join(served.lines)
    assert re.search(r"^\s+lin \(version 1\) READY\s+\[ONNX Runtime stand-in", text, re.MULTILINE)
    assert re.search(r"^\s+fixed \(version 1\) READY", text, re.MULTILINE)


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_infer_random_compares_with_onnxruntime(served: Served, protocol: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["infer", served.urls[protocol], "lin", "--random", "--batch", "3", "--compare", str(served.onnx)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^\s+y\s+shape=3x3 dtype=float32\s+\[", out, re.MULTILINE)
    assert re.search(r"^y\s+3x3\s.*PASS$", out, re.MULTILINE)


@pytest.mark.e2e
def test_infer_npz_data_with_protocol_flag(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(7).standard_normal((2, 4)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    address = served.urls["gRPC"].removeprefix("grpc://")
    rc = main(["infer", address, "fixed", "--protocol", "grpc", "--data", str(tmp_path / "in.npz"),
               "--compare", str(served.onnx)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"x  shape=2x4 dtype=float32  [{x.reshape(-1)[0]:.6g}," in out


@pytest.mark.e2e
def test_infer_cuts_a_large_npz_into_batch_requests(served: Served, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
    np.savez(tmp_path / "many.npz", x=x)
    rc = main(["infer", served.urls["HTTP"], "lin", "--data", str(tmp_path / "many.npz"), "--batch", "4",
               "--compare", str(served.onnx)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "requests: 3 of batch 4 (last 2)" in out
    assert re.search(r"^\s+y\s+shape=10x3 dtype=float32", out, re.MULTILINE)
    assert re.search(r"^y\s+10x3\s.*PASS$", out, re.MULTILINE)
    rc = main(["infer", served.urls["HTTP"], "lin", "--data", str(tmp_path / "many.npz"), "--batch", "64"])
    assert rc == 1 and "exceeds the max_batch_size 32" in capsys.readouterr().err


@pytest.mark.e2e
def test_infer_compare_checks_the_model_file_like_every_command(served: Served, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_onnx_limits import _relu

    rank = _relu(tmp_path / "rank.onnx", ["batch"] + [1] * 9999)
    rc = main(["infer", served.urls["HTTP"], "lin", "--random", "--compare", str(rank)])
    err = capsys.readouterr().err
    assert rc == 1 and "rank 10000" in err and "Traceback" not in err, err


@pytest.mark.e2e
def test_infer_random_range(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["infer", served.urls["HTTP"], "lin", "--random", "--batch", "8", "--range", "x=5:6"])
    out = capsys.readouterr().out
    assert rc == 0, out
    found = re.search(r"^\s+x\s+shape=8x4 dtype=float32.*min=(\S+) max=(\S+)", out, re.MULTILINE)
    assert found and 5 <= float(found.group(1)) and float(found.group(2)) < 6, out


@pytest.mark.e2e
def test_infer_against_a_different_model_fails_the_comparison(served: Served, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    other = make_linear_model(tmp_path / "other.onnx", seed=1)
    rc = main(["infer", served.urls["HTTP"], "lin", "--random", "--batch", "4", "--compare", str(other)])
    assert rc == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.e2e
def test_infer_unknown_model_lists_loaded_models(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["infer", served.urls["HTTP"], "resnet", "--random"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "model 'resnet' is not loaded" in err and "loaded models: fixed, lin" in err
    assert "Traceback" not in err


@pytest.mark.e2e
def test_infer_rejects_a_shape_that_does_not_fit(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["infer", served.urls["HTTP"], "lin", "--random", "--shape", "x=2x5"])
    assert rc == 1
    assert "does not fit the model's shape [-1, 4]" in capsys.readouterr().err


def test_infer_unreachable_server_is_a_quick_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    rc = main(["infer", f"127.0.0.1:{free_port()}", "m", "--random", "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot reach a Triton server" in err and "Traceback" not in err
    assert time.monotonic() - start < 10


@pytest.mark.e2e
def test_sigterm_stops_serve_and_its_tritonserver(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    proc, lines, ready = _start_serve(repo)
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        port = int(_url(lines, "HTTP").rsplit(":", 1)[1])
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "serve has no tritonserver child"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(pid_alive(int(c)) for c in children)
    assert port_is_free(port)


@pytest.mark.e2e
def test_serve_of_a_broken_model_exits_1_quoting_the_log(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    (repo / "fixed" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    result = subprocess.run(
        [sys.executable, "-m", "accelserve", "serve", str(repo), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=READY_TIMEOUT_S,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed to load 'fixed'" in result.stderr and "Traceback" not in result.stderr
    kept = re.search(r"full log: (\S+)\)", result.stderr)
    if kept:
        os.unlink(kept.group(1))
