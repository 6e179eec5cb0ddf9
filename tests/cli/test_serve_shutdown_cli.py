"""`accelserve serve` stops within 5 s of SIGINT or SIGTERM and leaves no tritonserver, no python-backend stub and
no shared-memory segment behind, with stand-in models (two instances, a sequence left open) loaded.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from accelserve.triton.client import TritonClient
from tests.cli.test_serve_infer_cli import READY_TIMEOUT_S, _start_serve, _url
from tests.triton import onnx_builders as ob
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
@pytest.mark.parametrize("signum", [signal.SIGINT])  # SIGTERM: the test below (and test_serve_infer_cli)
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


@pytest.mark.e2e
def test_serve_stops_within_5s_with_a_request_still_running(tmp_path: Path) -> None:
    """Triton waits for in-flight requests up to its exit timeout; a request that runs for seconds must not hold
    `serve` past the promise."""
    repo = tmp_path / "repo"
    ob.save(ob.slow(), repo / "slow" / "1" / "model.onnx")
    (repo / "slow" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1, 1 ] } ]\n'
    )
    proc, lines, ready = _start_serve(repo)
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        url = _url(lines, "HTTP")

        def send() -> None:
            try:
                with TritonClient(url, infer_timeout=60) as client:
                    client.infer("slow", {"x": np.ones((1, 1), dtype=np.float32)})
            except Exception:  # noqa: BLE001 - the server goes away under it: expected
                pass

        threading.Thread(target=send, daemon=True).start()
        time.sleep(1.5)  # the request is running (it needs several seconds of CPU)
        processes = _descendants(proc.pid)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"serve stopped {elapsed:.2f} s after SIGTERM with a request running")
    assert code == 0, "\n".join(lines)
    assert elapsed < STOP_WITHIN_S, f"serve took {elapsed:.2f} s to stop"
    assert not [p for p in processes if pid_alive(p)]
    assert not sorted(Path("/dev/shm").glob(f"accelserve{proc.pid}_*"))
