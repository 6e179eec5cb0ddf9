"""Triton model configuration (``config.pbtxt``) for an ONNX model.

Everything here is a pure function from an ``onnx.ModelProto`` and :class:`TritonModelOptions` to Triton's own
``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``), plus reading and writing the text format with
``google.protobuf.text_format``. Writing files into a repository lives in :mod:`accelserve.triton.repository`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidInputError, InvalidModelError, RepositoryError
from accelserve.triton.dtypes import onnx_to_triton, triton_type_name

ModelConfig = mc.ModelConfig

CONFIG_FILENAME = "config.pbtxt"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
DEFAULT_MAX_BATCH_SIZE = 32

INSTANCE_KINDS = {
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
}
WARMUP_KINDS = ("random", "zero")
ACCELERATORS = ("tensorrt",)
TRT_PRECISIONS = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


# --------------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class TritonModelOptions:
    """How the model is served. ``None`` means "derive it from the model" (see :func:`build_config`)."""

    #: None: DEFAULT_MAX_BATCH_SIZE when every input and output has a dynamic first dim, else 0
    max_batch_size: int | None = None
    instances: int = 1
    #: "cpu" | "gpu" | "auto"; None: "gpu" with --accelerator tensorrt, else "cpu"
    instance_kind: str | None = None
    #: None: on when max_batch_size > 0
    dynamic_batching: bool | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    #: None, "random" or "zero": a ModelWarmup request at batch 1 (string inputs always get zero data)
    warmup: str | None = None
    #: None or "tensorrt" (ONNX Runtime's TensorRT execution provider inside Triton's onnxruntime backend)
    accelerator: str | None = None
    #: TensorRT precision_mode: "fp32" (the backend's default when None), "fp16" or "int8"
    precision: str | None = None
    workspace_bytes: int | None = None
    #: absolute directory, as seen by the tritonserver process, for TensorRT's engine cache
    trt_engine_cache: str | None = None
    #: further documented TensorRT accelerator parameters as (key, value) pairs (accelserve.tensorrt.accelerator)
    trt_parameters: tuple[tuple[str, str], ...] = ()

    def check(self) -> None:
        """Raise InvalidInputError for options that contradict each other (independent of the model)."""
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise InvalidInputError(f"max batch size must be >= 0, got {self.max_batch_size}")
        if self.instances < 1:
            raise InvalidInputError(f"instance count must be >= 1, got {self.instances}")
        if self.instance_kind is not None and self.instance_kind not in INSTANCE_KINDS:
            raise InvalidInputError(
                f"unknown instance kind '{self.instance_kind}'", hint=f"use one of: {', '.join(INSTANCE_KINDS)}"
            )
        if self.warmup is not None and self.warmup not in WARMUP_KINDS:
            raise InvalidInputError(f"unknown warmup data '{self.warmup}'", hint="use 'random' or 'zero'")
        for size in self.preferred_batch_sizes:
            if size < 1:
                raise InvalidInputError(f"preferred batch sizes must be >= 1, got {size}")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise InvalidInputError(f"max queue delay must be >= 0 microseconds, got {self.max_queue_delay_us}")
        if self.dynamic_batching is False and (self.preferred_batch_sizes or self.max_queue_delay_us is not None):
            raise InvalidInputError(
                "preferred batch sizes and max queue delay configure dynamic batching, which is turned off",
                hint="drop --no-dynamic-batching, or drop --preferred-batch-sizes/--max-queue-delay-us",
            )
        self._check_accelerator()

    def _check_accelerator(self) -> None:
        trt_only = {
            "--precision": self.precision,
            "--workspace-bytes": self.workspace_bytes,
            "--trt-engine-cache": self.trt_engine_cache,
            "--trt-option": self.trt_parameters or None,
        }
        if self.accelerator is None:
            given = [flag for flag, value in trt_only.items() if value is not None]
            if given:
                raise InvalidInputError(
                    f"{', '.join(given)} only apply to the TensorRT accelerator", hint="add --accelerator tensorrt"
                )
            return
        if self.accelerator not in ACCELERATORS:
            raise InvalidInputError(
                f"unknown accelerator '{self.accelerator}'", hint=f"use one of: {', '.join(ACCELERATORS)}"
            )
        if self.precision is not None and self.precision not in TRT_PRECISIONS:
            raise InvalidInputError(
                f"unknown TensorRT precision '{self.precision}'", hint=f"use one of: {', '.join(TRT_PRECISIONS)}"
            )
        if self.instance_kind == "cpu":
            raise InvalidInputError(
                "the TensorRT accelerator runs on GPU instances, but the instance kind is 'cpu' "
                "(Triton would silently ignore the accelerator)",
                hint="use --instance-kind gpu (the default with --accelerator tensorrt) or auto",
            )
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise InvalidInputError(f"TensorRT workspace must be > 0 bytes, got {self.workspace_bytes}")
        if self.trt_engine_cache is not None and not os.path.isabs(self.trt_engine_cache):
            raise InvalidInputError(
                f"TensorRT engine cache directory '{self.trt_engine_cache}' is not an absolute path",
                hint="give the absolute path the tritonserver process will see, e.g. /var/cache/trt",
            )
        from accelserve.tensorrt.accelerator import trt_parameter_problems

        problems = trt_parameter_problems(dict(self.trt_parameters))
        if problems:
            raise InvalidInputError("; ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# What the ONNX graph declares


@dataclass(frozen=True)
class TensorSignature:
    """A graph input or output: name, ONNX element type, and shape (``None`` for a dynamic dim; the whole shape is
    ``None`` when even the rank is unknown)."""

    name: str
    elem_type: int
    shape: tuple[int | None, ...] | None

    @property
    def has_dynamic_first_dim(self) -> bool:
        return self.shape is not None and len(self.shape) >= 1 and self.shape[0] is None


def _tensor_signature(value: onnx.ValueInfoProto, kind: str) -> TensorSignature:
    which = value.type.WhichOneof("value")
    if which != "tensor_type":
        raise InvalidModelError(
            f"{kind} '{value.name}' is a {which or 'typeless value'}, not a tensor; Triton serves only tensors",
            hint="wrap the model so it takes and returns plain tensors",
        )
    tensor = value.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSignature(value.name, tensor.elem_type, shape)


def graph_signature(
    model: onnx.ModelProto, *, require_shapes: bool = True
) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """Inputs (initializers excluded) and outputs of the main graph, running shape inference for outputs
    without a declared shape. With ``require_shapes`` an unknown rank raises InvalidModelError."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_tensor_signature(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor_signature(v, "output") for v in model.graph.output]
    if any(sig.shape is None for sig in outputs):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            outputs = [_tensor_signature(v, "output") for v in inferred.graph.output]
        except Exception:  # best effort: an output that stays unknown is reported below
            pass
    if require_shapes:
        for kind, sig in [*(("input", s) for s in inputs), *(("output", s) for s in outputs)]:
            if sig.shape is None:
                raise InvalidModelError(
                    f"{kind} '{sig.name}' has no shape in the ONNX graph, and Triton needs its dims",
                    hint="export with static shapes or named dynamic axes, or run onnx shape inference on the model",
                )
    return inputs, outputs


def has_dynamic_batch_axis(inputs: Iterable[TensorSignature], outputs: Iterable[TensorSignature]) -> bool:
    """True when every input and output has a dynamic first dim (Triton's implicit batch dimension)."""
    tensors = [*inputs, *outputs]
    return bool(tensors) and all(t.has_dynamic_first_dim for t in tensors)


def _iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub)


def has_qdq_nodes(model: onnx.ModelProto) -> bool:
    """True when the model (subgraphs and local functions included) has QuantizeLinear/DequantizeLinear nodes."""
    if any(n.op_type in QDQ_OPS for n in _iter_nodes(model.graph)):
        return True
    return any(n.op_type in QDQ_OPS for f in model.functions for n in f.node)


# --------------------------------------------------------------------------------------------------------------
# Building the config


def _config_dims(sig: TensorSignature, batched: bool) -> tuple[list[int], list[int] | None]:
    """Config dims (and reshape shape, if one is needed) for a tensor."""
    assert sig.shape is not None, "graph_signature(require_shapes=True) guarantees a shape"
    shape = sig.shape[1:] if batched else sig.shape
    if any(d == 0 for d in shape):
        raise InvalidModelError(
            f"'{sig.name}' has a zero-sized dim {list(sig.shape)}; Triton dims must be >= 1 or dynamic (-1)"
        )
    dims = [-1 if d is None else d for d in shape]
    if dims:
        return dims, None
    if batched:  # a tensor of shape [batch]: Triton's documented form is dims [1] with an empty reshape
        return [1], []
    raise InvalidModelError(
        f"'{sig.name}' is a scalar (rank 0); Triton cannot serve scalars without batching",
        hint="reshape it to [1] in the model, or give it a dynamic batch axis",
    )


def _add_io(config: mc.ModelConfig, sig: TensorSignature, batched: bool, *, is_input: bool) -> None:
    kind = "input" if is_input else "output"
    dims, reshape = _config_dims(sig, batched)
    entry = (config.input if is_input else config.output).add()
    entry.name = sig.name
    entry.data_type = onnx_to_triton(sig.elem_type, tensor=f"{kind} '{sig.name}'")
    entry.dims.extend(dims)
    if reshape is not None:
        entry.reshape.SetInParent()
        entry.reshape.shape.extend(reshape)


def _max_batch_size(options: TritonModelOptions, inputs: list[TensorSignature], outputs: list[TensorSignature]) -> int:
    batched = has_dynamic_batch_axis(inputs, outputs)
    if options.max_batch_size is None:
        return DEFAULT_MAX_BATCH_SIZE if batched else 0
    if options.max_batch_size > 0 and not batched:
        fixed = [f"{t.name} {['?' if d is None else d for d in t.shape or ()]}" for t in [*inputs, *outputs]
                 if not t.has_dynamic_first_dim]
        raise InvalidInputError(
            f"max batch size {options.max_batch_size} needs a dynamic batch axis (dynamic first dim on every input "
            f"and output), but these tensors have none: {', '.join(fixed)}",
            hint="use --max-batch-size 0, or re-export the model with a dynamic batch axis",
        )
    return options.max_batch_size


def _add_batching(config: mc.ModelConfig, options: TritonModelOptions) -> None:
    mbs = config.max_batch_size
    enabled = options.dynamic_batching if options.dynamic_batching is not None else mbs > 0
    if not enabled and (options.preferred_batch_sizes or options.max_queue_delay_us is not None):
        raise InvalidInputError(
            "preferred batch sizes and max queue delay configure dynamic batching, which needs max_batch_size > 0, "
            "and this model is configured without batching",
            hint="give the model a dynamic batch axis (and --max-batch-size N), or drop these options",
        )
    if not enabled:
        return
    if mbs == 0:
        raise InvalidInputError(
            "dynamic batching needs max_batch_size > 0, and this model is configured without batching",
            hint="drop --dynamic-batching, or give the model a dynamic batch axis and --max-batch-size N",
        )
    too_big = [s for s in options.preferred_batch_sizes if s > mbs]
    if too_big:
        raise InvalidInputError(f"preferred batch sizes {too_big} exceed the max batch size {mbs}")
    config.dynamic_batching.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(sorted(set(options.preferred_batch_sizes)))
    if options.max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us


def _add_warmup(config: mc.ModelConfig, kind: str) -> None:
    warmup = config.model_warmup.add(name=f"{kind}_sample", batch_size=1)
    for inp in config.input:
        data = warmup.inputs[inp.name]
        data.data_type = inp.data_type
        data.dims.extend(1 if d == -1 else d for d in inp.dims)  # dynamic dims warm up at size 1
        if kind == "random" and inp.data_type != mc.TYPE_STRING:
            data.random_data = True
        else:
            data.zero_data = True


def _add_tensorrt(config: mc.ModelConfig, model: onnx.ModelProto, options: TritonModelOptions) -> None:
    precision = options.precision or "fp32"
    if precision == "int8" and not has_qdq_nodes(model):
        raise InvalidModelError(
            "TensorRT INT8 through ONNX Runtime needs a quantized (Q/DQ) model, and this model has no "
            "QuantizeLinear/DequantizeLinear nodes",
            hint="run `accelserve optimize --recipe int8 --target tensorrt` first and add its output",
        )
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accel.parameters["precision_mode"] = TRT_PRECISIONS[precision]
    if options.workspace_bytes is not None:
        accel.parameters["max_workspace_size_bytes"] = str(options.workspace_bytes)
    if options.trt_engine_cache is not None:
        accel.parameters["trt_engine_cache_enable"] = "true"
        accel.parameters["trt_engine_cache_path"] = options.trt_engine_cache
    for key, value in options.trt_parameters:
        if key in accel.parameters and accel.parameters[key] != value:
            raise InvalidInputError(f"TensorRT parameter '{key}' is set twice ({accel.parameters[key]!r} by a flag, "
                                    f"{value!r} by --trt-option)")
        accel.parameters[key] = value


def _add_max_shapes(config: mc.ModelConfig, model: onnx.ModelProto, batched: bool) -> None:
    """Known bounds of dynamic dims (recorded at export) as the ``accelserve_max_shape`` parameter: accelserve's
    ONNX Runtime stand-in refuses a request over a bound with a clear error, ``accelserve infer`` checks it before
    sending; Triton's native onnxruntime backend ignores parameters it does not know."""
    import json

    from accelserve.onnx_io import input_max_shapes
    from accelserve.triton.python_model.model import MAX_SHAPE_PARAMETER

    shapes = input_max_shapes(model, batched)
    if shapes:
        config.parameters[MAX_SHAPE_PARAMETER].string_value = json.dumps(shapes, sort_keys=True, separators=(",", ":"))


def max_shape_note(config: mc.ModelConfig) -> str | None:
    """A line for the user about the bounds in ``config`` (None without any)."""
    import json

    from accelserve.triton.python_model.model import MAX_SHAPE_PARAMETER

    if MAX_SHAPE_PARAMETER not in config.parameters:
        return None
    shapes = json.loads(config.parameters[MAX_SHAPE_PARAMETER].string_value)
    offset = 1 if config.max_batch_size > 0 else 0
    dynamic = {inp.name: list(inp.dims) for inp in config.input}
    parts = [
        f"{name} dim {i + offset} <= {limit}"
        for name, dims in sorted(shapes.items()) for i, limit in enumerate(dims)
        if limit >= 0 and i < len(dynamic.get(name, [])) and dynamic[name][i] == -1
    ]
    return (f"known input bounds from export: {', '.join(parts)} (config parameter {MAX_SHAPE_PARAMETER}: "
            "accelserve's stand-in refuses larger requests with a clear error, `accelserve infer` checks them)")


def build_config(model: onnx.ModelProto, name: str, options: TritonModelOptions | None = None) -> mc.ModelConfig:
    """The Triton ModelConfig for serving ``model`` under ``name`` with Triton's onnxruntime backend."""
    options = options or TritonModelOptions()
    options.check()
    inputs, outputs = graph_signature(model)
    config = mc.ModelConfig(name=name, platform=ONNX_PLATFORM, backend=ONNX_BACKEND)
    config.max_batch_size = _max_batch_size(options, inputs, outputs)
    batched = config.max_batch_size > 0
    for sig in inputs:
        _add_io(config, sig, batched, is_input=True)
    for sig in outputs:
        _add_io(config, sig, batched, is_input=False)
    _add_max_shapes(config, model, batched)
    _add_batching(config, options)
    kind = options.instance_kind or ("gpu" if options.accelerator == "tensorrt" else "cpu")
    config.instance_group.add(count=options.instances, kind=INSTANCE_KINDS[kind])
    if options.warmup:
        _add_warmup(config, options.warmup)
    if options.accelerator == "tensorrt":
        _add_tensorrt(config, model, options)
    return config


# --------------------------------------------------------------------------------------------------------------
# Comparing configs: is a new version compatible with the model's existing config?


def _io_entries(entries: Iterable[mc.ModelInput | mc.ModelOutput]) -> dict[str, str]:
    out = {}
    for e in entries:
        text = f"{triton_type_name(e.data_type)} dims {list(e.dims)}"
        if e.HasField("reshape"):
            text += f" reshape {list(e.reshape.shape)}"
        out[e.name] = text
    return out


def signature_differences(old: mc.ModelConfig, new: mc.ModelConfig) -> list[str]:
    """How the client-visible I/O of two configs differs (names, types, dims, reshape, batching on/off).

    The max batch size value, instances, batching and accelerator settings are serving options, not signature.
    """
    diffs = []
    if (old.max_batch_size > 0) != (new.max_batch_size > 0):
        diffs.append(f"batching: max_batch_size {old.max_batch_size} -> {new.max_batch_size}")
    for kind, a, b in (("input", old.input, new.input), ("output", old.output, new.output)):
        before, after = _io_entries(a), _io_entries(b)
        for name in sorted(before.keys() | after.keys()):
            if name not in after:
                diffs.append(f"{kind} '{name}' removed (was {before[name]})")
            elif name not in before:
                diffs.append(f"{kind} '{name}' added ({after[name]})")
            elif before[name] != after[name]:
                diffs.append(f"{kind} '{name}': {before[name]} -> {after[name]}")
    return diffs


# --------------------------------------------------------------------------------------------------------------
# Text format


class ConfigParseError(RepositoryError):
    """A config.pbtxt that is not valid ModelConfig text; carries the file and the 1-based line and column."""

    def __init__(self, path: Path, line: int | None, column: int | None, detail: str) -> None:
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        super().__init__(
            f"{where}: {detail}",
            hint="see Triton's model configuration docs (model_config.proto) for the field names and types",
        )
        self.path = path
        self.line = line
        self.column = column
        self.detail = detail


_POSITION_PREFIX = re.compile(r"^\d+:\d+ : ")


def config_to_text(config: mc.ModelConfig) -> str:
    """config.pbtxt text of a ModelConfig (short ``[a, b]`` form for repeated numbers, as Triton's examples)."""
    return text_format.MessageToString(config, as_utf8=True, use_short_repeated_primitives=True)


_UNKNOWN_FIELD = re.compile(r'Message type "inference\.(\w+)" has no field named "(\w+)"')


def _did_you_mean(detail: str) -> str:
    """For an unknown field, the closest field name of that message type (typos like ``max_batch_sise``)."""
    import difflib

    match = _UNKNOWN_FIELD.search(detail)
    if not match:
        return ""
    message = mc.DESCRIPTOR.message_types_by_name.get(match.group(1))
    fields = [f.name for f in message.fields] if message is not None else []
    close = difflib.get_close_matches(match.group(2), fields, n=1, cutoff=0.75)
    return f' (did you mean "{close[0]}"?)' if close else ""


def parse_config_text(text: str, path: str | Path = CONFIG_FILENAME) -> mc.ModelConfig:
    """Parse config.pbtxt text; a syntax error, unknown field or bad enum raises ConfigParseError."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        detail = _POSITION_PREFIX.sub("", str(exc))
        raise ConfigParseError(Path(path), exc.GetLine(), exc.GetColumn(), detail + _did_you_mean(detail)) from None
    return config


def read_config(path: str | Path) -> mc.ModelConfig:
    """Read a config.pbtxt (or the config.pbtxt of a model directory) into a ModelConfig, with clear errors."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILENAME
    if not p.is_file():
        raise RepositoryError(
            f"model configuration {p} does not exist",
            hint="add the model with `accelserve repo add MODEL.onnx --repo REPO --name NAME`",
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RepositoryError(f"{p} is not UTF-8 text ({exc}); a config.pbtxt is protobuf text format") from None
    except OSError as exc:
        raise RepositoryError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_config_text(text, p)
