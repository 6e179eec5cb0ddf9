"""A repository target (accelserve starts and stops Triton for the run), and a server that dies mid-run.
This module's server is killed by a test, so it does not share the other module's server.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.loadtest.e2e_helpers import assert_sane_step, load_json, make_repository, requires_stack, run_cli

pytestmark = requires_stack


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("faults"))


def _listening(url: str) -> bool:
    host, port = url.split("://")[-1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_a_repository_target_gets_its_own_triton_for_the_run(repo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code = run_cli([str(repo), "lin", "--protocol", "grpc", "--concurrency", "2", "--duration", "1", "--warmup", "0",
                    "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    data = load_json(out)
    assert data["target"]["served_from"] == str(repo.resolve())
    assert data["target"]["protocol"] == "grpc"
    assert_sane_step(data["steps"][0])
    assert not _listening(data["target"]["url"])  # stopped afterwards


def test_a_server_dying_mid_run_stops_the_run_with_an_incomplete_report(repo: Path, tmp_path: Path, capsys) -> None:
    from accelserve.triton.server import TritonServer

    out, work = tmp_path / "r.json", tmp_path / "work"
    codes: list[int] = []
    with TritonServer(repo) as server:
        args = [server.http_url, "lin", "--concurrency", "1,2,4,8", "--duration", "2", "--warmup", "0.5",
                "--json", str(out), "--html", str(tmp_path / "r.html"), "--work-dir", str(work)]
        thread = threading.Thread(target=lambda: codes.append(run_cli(args)))
        thread.start()
        live = work / "result.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the first step is on disk, then kill the server
            if live.exists() and '"level"' in live.read_text():
                break
            time.sleep(0.1)
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert time.monotonic() - killed_at < 15  # the run noticed within a window or two
    captured = capsys.readouterr()
    assert codes == [1]
    assert "stopped early" in captured.err and "stopped answering" in captured.err
    assert "gates: not evaluated, the run is incomplete" in captured.out and "passed" not in captured.out
    data = load_json(out)
    assert data["complete"] is False and "stopped answering" in data["abort_reason"] and data["gates"] == []
    assert 1 <= len(data["steps"]) < 4
    assert_sane_step(data["steps"][0])
    page = (tmp_path / "r.html").read_text()
    assert "INCOMPLETE" in page and "not evaluated (the run is incomplete)" in page
