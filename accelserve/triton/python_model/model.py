"""accelserve's ONNX Runtime stand-in: a Triton python-backend model that runs an ONNX file with ONNX Runtime.

``accelserve serve`` places this file (as a link) in the version directories of a shadow repository for models
whose native ``onnxruntime`` backend is not available locally (see ``accelserve/triton/shadow.py``). It runs
inside Triton's Python-backend stub, so it imports only numpy, onnxruntime and, inside functions,
``triton_python_backend_utils`` (which exists only there); the batching helpers are plain functions that the unit
tests import directly.

Batching is Triton's own: the dynamic batcher hands ``execute`` several requests at once; they are concatenated
along the batch dimension, run in ONE ONNX Runtime call, and the outputs are split back per request. Models with
``max_batch_size: 0`` have no batch dimension, so their requests run one by one.

BYTES (``TYPE_STRING``) tensors arrive from Triton as numpy object arrays of ``bytes``; ONNX Runtime's Python API
takes ``str`` for ONNX string tensors, so elements are decoded as UTF-8 on the way in (an element that is not UTF-8
is a clear error) and string outputs are encoded back to UTF-8 bytes. Sequence models (``sequence_batching``:
control tensors, implicit state) are handled as Triton's onnxruntime backend does; see ``sequences.py``.

Model-config parameters read here:

* ``accelserve_onnx_file``: the ONNX file in the version directory (set by the shadow; default ``model.onnx``);
* ``accelserve_max_shape``: upper bounds of input dims (see :data:`MAX_SHAPE_PARAMETER`); a request over a bound
  gets a clear error instead of whatever ONNX Runtime makes of it;
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
#: model-config parameter with known upper bounds of input dims: JSON ``{"input": [max per dim, -1 = unbounded]}``,
#: dims as in the config (without the batch dim); written by ``repo add`` from bounds the exporter found
MAX_SHAPE_PARAMETER = "accelserve_max_shape"

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]


class RequestError(ValueError):
    """A request the stand-in refuses because of its inputs (sent to the client as INVALID_ARG, HTTP 400)."""


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


def compatible_groups(feeds: Sequence[Feeds], ragged: frozenset[str] = frozenset()) -> list[list[int]]:
    """Indices of requests that can be concatenated (same input names, dtypes and non-batch dims, except the
    ``ragged`` inputs' dims), in order.

    Triton's dynamic batcher only batches requests with equal shapes unless ragged batching is allowed, so this
    is normally a single group; it keeps the stand-in correct either way.
    """
    groups: dict[tuple, list[int]] = {}
    for i, feed in enumerate(feeds):
        key = tuple(sorted((name, arr.dtype.str, None if name in ragged else arr.shape[1:])
                           for name, arr in feed.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def concat_requests(feeds: Sequence[Feeds], ragged: frozenset[str] = frozenset()) -> tuple[Feeds, list[int]]:
    """Concatenate the inputs of several requests along dim 0; return the batch and each request's batch size.
    ``ragged`` inputs (``allow_ragged_batch``) become one 1-D tensor of all their elements, as Triton's
    onnxruntime backend gives them to the model."""
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
    if len(feeds) == 1 and not ragged:
        return dict(feeds[0]), sizes
    return {
        name: np.concatenate([feed[name].reshape(-1) if name in ragged else feed[name] for feed in feeds], axis=0)
        for name in names
    }, sizes


#: batch_input kinds the stand-in computes, as Triton's backends do (BackendInputCollector::BatchInputShape)
BATCH_INPUT_KINDS = (
    "BATCH_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", "BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN",
)


def batch_input_tensors(feeds: Sequence[Feeds], batch_inputs: Sequence[dict[str, Any]]) -> Feeds:
    """The ``batch_input`` tensors of a batch of requests: element counts of the source input per request
    ([requests]; accumulated; accumulated with a leading 0: [requests + 1]), a tensor shaped [max element count]
    (zeros here; its content is unspecified), or the shape of every batch item without the batch dim
    ([batch, rank - 1], or flattened)."""
    out: Feeds = {}
    for spec in batch_inputs:
        kind = str(spec.get("kind") or "BATCH_ELEMENT_COUNT")  # protobuf JSON omits the enum's 0
        source = (spec.get("source_input") or [""])[0]
        dtype = _CONFIG_NUMPY.get(str(spec.get("data_type")), np.float32)
        missing = [i for i, feed in enumerate(feeds) if source not in feed]
        if missing:
            raise ValueError(f"batch_input {kind} needs input {source}, which request(s) {missing} left out")
        counts = [int(feed[source].size) for feed in feeds]
        if kind == "BATCH_ELEMENT_COUNT":
            value = np.array(counts)
        elif kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
            value = np.cumsum(counts)
        elif kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
            value = np.concatenate([[0], np.cumsum(counts)])
        elif kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":
            value = np.zeros(max(counts))
        elif kind in ("BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN"):
            rows = [list(feed[source].shape[1:]) for feed in feeds for _ in range(feed[source].shape[0])]
            value = np.array(rows).reshape(len(rows), -1)
            if kind == "BATCH_ITEM_SHAPE_FLATTEN":
                value = value.reshape(-1)
        else:
            raise ValueError(f"batch_input kind {kind} is not one the stand-in knows ({', '.join(BATCH_INPUT_KINDS)})")
        for target in spec.get("target_name") or []:
            out[str(target)] = np.asarray(value).astype(dtype)
    return out


_CONFIG_NUMPY = {
    "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64, "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64, "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_UINT8": np.uint8, "TYPE_INT16": np.int16, "TYPE_UINT16": np.uint16,
}


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


def run_requests(run: RunFn, feeds: Sequence[Feeds], batching: bool, ragged: frozenset[str] = frozenset(),
                 batch_inputs: Sequence[dict[str, Any]] = ()) -> list[Feeds | Exception]:
    """Run every request's feeds: with ``batching`` one ``run`` call per group of compatible requests (ragged
    inputs flattened, ``batch_inputs`` added), else one call per request. A failure becomes that request's (or
    that group's) result instead of failing the rest."""
    results: list[Feeds | Exception] = [ValueError("not run")] * len(feeds)
    if not batching:
        for i, feed in enumerate(feeds):
            try:
                results[i] = run(feed)
            except Exception as exc:  # noqa: BLE001 - reported to the client as this request's error
                results[i] = exc
        return results
    for group in compatible_groups(feeds, ragged):
        try:
            batch, sizes = concat_requests([feeds[i] for i in group], ragged)
            batch.update(batch_input_tensors([feeds[i] for i in group], batch_inputs))
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


def _load_sequences() -> Any:
    """``sequences.py`` beside this file (the stub loads this file by path, outside any package)."""
    if __package__:
        from accelserve.triton.python_model import sequences

        return sequences
    import importlib.util
    import sys

    name = "accelserve_standin_sequences"
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "sequences.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def to_onnx_strings(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES tensor (object array of bytes, as Triton hands it over) as ONNX Runtime takes a string tensor: an
    object array of str. Elements that are not UTF-8 cannot be passed through ONNX Runtime's Python API."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        if isinstance(item, (bytes, bytearray, np.bytes_)):
            try:
                flat_out[i] = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RequestError(
                    f"input {name}: element {i} is not UTF-8 text ({bytes(item)[:20]!r}...); the ONNX Runtime "
                    "stand-in passes strings through ONNX Runtime's Python API, which takes only UTF-8. Triton's "
                    "native onnxruntime backend passes raw bytes: serve with a full Triton install for binary strings"
                ) from exc
        else:
            flat_out[i] = str(item)
    return out


def from_onnx_strings(array: np.ndarray) -> np.ndarray:
    """An ONNX Runtime string output (object array of str) as a Triton BYTES tensor (object array of UTF-8 bytes)."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = np.asarray(array, dtype=object).reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item if isinstance(item, bytes) else str(item).encode("utf-8")
    return out


def max_shapes(model_config: dict[str, Any]) -> dict[str, list[int]]:
    """The ``accelserve_max_shape`` parameter: input -> upper bound per dim (config dims; -1 = none)."""
    text = config_parameter(model_config, MAX_SHAPE_PARAMETER)
    if text is None:
        return {}
    try:
        data = json.loads(text)
        bounds = {str(k): [int(d) for d in v] for k, v in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"parameter {MAX_SHAPE_PARAMETER} is not JSON {{input: [max dims]}}: {text!r}") from exc
    return bounds


def check_max_shape(feed: Feeds, bounds: dict[str, list[int]], batching: bool) -> None:
    """A clear error when a request exceeds a known bound of its inputs (instead of ONNX Runtime's own error)."""
    for name, limits in bounds.items():
        if name not in feed:
            continue
        dims = feed[name].shape[1:] if batching else feed[name].shape
        for axis, (size, limit) in enumerate(zip(dims, limits, strict=False)):
            if limit >= 0 and size > limit:
                raise RequestError(
                    f"input {name} has {size} along dim {axis + (1 if batching else 0)} "
                    f"(shape {list(feed[name].shape)}), "
                    f"but the model supports at most {limit} there (config parameter {MAX_SHAPE_PARAMETER}, the bound "
                    "found when the model was exported)"
                )


# ---------------------------------------------------------------------------------------------------------------
# The Triton python model


class TritonPythonModel:
    """Runs the version directory's ONNX file with ONNX Runtime (CPU)."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        seqs = _load_sequences()
        self.config = json.loads(args["model_config"])
        self.name = args.get("model_name", self.config.get("name", "?"))
        self.batching = int(self.config.get("max_batch_size") or 0) > 0
        path = onnx_model_path(self.config, args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads(self.config)
        opts.inter_op_num_threads = int(config_parameter(self.config, INTER_OP_PARAMETER) or 1)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.bounds = max_shapes(self.config)

        onnx_inputs = {i.name: i for i in self.session.get_inputs()}
        defaults = {i.name for i in self.session.get_overridable_initializers()}  # inputs with a default value
        onnx_outputs = {o.name for o in self.session.get_outputs()}
        self.onnx_input_names = [*onnx_inputs, *defaults]
        self.string_inputs = {n for n, i in onnx_inputs.items() if i.type == "tensor(string)"}
        self.sequence = seqs.sequence_spec(self.config)
        self.states = seqs.SequenceStates(self.sequence) if self.sequence else None
        extra = set(self.sequence.control_names) | {s.input_name for s in self.sequence.states} \
            if self.sequence else set()
        if self.sequence:
            seqs.check_against_model(
                self.sequence,
                {n: (np.dtype(_ORT_NUMPY.get(i.type, object)), list(i.shape)) for n, i in onnx_inputs.items()},
                onnx_outputs, self.batching,
            )
        self.ragged = frozenset(i["name"] for i in self.config.get("input") or [] if i.get("allow_ragged_batch"))
        self.batch_inputs = list(self.config.get("batch_input") or [])
        if (self.ragged or self.batch_inputs) and not self.batching:
            raise ValueError(
                f"{self.name}: the ONNX Runtime stand-in runs ragged inputs and batch_input only on batching models "
                "(max_batch_size > 0); serve this model with a full Triton install"
            )
        for spec in self.batch_inputs:
            extra |= {str(t) for t in spec.get("target_name") or []}
        self.input_names = [i["name"] for i in self.config.get("input") or []]
        self.outputs = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config.get("output") or []
        }
        known = set(self.onnx_input_names)
        unknown_in = [n for n in self.input_names if n not in known]
        missing_in = sorted(set(onnx_inputs) - set(self.input_names) - extra)
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
        self.run_outputs = list(self.outputs) + [
            s.output_name for s in (self.sequence.states if self.sequence else ()) if s.output_name not in self.outputs
        ]
        pb_utils.Logger.log_info(
            f"accelserve stand-in: {self.name} runs {path} with ONNX Runtime {ort.__version__} on CPU "
            f"(intra_op_threads={opts.intra_op_num_threads}, batching={'on' if self.batching else 'off'}"
            + (f", sequence batching {self.sequence.strategy} with {len(self.sequence.states)} state(s)"
               if self.sequence else "") + ")"
        )

    def _run(self, feeds: Feeds) -> Feeds:
        missing = [n for n in self.session.get_inputs() if n.name not in feeds]
        if missing:
            raise RequestError(
                f"input(s) {[n.name for n in missing]} left out of the request, but the ONNX model needs them (an "
                "optional config input must have a default in the ONNX model: an initializer of the same name)"
            )
        values = self.session.run(self.run_outputs, feeds)
        out = {}
        for name, value in zip(self.run_outputs, values, strict=True):
            dtype = self.outputs.get(name)
            if dtype is None:  # a state output: kept as ONNX Runtime gives it
                out[name] = np.asarray(value)
            elif dtype == np.object_:
                out[name] = from_onnx_strings(np.asarray(value))
            else:
                out[name] = np.asarray(value, dtype=dtype)
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        seqs = _load_sequences()
        wanted = [*self.input_names, *(self.sequence.control_names if self.sequence else ()),
                  *(s.input_name for s in (self.sequence.states if self.sequence else ()))]
        feeds: list[Feeds] = []
        infos: list[Any] = []
        early: dict[int, Exception] = {}
        if self.states is not None:
            self.states.expire()
        for index, request in enumerate(requests):
            feed = {}
            for name in wanted:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # optional inputs may be absent
                    feed[name] = tensor.as_numpy()
            info = None
            try:
                check_max_shape(feed, self.bounds, self.batching)
                feed = {k: (to_onnx_strings(k, v) if k in self.string_inputs else v) for k, v in feed.items()}
                if self.sequence is not None:
                    cid = request.correlation_id()
                    info = seqs.RequestInfo(cid, int(request.flags()), seqs.request_ready(feed, self.sequence, cid))
                    feed = self.states.apply(feed, info)
            except ValueError as exc:  # the request's own inputs or sequence
                early[index] = exc if isinstance(exc, RequestError) else RequestError(str(exc))
            feeds.append(seqs.model_feed(feed, self.onnx_input_names))
            infos.append(info)
        runnable = [i for i in range(len(requests)) if i not in early]
        results: list[Feeds | Exception] = [early.get(i, ValueError("not run")) for i in range(len(requests))]
        ran = run_requests(self._run, [feeds[i] for i in runnable], self.batching, self.ragged, self.batch_inputs)
        for i, result in zip(runnable, ran, strict=True):
            results[i] = result
            if self.states is not None and not isinstance(result, Exception):
                self.states.update(result, infos[i])
        responses = []
        for result in results:
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_triton_error(pb_utils, result)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, arr) for name, arr in result.items() if name in self.outputs]
                ))
        return responses

    def finalize(self) -> None:
        self.session = None
        self.states = None


def _triton_error(pb_utils: Any, exc: Exception) -> Any:
    """The response error: INVALID_ARG for a request's own fault, INTERNAL for ONNX Runtime's failures."""
    message = f"ONNX Runtime stand-in: {exc}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if isinstance(exc, RequestError) else "INTERNAL", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


#: ONNX Runtime input type -> numpy dtype (for checking sequence controls)
_ORT_NUMPY = {
    "tensor(bool)": np.bool_, "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(float)": np.float32, "tensor(string)": np.object_,
    "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
}
