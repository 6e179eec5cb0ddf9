"""Requests to sequence models (``sequence_batching``): a sequence of requests under one correlation ID with the
START flag on the first and END on the last, as perf_analyzer sends them, and the same sequence run locally in
ONNX Runtime the way Triton's onnxruntime backend runs it (control tensors and implicit state supplied by the
server), so ``infer --compare`` can check a stateful model step by step.

Strings: BYTES inputs go to local ONNX Runtime as str and string outputs come back as UTF-8 bytes, by the same
functions the stand-in uses (``python_model/model.py``).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from accelserve.errors import InvalidInputError
from accelserve.triton.client import ModelInfo, TritonClient

#: correlation IDs of one process: a random 40-bit base, then counting (IDs must be nonzero; perf_analyzer counts
#: from a start ID)
_ids = itertools.count(int.from_bytes(os.urandom(5), "little") << 8 | 1)


def new_sequence_id() -> int:
    return next(_ids)


def split_steps(feeds: dict[str, np.ndarray], info: ModelInfo, length: int) -> list[dict[str, np.ndarray]]:
    """``length`` requests of batch size 1 from arrays whose first dim holds at least ``length`` samples
    (Triton's sequence batcher takes only batch-1 requests)."""
    if info.max_batch_size == 0:
        if length != 1:
            raise InvalidInputError(f"model {info.name} does not batch: --data gives one request, not {length}")
        return [feeds]
    sizes = {name: int(a.shape[0]) for name, a in feeds.items()}
    short = {n: s for n, s in sizes.items() if s < length}
    if short:
        raise InvalidInputError(f"--sequence-length {length} needs {length} samples along the batch dim; "
                                f"the arrays hold {short}")
    return [{name: a[i:i + 1] for name, a in feeds.items()} for i in range(length)]


def send_sequence(client: TritonClient, model: str, steps: list[dict[str, np.ndarray]], sequence_id: int,
                  *, version: str = "") -> list[dict[str, np.ndarray]]:
    """Send ``steps`` as one sequence (START on the first, END on the last); the outputs of each step."""
    if sequence_id == 0:
        raise InvalidInputError("--sequence-id must be nonzero (Triton refuses correlation ID 0)")
    last = len(steps) - 1
    return [
        client.infer(model, feed, version=version, sequence_id=sequence_id, sequence_start=i == 0,
                     sequence_end=i == last)
        for i, feed in enumerate(steps)
    ]


def run_sequence_locally(onnx_path: str | Path, info: ModelInfo, steps: list[dict[str, np.ndarray]],
                         sequence_id: int, output_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Run ``steps`` in local ONNX Runtime as Triton runs one sequence on its onnxruntime backend: each step gets
    the control tensors the config names (START/END/READY/CORRID) and the implicit state (the initial state on
    the first step, then the previous step's output state)."""
    import onnxruntime as ort

    from accelserve.triton.python_model.model import from_onnx_strings, to_onnx_strings

    spec = info.sequence
    batching = info.max_batch_size > 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    takes = {i.name: i.type for i in session.get_inputs()}
    states = spec.states if spec is not None else ()
    state_outputs = [s.output_name for s in states if s.output_name not in output_names]
    try:
        state = {s.input_name: s.initial(batching) for s in states}
    except ValueError as exc:
        raise InvalidInputError(f"--compare cannot run model {info.name} locally: {exc}") from exc
    flags = {"CONTROL_SEQUENCE_READY": lambda i: True, "CONTROL_SEQUENCE_CORRID": lambda i: sequence_id,
             "CONTROL_SEQUENCE_START": lambda i: i == 0, "CONTROL_SEQUENCE_END": lambda i: i == len(steps) - 1}
    results = []
    for i, step in enumerate(steps):
        feed = dict(step)
        for control in spec.controls if spec is not None else ():
            if control.name in takes:
                feed[control.name] = control.value(flags[control.kind](i), batching)
        feed.update({k: v for k, v in state.items() if k in takes})
        feed = {k: (to_onnx_strings(k, v) if takes.get(k) == "tensor(string)" else v) for k, v in feed.items()}
        names = [*output_names, *state_outputs]
        try:
            values = dict(zip(names, session.run(names, feed), strict=True))
        except Exception as exc:  # ONNX Runtime's own errors (shapes, types)
            raise InvalidInputError(f"local ONNX Runtime rejected step {i + 1} of the sequence: {exc}") from exc
        state = {s.input_name: np.asarray(values[s.output_name]) for s in states}
        results.append({
            n: (from_onnx_strings(np.asarray(values[n])) if np.asarray(values[n]).dtype == object else values[n])
            for n in output_names
        })
    return results


def describe(info: ModelInfo) -> str:
    spec = info.sequence
    if spec is None:
        return ""
    controls = ", ".join(f"{c.name} ({c.kind.removeprefix('CONTROL_SEQUENCE_')})" for c in spec.controls) or "none"
    states = ", ".join(f"{s.input_name} -> {s.output_name}" for s in spec.states) or "none"
    return f"sequence batching ({spec.strategy}): controls {controls}; implicit state {states}"

