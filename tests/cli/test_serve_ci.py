"""`accelserve serve` as CI runs it: real processes, real signals, a real second tritonserver on the port.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from accelserve.triton.server import TritonServer
from tests.triton.serve_helpers import make_serving_repository, pid_alive, port_is_free

READY_TIMEOUT_S = 180
SERVE = [sys.executable, "-m", "accelserve", "serve"]
FREE_PORTS = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (tritonserver's python-backend stubs), from /proc."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before ready"
        assert time.monotonic() < deadline, "no ready file"
        time.sleep(0.1)
    return json.loads(path.read_text())


@pytest.mark.e2e
def test_serve_never_announces_ready_when_another_server_holds_its_port(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    ready_file = tmp_path / "ready.json"
    with TritonServer(repo, timeout=READY_TIMEOUT_S) as other:  # a real Triton already on the HTTP port
        result = subprocess.run(
            [*SERVE, str(repo), "--http-port", str(other.ports["http"]), "--grpc-port", "0", "--metrics-port", "0",
             "--ready-file", str(ready_file)],
            capture_output=True, text=True, timeout=READY_TIMEOUT_S,
        )
        assert other.is_alive()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "is ready" not in result.stdout and "Press Ctrl-C" not in result.stdout, result.stdout
    assert "already in use" in result.stderr and "Traceback" not in result.stderr
    assert not ready_file.exists()


@pytest.mark.e2e
def test_serve_started_with_and_by_a_script_writes_its_ready_file_and_stops_on_sigint(tmp_path: Path) -> None:
    """`bash -c 'accelserve serve repo & ...'`: the background job starts with SIGINT ignored."""
    repo, _ = make_serving_repository(tmp_path, batching=False)
    ready_file = tmp_path / "ready.json"
    serve = " ".join([*SERVE, str(repo), *FREE_PORTS, "--ready-file", str(ready_file)])
    script = f'{serve} & echo $! > {tmp_path}/pid; wait $!; echo "exit=$?"'
    shell = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = wait_for_file(ready_file, shell)
        pid = int((tmp_path / "pid").read_text())
        assert ready["pid"] == pid
        triton = ready["tritonserver_pid"]
        assert pid_alive(triton)
        with urllib.request.urlopen(ready["http"] + "/v2/trace/setting", timeout=10) as response:
            trace_file = json.loads(response.read())["trace_file"]
        assert Path(trace_file).stem == ready["server_id"]  # the server answering is this one
        with urllib.request.urlopen(ready["http"] + "/v2", timeout=10) as response:
            assert json.loads(response.read())["name"] == "triton"  # Triton's name, as clients expect
        assert ready["grpc"].startswith("grpc://127.0.0.1:") and ready["metrics"].endswith("/metrics")
        assert [(m["name"], m["state"]) for m in ready["models"]] == [("fixed", "READY")]
        stubs = descendants(triton)
        assert stubs, "no python-backend stub under tritonserver"
        segments = list(Path("/dev/shm").glob(f"accelserve{pid}_*"))
        assert segments and all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in segments)  # private

        os.kill(pid, signal.SIGINT)
        out, _ = shell.communicate(timeout=60)
    finally:
        if shell.poll() is None:
            if (tmp_path / "pid").exists():
                os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
            shell.kill()
    assert "exit=0" in out and "interrupted (SIGINT): stopping tritonserver" in out, out
    assert not pid_alive(pid) and not pid_alive(triton) and not any(pid_alive(p) for p in stubs)
    assert not ready_file.exists()
    assert all(port_is_free(int(ready[k].split(":")[-1].split("/")[0])) for k in ("http", "grpc", "metrics"))
    assert not any(Path("/dev/shm").glob(f"accelserve{pid}_*"))


@pytest.mark.e2e
def test_a_killed_serve_s_temp_dir_is_removed_by_the_next_start(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    ready_file = tmp_path / "ready.json"
    proc = subprocess.Popen([*SERVE, str(repo), *FREE_PORTS, "--ready-file", str(ready_file)],
                            env=dict(os.environ, TMPDIR=str(tmp)), stdout=subprocess.DEVNULL, text=True)
    try:
        triton = wait_for_file(ready_file, proc)["tritonserver_pid"]
        os.kill(proc.pid, signal.SIGKILL)  # no cleanup runs
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while pid_alive(triton) and time.monotonic() < deadline:  # the parent-death signal stops tritonserver
        time.sleep(0.1)
    assert not pid_alive(triton)
    left = list(tmp.glob(f"accelserve-triton-{proc.pid}-*"))
    assert len(left) == 1 and left[0].is_dir()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with TritonServer(repo, timeout=READY_TIMEOUT_S) as server:
        assert [item.path for item in server.removed_leftovers] == left
        assert server.removed_leftovers[0].pid == proc.pid
        assert not left[0].exists()
        assert server.served_repository is not None and server.served_repository.parent.parent == tmp
