"""`accelserve serve` stops within 5 s of SIGINT or SIGTERM and leaves no tritonserver, no python-backend stub and
no shared-memory segment behind, with stand-in models (two instances, a sequence left open) loaded."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from accelserve.triton.client import TritonClient
from tests.cli.test_serve_infer_cli import READY_TIMEOUT_S, _start_serve, _url
from tests.triton.sequence_helpers import add_accumulator, add_string_models
from tests.triton.serve_helpers import pid_alive

#: the promise: gone within this many seconds of the signal
STOP_WITHIN_S = 5.0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return out
    for child in map(int, children):
        out += [child, *_descendants(child)]
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_within_5s_leaving_no_process_or_shared_memory(tmp_path: Path, signum: int) -> None:
    repo = tmp_path / "repo"
    add_string_models(repo)
    add_accumulator(repo, "acc", instances=2)
    proc, lines, ready = _start_serve(repo)
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        with TritonClient(_url(lines, "HTTP")) as client:  # a sequence left open: its state lives in a stub
            client.infer("acc", {"INPUT": np.array([[1]], dtype=np.int32)}, sequence_id=3, sequence_start=True)
        processes = _descendants(proc.pid)
        stubs = [p for p in processes if "triton_python_backend_stub" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(stubs) >= 4, processes  # strings, simple_string, 2 x acc
        segments = sorted(Path("/dev/shm").glob(f"accelserve{proc.pid}_*"))
        assert segments
        start = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"serve stopped {elapsed:.2f} s after {signal.Signals(signum).name}")
    assert code == 0, "\n".join(lines)
    assert elapsed < STOP_WITHIN_S, f"serve took {elapsed:.2f} s to stop"
    assert not [p for p in processes if pid_alive(p)]
    assert not sorted(Path("/dev/shm").glob(f"accelserve{proc.pid}_*"))
