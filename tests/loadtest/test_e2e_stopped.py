"""A load test that is stopped (real SIGINT / SIGTERM to a real `accelserve loadtest` process) or refused still
writes its report, marked incomplete with the reason, and leaves no load process or temporary directory.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.loadtest.e2e_helpers import assert_sane_step, load_json, make_repository, requires_stack, run_cli
from tests.triton.serve_helpers import pid_alive

pytestmark = requires_stack


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from accelserve.triton.server import TritonServer

    with TritonServer(make_repository(tmp_path_factory.mktemp("stopped"))) as s:
        yield s


def test_a_refused_run_writes_an_incomplete_report_with_the_reason(server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    assert run_cli([server.http_url, "nope", "--json", str(out), "--slo", "p99_ms<=5000"]) == 1
    captured = capsys.readouterr()
    assert "'nope' is not loaded" in captured.err
    assert "gates: not evaluated" in captured.out and "passed" not in captured.out
    data = load_json(out)
    assert data["complete"] is False and data["steps"] == [] and data["gates"] == []
    assert data["abort_reason"].startswith("not run: model 'nope' is not loaded")
    assert data["target"]["model"] == "nope"


@pytest.mark.parametrize(("signum", "code", "reason", "to_group"), [
    (signal.SIGINT, 130, "interrupted (SIGINT)", True),  # Ctrl-C on a terminal: the whole process group
    (signal.SIGTERM, 143, "terminated (SIGTERM)", False),  # a CI cancel: the accelserve process only
], ids=["sigint-group", "sigterm"])
def test_a_signal_after_a_finished_step_writes_the_partial_report(
    server, tmp_path: Path, signum: int, code: int, reason: str, to_group: bool
) -> None:
    out, tmp = tmp_path / "r.json", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "accelserve", "loadtest", server.http_url, "lin", "--concurrency", "1,2,4",
         "--duration", "1", "--warmup", "0.5", "--json", str(out), "--slo", "p99_ms<=5000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    err_lines: list[str] = []
    step_done = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if "done." in line:
                step_done.set()

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    try:
        assert step_done.wait(120), "".join(err_lines)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no load process"
        assert any(tmp.glob("accelserve-loadtest-*"))
        os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
        stopped_at = time.monotonic()
        proc.wait(timeout=90)  # not communicate(): it would read stderr too, racing the reader thread for the
        stdout = proc.stdout.read()  # last lines (seen: the final 'stopped and cleaned up' line went to communicate)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    stderr = "".join(err_lines)
    assert proc.returncode == code, stdout + stderr
    assert time.monotonic() - stopped_at < 60
    assert f"{reason}: stopped and cleaned up" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "gates: not evaluated" in stdout and "passed" not in stdout, stdout
    data = load_json(out)
    assert data["complete"] is False and data["abort_reason"] == reason and data["gates"] == []
    assert 1 <= len(data["steps"]) < 3
    assert_sane_step(data["steps"][0])
    assert not any(pid_alive(int(c)) for c in children)  # the load process is gone
    assert not list(tmp.glob("accelserve-*"))  # and its temporary directory
