"""ONNX Runtime sessions for measurement: fixed thread count, full graph optimization, sequential execution."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError, InvalidModelError


def default_threads() -> int:
    """CPU cores this process may use (the thread count recorded with every timing)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


DEFAULT_RUNTIME = "onnxruntime"


class RuntimeSession:
    """A session of another ``accelserve.runtimes`` plugin (GPU runtimes), seen through the few ONNX Runtime
    session methods the measurements use (``get_inputs``, ``get_outputs``, ``run``). Its ``run`` returns host
    arrays only after the device finished, so wall-clock timing around it is synchronised."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=i.name, shape=list(i.shape)) for i in self._session.inputs]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=o.name) for o in self._session.outputs]

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self._session.run(feed, names)
        return [out[n] for n in names]


def make_session(model_path: str | Path, threads: int | None = None, runtime: str | None = None) -> Any:
    """An ONNX Runtime CPU session (the default), or a session of the ``runtime`` plugin."""
    if runtime not in (None, DEFAULT_RUNTIME):
        from accelserve import plugins

        runtime_cls = plugins.load("runtimes", runtime)
        loader = runtime_cls() if isinstance(runtime_cls, type) else runtime_cls
        return RuntimeSession(loader.load(model_path, threads=threads))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModelError(f"ONNX Runtime cannot load {model_path}: {str(exc).strip()}") from exc


def run_session(session: Any, feed: dict[str, np.ndarray], model_path: str | Path) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feed)))
    except Exception as exc:
        raise InvalidInputError(f"ONNX Runtime failed to run {model_path}: {str(exc).strip()}") from exc


def run_model(model_path: str | Path, feeds: list[dict[str, np.ndarray]], threads: int | None = None,
              runtime: str | None = None) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model_path`` for each feed."""
    session = make_session(model_path, threads, runtime)
    return [run_session(session, feed, model_path) for feed in feeds]
