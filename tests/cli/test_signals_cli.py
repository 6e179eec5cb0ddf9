"""SIGTERM (a CI cancel) and SIGINT (Ctrl-C) stop every long command cleanly: real signals to real `accelserve`
processes, sent while each is mid-work (its temporary directory exists). Exit 143 / 130 with a message, no
temporary directory, child process or half-written output left. (serve and loadtest: their own test modules.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from accelserve.examples.onnx_models import resnet_onnx
from tests.triton import onnx_builders as ob
from tests.triton.serve_helpers import pid_alive

ACCELSERVE = [sys.executable, "-m", "accelserve"]


def signal_mid_work(cmd: list[str], workdir: Path, pattern: str, signum: int, tmp: Path,
                    preexec: Callable[[], None] | None = None, settle_s: float = 0.2, need_child: bool = False,
                    ) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run ``cmd`` (TMPDIR=tmp), send ``signum`` as soon as ``workdir`` holds ``pattern`` (and, with
    ``need_child``, the process has a child process, sent at once then); returns the finished process and the
    children it had at that moment."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
                            env=dict(os.environ, TMPDIR=str(tmp)))
    try:
        deadline = time.monotonic() + 120
        while not any(workdir.glob(pattern)):
            assert proc.poll() is None, f"finished before its work dir appeared: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        children_file = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        if need_child:  # a fixed pause could outlast a short-lived child on a fast machine
            while not children_file.read_text().split():
                assert proc.poll() is None, f"finished before it started a child: {proc.communicate()}"
                assert time.monotonic() < deadline
                time.sleep(0.002)
        else:
            time.sleep(settle_s)  # well inside the work
        children = [int(c) for c in children_file.read_text().split()]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), children


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


def _ignore_sigint() -> None:  # what a non-interactive shell does to a background job (`accelserve ... &`)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("signum", "code", "message", "preexec"), [
    (signal.SIGTERM, 143, "terminated (SIGTERM): stopped and cleaned up", None),
    (signal.SIGINT, 130, "interrupted (SIGINT): stopped and cleaned up", _ignore_sigint),
], ids=["sigterm", "sigint-started-ignored"])
def test_optimize_stops_and_removes_its_work_dir(tmp_path: Path, tmp: Path, signum: int, code: int, message: str,
                                                  preexec: Callable[[], None] | None) -> None:
    model = resnet_onnx(tmp_path / "rn.onnx")
    out = tmp_path / "out" / "rn8.onnx"
    result, _ = signal_mid_work(
        # entropy calibration over 512 feeds: seconds of work even on a fast, quiet machine (minmax over 256 feeds
        # finished in about 1 s, before the signal arrived)
        [*ACCELSERVE, "optimize", str(model), "--recipe", "simplify,int8", "--random-calib", "--calib-count", "512",
         "--method", "entropy", "--no-evaluate", "-o", str(out)], tmp, "accelserve-optimize-*", signum, tmp, preexec)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp.glob("accelserve-*"))  # the work dir is gone
    assert not any(out.parent.iterdir())  # no output, no staging file


def test_evaluate_stops_its_memory_probe_and_removes_its_temp_dir(tmp_path: Path, tmp: Path) -> None:
    model = resnet_onnx(tmp_path / "rn.onnx")
    result, children = signal_mid_work(
        [*ACCELSERVE, "evaluate", str(model), str(model), "--random-data", "--count", "2", "--no-speed",
         "--json", str(tmp_path / "e.json")], tmp, "accelserve-mem-*", signal.SIGTERM, tmp, need_child=True)
    assert result.returncode == 143, result.stderr
    assert "terminated (SIGTERM): stopped and cleaned up" in result.stderr and "Traceback" not in result.stderr
    assert children and not any(pid_alive(c) for c in children)  # the probe process was stopped
    assert not list(tmp.glob("accelserve-*")) and not (tmp_path / "e.json").exists()


def test_repo_add_stops_mid_copy_and_leaves_the_repository_as_it_was(tmp_path: Path, tmp: Path) -> None:
    small = ob.save(ob.identity(("batch", 4)), tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    subprocess.run([*ACCELSERVE, "repo", "add", str(small), "--repo", str(repo), "--name", "m"], check=True,
                   capture_output=True, timeout=120)
    big = ob.save(ob.with_weights(12_000_000), tmp_path / "big" / "big.onnx", external_data=True)

    def tree() -> list[str]:  # everything but TMPDIR (where libraries may leave files of their own)
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if tmp not in (p, *p.parents))

    before = tree()
    result, _ = signal_mid_work([*ACCELSERVE, "repo", "add", str(big), "--repo", str(repo), "--name", "big"],
                                tmp_path, ".repo.accelserve-staging-*", signal.SIGTERM, tmp, settle_s=0)  # mid-copy
    assert result.returncode == 143, result.stdout + result.stderr
    assert "terminated (SIGTERM): stopped and cleaned up" in result.stderr
    assert tree() == before  # no staging directory, the repository unchanged
