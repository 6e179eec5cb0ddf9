"""accelserve's ONNX Runtime stand-in: a Triton python-backend model that runs an ONNX file with ONNX Runtime.

``accelserve serve`` places this file (as a link) in the version directories of a shadow repository for models
whose native ``onnxruntime`` backend is not available locally (see ``accelserve/triton/shadow.py``). It runs
inside Triton's Python-backend stub, so it imports only numpy, onnxruntime and, inside functions,
``triton_python_backend_utils`` (which exists only there); the batching helpers are plain functions that the unit
tests import directly.

Batching is Triton's own: the dynamic batcher hands ``execute`` several requests at once; they are concatenated
along the batch dimension, run in ONE ONNX Runtime call, and the outputs are split back per request. Models with
``max_batch_size: 0`` have no batch dimension, so their requests run one by one.

Model-config parameters read here:

* ``accelserve_onnx_file``: the ONNX file in the version directory (set by the shadow; default ``model.onnx``);
* ``intra_op_thread_count`` / ``inter_op_thread_count``: ONNX Runtime thread counts, under the same names the
  native ONNX Runtime backend uses. The default intra-op count is ``cpu_count // instances`` (at least 1), so
  several instances do not oversubscribe the CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ONNX_FILE_PARAMETER = "accelserve_onnx_file"
INTRA_OP_PARAMETER = "intra_op_thread_count"
INTER_OP_PARAMETER = "inter_op_thread_count"
DEFAULT_ONNX_FILENAME = "model.onnx"

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


# ---------------------------------------------------------------------------------------------------------------
# Plain helpers (no Triton, no ONNX Runtime): unit-tested directly


def config_parameter(model_config: dict[str, Any], key: str) -> str | None:
    """A ``parameters`` entry of a model config as Triton passes it to python models (JSON, snake_case)."""
    value = (model_config.get("parameters") or {}).get(key)
    if isinstance(value, dict):
        value = value.get("string_value")
    return str(value) if value not in (None, "") else None


def instance_count(model_config: dict[str, Any]) -> int:
    """Instances of the model on this server (sum over instance groups; a group without count has one)."""
    total = 0
    for group in model_config.get("instance_group") or []:
        count = int(group.get("count") or 1)
        total += count * max(len(group.get("gpus") or []), 1)
    return max(total, 1)


def intra_op_threads(model_config: dict[str, Any], cpu_count: int | None = None) -> int:
    """ONNX Runtime intra-op threads per instance: the config's ``intra_op_thread_count`` when set (0 means ONNX
    Runtime's own default), else ``cpu_count // instances``, at least 1."""
    explicit = config_parameter(model_config, INTRA_OP_PARAMETER)
    if explicit is not None:
        value = int(explicit)
        if value < 0:
            raise ValueError(f"parameter {INTRA_OP_PARAMETER} must be >= 0, got {value}")
        return value
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cpus // instance_count(model_config))


def compatible_groups(feeds: Sequence[Feeds]) -> list[list[int]]:
    """Indices of requests that can be concatenated (same input names, dtypes and non-batch dims), in order.

    Triton's dynamic batcher only batches requests with equal shapes unless ragged batching is allowed, so this
    is normally a single group; it keeps the stand-in correct either way.
    """
    groups: dict[tuple, list[int]] = {}
    for i, feed in enumerate(feeds):
        key = tuple(sorted((name, arr.dtype.str, arr.shape[1:]) for name, arr in feed.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def concat_requests(feeds: Sequence[Feeds]) -> tuple[Feeds, list[int]]:
    """Concatenate the inputs of several requests along dim 0; return the batch and each request's batch size."""
    if not feeds:
        raise ValueError("no requests to concatenate")
    names = list(feeds[0])
    for feed in feeds:
        for arr in feed.values():
            if arr.ndim == 0:
                raise ValueError("an input has no batch dimension (a 0-d tensor) in a model with max_batch_size > 0")
    sizes = [int(next(iter(feed.values())).shape[0]) if feed else 0 for feed in feeds]
    for feed, size in zip(feeds, sizes, strict=True):
        bad = [n for n, a in feed.items() if a.shape[0] != size]
        if bad:
            raise ValueError(f"inputs of one request disagree on the batch size: {', '.join(bad)}")
    if len(feeds) == 1:
        return dict(feeds[0]), sizes
    return {name: np.concatenate([feed[name] for feed in feeds], axis=0) for name in names}, sizes


def split_outputs(outputs: Feeds, sizes: Sequence[int]) -> list[Feeds]:
    """Split batched outputs back into one dict per request (the inverse of :func:`concat_requests`)."""
    total = sum(sizes)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ValueError(
                f"output {name} has shape {list(arr.shape)}; its first dim should be the batch size {total}. "
                "A model with max_batch_size > 0 must keep the batch dimension first in every output"
            )
    bounds = np.cumsum([0, *sizes])
    return [{name: arr[bounds[i]:bounds[i + 1]] for name, arr in outputs.items()} for i in range(len(sizes))]


def run_requests(run: RunFn, feeds: Sequence[Feeds], batching: bool) -> list[Feeds | Exception]:
    """Run every request's feeds: with ``batching`` one ``run`` call per group of compatible requests, else one
    call per request. A failure becomes that request's (or that group's) result instead of failing the rest."""
    results: list[Feeds | Exception] = [ValueError("not run")] * len(feeds)
    if not batching:
        for i, feed in enumerate(feeds):
            try:
                results[i] = run(feed)
            except Exception as exc:  # noqa: BLE001 - reported to the client as this request's error
                results[i] = exc
        return results
    for group in compatible_groups(feeds):
        try:
            batch, sizes = concat_requests([feeds[i] for i in group])
            for i, out in zip(group, split_outputs(run(batch), sizes), strict=True):
                results[i] = out
        except Exception as exc:  # noqa: BLE001 - every request of the group gets the error
            for i in group:
                results[i] = exc
    return results


def onnx_model_path(model_config: dict[str, Any], model_repository: str, version: str) -> str:
    """The ONNX file to run, with links resolved so ONNX Runtime finds external data beside the original file."""
    filename = config_parameter(model_config, ONNX_FILE_PARAMETER) or DEFAULT_ONNX_FILENAME
    path = os.path.realpath(os.path.join(model_repository, str(version), filename))
    if os.path.isdir(path):  # the ONNX backend also accepts a directory holding model.onnx
        path = os.path.join(path, DEFAULT_ONNX_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"ONNX model file {os.path.join(model_repository, str(version), filename)} does not exist "
            f"(set default_model_filename in config.pbtxt if the model file has another name)"
        )
    return path


# ---------------------------------------------------------------------------------------------------------------
# The Triton python model


class TritonPythonModel:
    """Runs the version directory's ONNX file with ONNX Runtime (CPU)."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self.config = json.loads(args["model_config"])
        self.name = args.get("model_name", self.config.get("name", "?"))
        self.batching = int(self.config.get("max_batch_size") or 0) > 0
        path = onnx_model_path(self.config, args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads(self.config)
        opts.inter_op_num_threads = int(config_parameter(self.config, INTER_OP_PARAMETER) or 1)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

        self.input_names = [i["name"] for i in self.config.get("input") or []]
        self.outputs = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config.get("output") or []
        }
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        unknown_in = [n for n in self.input_names if n not in onnx_inputs]
        missing_in = sorted(onnx_inputs - set(self.input_names))
        unknown_out = [n for n in self.outputs if n not in onnx_outputs]
        if unknown_in or missing_in or unknown_out:
            raise ValueError(
                f"config.pbtxt of {self.name} does not match {path}: "
                + "; ".join(
                    part for part in (
                        f"config inputs not in the ONNX model: {unknown_in}" if unknown_in else "",
                        f"ONNX inputs missing from the config: {missing_in}" if missing_in else "",
                        f"config outputs not in the ONNX model: {unknown_out}" if unknown_out else "",
                    ) if part
                )
                + f" (the ONNX model has inputs {sorted(onnx_inputs)}, outputs {sorted(onnx_outputs)})"
            )
        pb_utils.Logger.log_info(
            f"accelserve stand-in: {self.name} runs {path} with ONNX Runtime {ort.__version__} on CPU "
            f"(intra_op_threads={opts.intra_op_num_threads}, batching={'on' if self.batching else 'off'})"
        )

    def _run(self, feeds: Feeds) -> Feeds:
        names = list(self.outputs)
        values = self.session.run(names, feeds)
        return {name: np.asarray(v, dtype=self.outputs[name]) for name, v in zip(names, values, strict=True)}

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        feeds = []
        for request in requests:
            feed = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # optional inputs may be absent
                    feed[name] = tensor.as_numpy()
            feeds.append(feed)
        responses = []
        for result in run_requests(self._run, feeds, self.batching):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"ONNX Runtime failed: {result}")
                ))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, arr) for name, arr in result.items()]
                ))
        return responses

    def finalize(self) -> None:
        self.session = None
