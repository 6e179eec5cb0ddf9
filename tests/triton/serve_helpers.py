"""Repositories for the serving tests: tiny ONNX models added with accelserve's own repository writer."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
from accelserve.triton.config import TritonModelOptions
from accelserve.triton.repository import add_model
from tests.graphs import make_linear_model

#: dynamic-batcher queue delay of the batching model: long enough that concurrent requests meet in one batch
QUEUE_DELAY_US = 100_000


def make_serving_repository(root: Path, *, batching: bool = True, fixed: bool = True) -> tuple[Path, Path]:
    """A repository with ``lin`` (dynamic batch dim, dynamic batching) and ``fixed`` (max_batch_size 0), both
    ONNX Runtime models of the same linear graph; returns (repository, the ONNX file)."""
    onnx_path = make_linear_model(root / "linear.onnx")
    repo = root / "repo"
    if batching:
        add_model(onnx_path, repo, "lin", TritonModelOptions(max_queue_delay_us=QUEUE_DELAY_US))
    if fixed:
        add_model(onnx_path, repo, "fixed", TritonModelOptions(max_batch_size=0))
    return repo, onnx_path


def reference(onnx_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return OnnxRuntimeSession(onnx_path, threads=1).run(feeds)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port`` and a server could bind it (SO_REUSEADDR, as servers do: connections the
    stopped server closed may linger in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        if probe.connect_ex((host, port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
