"""TensorFlow / Keras -> ONNX with tf2onnx, verified against TensorFlow.

Every source (Keras Functional/Sequential/subclassed model, ``.keras`` file, SavedModel, ``tf.function``) is
reduced to one ``tf.function`` of positional tensors (see :mod:`accelserve.exporters.tensorflow_loading`) and
converted with ``tf2onnx.convert.from_function``. ``from_keras`` is not used: on Keras 3 Sequential models it fails
with ``KeyError: 'keras_tensor_...'``, and ``from_function`` handles every source the same way.

Inputs keep the model's names (or the ``--input`` names, mapped by position and reported) and its layout (NHWC
stays NHWC); the batch axis is dynamic unless ``dynamic_batch=False``. Outputs are named from the model (dict keys,
Keras layer names) or ``output_<i>``. The ONNX file is written atomically: written and verified in a temporary
directory beside ``output`` and moved into place only when verification passed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from accelserve._lazy import require
from accelserve.artifact import ModelArtifact
from accelserve.errors import AccelserveError, ExportError, InvalidInputError, VerificationError
from accelserve.exporters.base import Exporter, ExportOptions, ExportResult
from accelserve.exporters.tensorflow_loading import PURPOSE, SOURCE_HELP, TFModel, import_tensorflow, load_source
from accelserve.onnx_io import check_model, model_opset, move_onnx, onnxruntime_limits, save_onnx
from accelserve.specs import InputSpec, fixed_length_warnings, random_feeds, sample_feed
from accelserve.verify import VerificationReport, tolerance_for, verify

#: option keys export_tensorflow() / ExportOptions.extra understand besides ExportOptions' fields
EXTRA_OPTIONS = ("signature", "sample_feed")


# --------------------------------------------------------------------------------------------------------------
# Inputs


def _spec_text(spec: InputSpec) -> str:
    return f"{spec.name}:{'x'.join(str(d) for d in spec.shape)}:{spec.dtype}"


def _fix_batch(spec: InputSpec) -> InputSpec:
    """The spec with a dynamic first dim made fixed at its sample size (for ``dynamic_batch=False``)."""
    if not spec.shape or not isinstance(spec.shape[0], str):
        return spec
    size = spec.concrete_shape()[0]
    return dataclasses.replace(spec, shape=(size, *spec.shape[1:]))


def _merge_with_model(user: InputSpec, model: InputSpec, messages: list[str]) -> InputSpec:
    """Check a user spec against the model's own input; the model's fixed dims win over user-dynamic ones."""
    if user.np_dtype != model.np_dtype:
        raise InvalidInputError(
            f"--input {user.name} has dtype {user.dtype}, but the model's input '{model.name}' is {model.dtype}",
            hint=f"use --input {_spec_text(model)}",
        )
    if len(user.shape) != len(model.shape):
        raise InvalidInputError(
            f"--input {user.name} has rank {len(user.shape)} ({_spec_text(user)}), but the model's input "
            f"'{model.name}' has rank {len(model.shape)} ({_spec_text(model)})",
        )
    dims = list(user.shape)
    sample = list(user.concrete_shape())
    for i, (u, m) in enumerate(zip(user.shape, model.shape)):
        if isinstance(m, int):
            if isinstance(u, int) and u != m:
                raise InvalidInputError(
                    f"dim {i} of --input {user.name} is {u}, but the model fixes it at {m} ({_spec_text(model)})"
                )
            if isinstance(u, str):
                messages.append(f"dim {i} of input '{user.name}' is fixed at {m} by the model; exported as fixed")
                dims[i], sample[i] = m, m
    return dataclasses.replace(user, shape=tuple(dims), sample_shape=tuple(sample))


def resolve_input_specs(
    model: TFModel, user_specs: Sequence[InputSpec] | None, dynamic_batch: bool
) -> tuple[list[InputSpec], list[str]]:
    """The input specs to export with: the user's (checked against the model's) or the model's own."""
    messages: list[str] = []
    derived = model.input_specs
    if not user_specs:
        if derived is None:
            raise InvalidInputError(
                f"{model.description} does not define its inputs, so their names, shapes and dtypes are unknown",
                hint="pass one --input NAME:SHAPE:DTYPE per input (Python: inputs=['x:1x224x224x3:float32'])",
            )
        specs = list(derived)
    elif derived is None:
        specs = list(user_specs)
    else:
        if len(user_specs) != len(derived):
            raise InvalidInputError(
                f"{len(user_specs)} --input given, but {model.description} has {len(derived)} input(s): "
                + ", ".join(_spec_text(s) for s in derived),
            )
        by_name = {s.name: s for s in user_specs}
        if set(by_name) == {s.name for s in derived}:
            ordered = [by_name[s.name] for s in derived]
        else:
            ordered = list(user_specs)
            for u, d in zip(ordered, derived):
                if u.name != d.name:
                    messages.append(f"model input '{d.name}' is exported as '{u.name}' (the --input name, by position)")
        specs = [_merge_with_model(u, d, messages) for u, d in zip(ordered, derived)]
    if len({s.name for s in specs}) != len(specs):
        raise InvalidInputError("input names must be unique: " + ", ".join(s.name for s in specs))
    if not dynamic_batch:
        specs = [_fix_batch(s) for s in specs]
    if user_specs:
        messages[:0] = fixed_length_warnings(specs, list(derived) if derived is not None else None)
    else:
        messages.insert(0, "inputs taken from the model: " + ", ".join(_spec_text(s) for s in specs))
    return specs, messages


# --------------------------------------------------------------------------------------------------------------
# Outputs


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate = f"{name}_{i}"
        i += 1
    taken.add(candidate)
    return candidate


def flatten_outputs(outputs: Any, hint: list[str] | None, input_names: Sequence[str]) -> tuple[list[str], list[Any]]:
    """Output names and tensors in a stable order: dict keys, Keras names, or ``output_<i>``; unique, not inputs."""
    tf = import_tensorflow()
    if isinstance(outputs, Mapping) and all(tf.is_tensor(v) for v in outputs.values()):
        raw_names, tensors = [str(k) for k in outputs], list(outputs.values())
    else:
        tensors = tf.nest.flatten(outputs)
        if hint is not None and len(hint) == len(tensors):
            raw_names = list(hint)
        else:
            raw_names = [f"output_{i}" for i in range(len(tensors))]
    for name, t in zip(raw_names, tensors):
        if not tf.is_tensor(t):
            raise ExportError(f"model output '{name}' is a {type(t).__name__}, not a tensor")
    taken = set(input_names)
    return [_unique(n, taken) for n in raw_names], tensors


# --------------------------------------------------------------------------------------------------------------
# Conversion


@dataclasses.dataclass
class Traced:
    function: Any  #: tf.function of positional inputs returning the flat list of outputs
    signature: list[Any]  #: tf.TensorSpec per input
    output_names: list[str]
    output_shapes: list[list[int | None] | None]


def trace(model: TFModel, specs: list[InputSpec]) -> Traced:
    tf = import_tensorflow()
    signature = [
        tf.TensorSpec([None if isinstance(d, str) else d for d in s.shape], tf.as_dtype(s.np_dtype), name=s.name)
        for s in specs
    ]
    captured: dict[str, list[str]] = {}
    input_names = [s.name for s in specs]

    def flat_model(*args: Any) -> list[Any]:
        names, tensors = flatten_outputs(model.call(list(args)), model.output_names, input_names)
        captured["names"] = names
        return tensors

    # autograph=False as in Keras 3's own SavedModel export: Keras does not rely on autograph, and a tf.function
    # source keeps its own autograph setting when called from here.
    function = tf.function(flat_model, input_signature=signature, autograph=False)
    try:
        concrete = function.get_concrete_function()
    except AccelserveError:
        raise
    except Exception as exc:
        hint = "check the --input names, shapes and dtypes against what the model expects"
        if "variables which have been deleted" in str(exc):
            hint = (
                "the object owning the model's variables was garbage-collected (e.g. a signature taken from "
                "tf.saved_model.load(...) without keeping the loaded object): pass the loaded object or the path"
            )
        raise ExportError(
            f"calling {model.description} with inputs {', '.join(_spec_text(s) for s in specs)} failed while "
            f"tracing it: {type(exc).__name__}: {str(exc).strip()[:1500]}",
            hint=hint,
        ) from exc
    shapes = [o.shape.as_list() if o.shape.rank is not None else None for o in concrete.outputs]
    return Traced(function, signature, captured["names"], shapes)


class _RecordList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _tf2onnx_log() -> Iterator[list[logging.LogRecord]]:
    """Collect tf2onnx's warnings and errors (it logs unsupported ops instead of raising) instead of printing them."""
    logger = logging.getLogger("tf2onnx")
    handler = _RecordList()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def _unsupported_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in _all_nodes(model.graph):
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def max_tf2onnx_opset() -> int:
    constants = require("tf2onnx.constants", PURPOSE)
    return max(constants.OPSET_TO_IR_VERSION)


def choose_opset(requested: int | None) -> int:
    highest = max_tf2onnx_opset()
    if requested is None:
        return min(highest, onnxruntime_limits().max_opset)
    if requested > highest:
        tf2onnx = require("tf2onnx", PURPOSE)
        raise InvalidInputError(
            f"opset {requested} was requested, but tf2onnx {tf2onnx.__version__} converts to opset {highest} at most",
            hint=f"use --opset {highest} or lower (or leave it out)",
        )
    return requested


def convert(traced: Traced, opset: int, description: str) -> tuple[onnx.ModelProto, list[str]]:
    """Run tf2onnx; unsupported ops and conversion errors (which tf2onnx only logs) raise ExportError."""
    tf2onnx = require("tf2onnx", PURPOSE)
    with _tf2onnx_log() as records:
        try:
            proto, _ = tf2onnx.convert.from_function(traced.function, input_signature=traced.signature, opset=opset)
        except Exception as exc:
            raise ExportError(
                f"tf2onnx {tf2onnx.__version__} failed to convert {description}: {type(exc).__name__}: "
                f"{str(exc).strip()[:1500]}",
            ) from exc
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    unsupported = _unsupported_ops(proto)
    if unsupported or errors:
        ops = ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items())) or "none left in the graph"
        said = "\n    ".join(errors[:20]) or "(no error logged)"
        raise ExportError(
            f"tf2onnx {tf2onnx.__version__} cannot convert {description} to ONNX opset {opset}.\n"
            f"  TensorFlow ops without an ONNX conversion: {ops}\n  tf2onnx said:\n    {said}",
            hint=(
                "replace those ops in the model with supported ones (tf2onnx's support_status.md lists them), "
                "or try another --opset"
            ),
        )
    warnings = [f"tf2onnx: {r.getMessage()}" for r in records if r.levelno < logging.ERROR]
    return proto, warnings


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in _all_nodes(graph):
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _set_dim_params(value: onnx.ValueInfoProto, dims: Sequence[int | str | None]) -> None:
    shape = value.type.tensor_type.shape
    for proto_dim, dim in zip(shape.dim, dims):
        if isinstance(dim, str) and not proto_dim.HasField("dim_value"):
            proto_dim.dim_param = dim


def finish_graph(proto: onnx.ModelProto, specs: list[InputSpec], traced: Traced, dynamic_batch: bool) -> None:
    """Give graph inputs/outputs their final names and dynamic axes their names (``batch``, ...)."""
    graph = proto.graph
    onnx_inputs = [i.name for i in graph.input]
    if len(onnx_inputs) != len(specs):
        raise ExportError(f"tf2onnx produced inputs {onnx_inputs}, expected {[s.name for s in specs]}")
    for value, spec in zip(list(graph.input), specs):
        if value.name != spec.name:
            _rename_value(graph, value.name, spec.name)
        _set_dim_params(value, spec.shape)
    if len(graph.output) != len(traced.output_names):
        raise ExportError(
            f"tf2onnx produced {len(graph.output)} outputs, the model has {len(traced.output_names)}: "
            f"{traced.output_names} (an output that is also an input, or a repeated output, is not supported)"
        )
    for value, name, shape in zip(list(graph.output), traced.output_names, traced.output_shapes):
        if value.name != name:
            _rename_value(graph, value.name, name)
        if shape is not None:
            dims = [
                None if d is not None else ("batch" if i == 0 and dynamic_batch else f"{name}_dim{i}")
                for i, d in enumerate(shape)
            ]
            _set_dim_params(value, dims)


# --------------------------------------------------------------------------------------------------------------
# Verification inputs and TensorFlow outputs


def make_feeds(specs: list[InputSpec], options: ExportOptions) -> list[dict[str, np.ndarray]]:
    """The sample input set (``extra["sample_feed"]`` or random), then random sets with varied dynamic sizes."""
    rng = np.random.default_rng(options.seed)
    given = options.extra.get("sample_feed")
    if given is not None:
        names = [s.name for s in specs]
        if not isinstance(given, Mapping) or set(given) != set(names):
            keys = sorted(given) if isinstance(given, Mapping) else type(given).__name__
            raise InvalidInputError(f"the sample feed has inputs {keys}, the model's inputs are {names}")
        sample = {s.name: np.asarray(given[s.name], dtype=s.np_dtype) for s in specs}
    else:
        sample = sample_feed(specs, rng)
    return [sample, *random_feeds(specs, options.verify_random_inputs, rng)]


def run_tensorflow(traced: Traced, feeds: list[dict[str, np.ndarray]], description: str) -> list[dict[str, np.ndarray]]:
    tf = import_tensorflow()
    names = [s.name for s in traced.signature]
    results = []
    for feed in feeds:
        try:
            outputs = traced.function(*[tf.constant(feed[n]) for n in names])
        except Exception as exc:
            shapes = ", ".join(f"{n}{list(feed[n].shape)}" for n in names)
            raise ExportError(
                f"TensorFlow failed to run {description} on inputs {shapes}: {type(exc).__name__}: "
                f"{str(exc).strip()[:1000]}",
                hint="give dynamic axes a sample size the model accepts, e.g. --input x:1xH=224xW=224x3:float32",
            ) from exc
        results.append({n: np.asarray(t) for n, t in zip(traced.output_names, outputs)})
    return results


class TensorFlowExporter(Exporter):
    """TensorFlow / Keras -> ONNX via tf2onnx, verified against TensorFlow."""

    name = "tensorflow"
    source_help = SOURCE_HELP

    def export(
        self, source: Any, inputs: list[InputSpec] | None, output: Path, options: ExportOptions | None = None
    ) -> ExportResult:
        options = options or ExportOptions()
        output = Path(output)
        if output.suffix != ".onnx":
            raise InvalidInputError(f"output {output} should end in .onnx")
        tolerance = tolerance_for(options.precision, options.atol, options.rtol, options.min_cosine)
        # the source first: a path that is no model is reported without importing TensorFlow at all
        model = load_source(source, signature=options.extra.get("signature"))
        tf = import_tensorflow()
        tf2onnx = require("tf2onnx", PURPOSE)
        opset = choose_opset(options.opset)

        specs, messages = resolve_input_specs(model, inputs, options.dynamic_batch)
        traced = trace(model, specs)
        if options.output_names is not None:
            if len(options.output_names) != len(traced.output_names):
                raise InvalidInputError(
                    f"{len(options.output_names)} output names given, the model has {len(traced.output_names)} "
                    f"outputs: {traced.output_names}"
                )
            names = list(options.output_names)
            clashes = sorted({n for n in names if names.count(n) > 1 or n in {s.name for s in specs}})
            if clashes:
                raise InvalidInputError(f"output names must be unique and differ from the input names: {clashes}")
            traced.output_names = names
        proto, tf2onnx_warnings = convert(traced, opset, model.description)
        messages += tf2onnx_warnings
        finish_graph(proto, specs, traced, options.dynamic_batch)
        check_model(proto, what=f"the ONNX model tf2onnx made from {model.description}")

        feeds = make_feeds(specs, options) if options.verify else []
        expected = run_tensorflow(traced, feeds, model.description) if options.verify else []

        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            tmp_model = tmp_dir / output.name
            compat = save_onnx(proto, tmp_model, external_data=options.external_data)
            messages += [f"made runtime-compatible: {c}" for c in compat.changes]
            report: VerificationReport | None = None
            if options.verify:
                report = verify(tmp_model, feeds, expected, precision=options.precision, tolerance=tolerance)
                report.model = str(output)  # not the temporary path it was checked at
                if not report.passed:
                    raise VerificationError(
                        f"{output} was not written: its outputs under ONNX Runtime differ from TensorFlow's:\n"
                        f"{report.table()}",
                        hint="loosen --atol/--rtol/--min-cosine if this is expected, or pass --no-verify to write it",
                    )
                messages.append(f"verified against TensorFlow on {len(feeds)} input set(s)")
            move_onnx(tmp_model, output)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

        artifact = ModelArtifact(
            output,
            source_framework="tensorflow",
            precision=options.precision,
            history=("export:tensorflow",),
            metadata={
                "source": model.description,
                "source_kind": model.kind,
                "ir_version": proto.ir_version,
                "opset": model_opset(proto),
                "inputs": {s.name: list(s.shape) for s in specs},
                "output_names": list(traced.output_names),
                "compatibility_changes": list(compat.changes),
                "tensorflow": tf.__version__,
                "tf2onnx": tf2onnx.__version__,
                **({"verification": report.to_dict()} if report is not None else {}),
            },
        )
        return ExportResult(artifact=artifact, messages=messages, verification=report)

    def load_reference(self, source: Any, options: ExportOptions | None = None) -> Any:
        """A callable ``feeds -> [outputs]`` running the model in TensorFlow (eagerly), outputs in the order the
        exported ONNX model has them (so a renamed output still lines up)."""
        options = options or ExportOptions()
        model = load_source(source, signature=options.extra.get("signature"))
        tf = import_tensorflow()

        def reference(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            names = list(feeds)
            if model.input_specs is not None:
                wanted = [s.name for s in model.input_specs]
                if set(wanted) == set(feeds):
                    names = wanted
                elif len(wanted) != len(feeds):
                    raise InvalidInputError(f"the model takes inputs {wanted}, got {sorted(feeds)}")
            try:
                outputs = model.call([tf.constant(np.asarray(feeds[n])) for n in names])
            except Exception as exc:
                raise ExportError(
                    f"TensorFlow failed to run {model.description}: {type(exc).__name__}: {str(exc).strip()[:1000]}"
                ) from exc
            _, tensors = flatten_outputs(outputs, model.output_names, names)
            return [np.asarray(t) for t in tensors]

        return reference


def export_tensorflow(
    model_or_path: Any,
    inputs: Sequence[InputSpec | str] | None = None,
    output: str | Path = "model.onnx",
    **options: Any,
) -> ExportResult:
    """Export a Keras model, ``.keras`` file, SavedModel or ``tf.function`` to a verified ONNX file.

    ``inputs`` are :class:`InputSpec` or ``NAME:SHAPE:DTYPE`` strings (derived from the model when left out).
    ``options`` are :class:`ExportOptions` fields (``opset``, ``dynamic_batch``, ``verify``, ``precision``, ...)
    (``atol``/``rtol``/``min_cosine`` too) plus ``signature`` (the SavedModel signature, default ``serving_default``)
    and ``sample_feed`` (the first verification input set, ``{name: array}``).
    """
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    unknown = sorted(k for k in options if k not in fields and k not in EXTRA_OPTIONS)
    if unknown:
        raise InvalidInputError(
            f"unknown export option(s): {', '.join(unknown)}",
            hint=f"options: {', '.join(sorted(fields - {'extra', 'factory'}) + list(EXTRA_OPTIONS))}",
        )
    extra = {k: options.pop(k) for k in list(options) if k in EXTRA_OPTIONS}
    opts = ExportOptions(**options)
    opts.extra.update(extra)
    specs = [
        InputSpec.parse(s, dynamic_batch=opts.dynamic_batch) if isinstance(s, str) else s for s in (inputs or [])
    ]
    return TensorFlowExporter().export(model_or_path, specs, Path(output), opts)


__all__ = ["TensorFlowExporter", "export_tensorflow"]
