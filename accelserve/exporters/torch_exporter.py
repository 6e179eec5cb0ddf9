"""PyTorch -> ONNX with the dynamo exporter (``torch.export`` + ``torch.onnx.export(dynamo=True)``), verified.

Steps: load the model (:mod:`accelserve.exporters.torch_loading`), run it once on the sample inputs, capture it with
``torch.export.export`` where every named dynamic axis of the input specs is one ``torch.export.Dim`` (an axis
name used by two inputs is the same Dim), convert the program to ONNX, check that every requested dynamic axis
is still dynamic, save it ONNX-Runtime-compatible as one file (< 2 GB) in a temporary directory beside the output,
verify it against PyTorch on the sample plus random inputs with other dynamic sizes, and only then move it into
place. The capture is done here rather than by ``torch.onnx.export`` because the latter silently specializes an
axis the model's code fixes (it "refines" the dynamic shapes from torch.export's suggested fixes).
"""

from __future__ import annotations

import contextlib
import keyword
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from accelserve._lazy import require
from accelserve.artifact import ModelArtifact
from accelserve.errors import ExportError, InvalidInputError, VerificationError
from accelserve.exporters.base import Exporter, ExportOptions, ExportResult
from accelserve.exporters.torch_loading import (
    LoadedTorchModel,
    TorchReference,
    check_arity,
    forward_parameters,
    load_torch_model,
    summarize_error,
)
from accelserve.onnx_io import check_model, model_opset, move_onnx, save_onnx, set_axis_bounds
from accelserve.specs import InputSpec, check_feed, fixed_length_warnings, random_feeds, sample_feed
from accelserve.verify import VerificationReport, tolerance_for, verify

Feeds = dict[str, np.ndarray]


def _torch() -> Any:
    torch = require("torch", "exporting a PyTorch model")
    require("onnxscript", "the PyTorch ONNX exporter (torch.onnx.export(dynamo=True))")
    return torch


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's own chatter during capture/conversion (progress prints, internal deprecation notes).

    Errors still raise; only log records below ERROR and Future/Deprecation warnings from torch internals go.
    """
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch._dynamo",
                                               "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"Manually populate .* into state_dict")
            warnings.filterwarnings("ignore", message=r"Pred is a Python constant")
            # torch warns that a Dim shared by several inputs is renamed once: that is the intent
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------------------------------
# capture and conversion


def _dim_name(axis: str) -> str:
    name = re.sub(r"\W", "_", axis)
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = f"d_{name}"
    return name


def dynamic_shapes_for(specs: Sequence[InputSpec], torch: Any) -> tuple[tuple[Any, ...], dict[str, str]]:
    """``torch.export`` dynamic_shapes (one entry per input) with one shared ``Dim`` per axis name.

    Returns the shapes and a map from the Dim's (identifier-safe) name back to the spec's axis name.
    """
    dims: dict[str, Any] = {}
    back: dict[str, str] = {}
    shapes = []
    for spec in specs:
        axes = {}
        for i, axis in spec.dynamic_axes.items():
            if axis not in dims:
                dims[axis] = torch.export.Dim(_dim_name(axis))
                back[_dim_name(axis)] = axis
            axes[i] = dims[axis]
        shapes.append(axes or None)
    return tuple(shapes), back


def _trace_args(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], torch: Any) -> tuple[Any, ...]:
    """Sample tensors for capture; a dynamic axis of size 0/1 is tiled to 2, which torch.export would otherwise
    treat as a constant (its 0/1 specialization). The verification still runs the original sizes."""
    args = []
    for spec in specs:
        arr = np.asarray(feed[spec.name])
        for i in spec.dynamic_axes:
            if i < arr.ndim and arr.shape[i] < 2:
                arr = np.concatenate([arr] * 2, axis=i) if arr.shape[i] == 1 else arr
        args.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return tuple(args)


def _bounded_shapes(exc: BaseException, dynamic_shapes: tuple[Any, ...], torch: Any) -> tuple[Any, list[str]] | None:
    """torch.export's suggested fixes, if they only put bounds on dynamic axes (no axis becomes static).

    Returns the refined dynamic shapes and a note per bounded axis, or None when a fix would specialize an axis."""
    try:
        from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

        refined = refine_dynamic_shapes_from_suggested_fixes(getattr(exc, "msg", str(exc)), dynamic_shapes)
    except Exception:  # noqa: BLE001 - no usable suggestion: the caller reports the original error
        return None
    notes: list[str] = []
    for before, after in zip(dynamic_shapes, refined):
        for axis, old in (before or {}).items():
            new = (after or {}).get(axis) if isinstance(after, dict) else None
            if not isinstance(new, type(old)):
                return None  # the fix makes this axis static (or drops it): not a bound
            lo, hi = getattr(new, "min", None), getattr(new, "max", None)
            if (lo, hi) != (getattr(old, "min", None), getattr(old, "max", None)):
                span = f"at most {hi}" if (lo or 0) <= 2 else f"between {lo} and {hi}"
                notes.append(f"dynamic axis '{new.__name__}' kept dynamic, {span}, as the model's code requires")
    return (refined, sorted(set(notes))) if notes else None


def _axis_upper_bounds(dynamic_shapes: tuple[Any, ...], back: dict[str, str]) -> dict[str, int]:
    """Finite upper bounds of the captured dynamic axes, by the spec's axis names."""
    bounds: dict[str, int] = {}
    for shape in dynamic_shapes:
        for dim in (shape or {}).values() if isinstance(shape, dict) else ():
            hi = getattr(dim, "max", None)
            if isinstance(hi, int) and 0 < hi < 2**31:
                bounds[back.get(dim.__name__, dim.__name__)] = hi
    return bounds


def _capture(loaded: LoadedTorchModel, args: tuple[Any, ...], dynamic_shapes: tuple[Any, ...],
             torch: Any) -> tuple[Any, tuple[Any, ...], list[str]]:
    """The ExportedProgram, the dynamic shapes it was captured with, and notes on bounds torch.export needed."""
    module = loaded.module
    if loaded.kind == "torchscript":
        try:
            from torch._export.converter import TS2EPConverter  # what torch.onnx recommends for ScriptModules

            module = TS2EPConverter(module, args).convert().module()
        except Exception as exc:
            raise ExportError(
                f"converting the TorchScript model ({loaded.description}) for torch.export failed: {summarize_error(exc)}",
                hint="export the Python model (MODULE:ATTR) or a torch.export .pt2 archive instead",
            ) from exc
    user_error = getattr(getattr(torch, "_dynamo", None), "exc", None)
    user_error = getattr(user_error, "UserError", ()) if user_error else ()
    try:
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False), dynamic_shapes, []
    except Exception as exc:
        if user_error and isinstance(exc, user_error):
            bounded = _bounded_shapes(exc, dynamic_shapes, torch)
            if bounded is not None:  # the code only bounds an axis (e.g. 512 position embeddings): keep it dynamic
                shapes, notes = bounded
                try:
                    return torch.export.export(module, args, dynamic_shapes=shapes, strict=False), shapes, notes
                except Exception:  # noqa: BLE001 - report the original, more telling error below
                    pass
            raise ExportError(
                f"torch.export cannot capture {loaded.description} with these dynamic axes: {summarize_error(exc)}",
                hint="an axis the model's code fixes must be static: write its size instead of a name or -1 in "
                "--input (--static-batch fixes the batch too); axes that must be equal need the same name "
                "(e.g. seq in both inputs)",
            ) from exc
        first = exc
    try:  # like torch.onnx: non-strict first, then strict (TorchDynamo)
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=True), dynamic_shapes, []
    except Exception:
        raise ExportError(
            f"torch.export cannot capture {loaded.description}: {summarize_error(first)}",
            hint="see https://pytorch.org/docs/stable/export.html for what torch.export supports",
        ) from first


def _to_onnx(program: Any, args: tuple[Any, ...], input_names: list[str], output_names: list[str] | None,
             dynamic_shapes: tuple[Any, ...], opset: int | None, torch: Any) -> Any:
    try:
        onnx_program = torch.onnx.export(
            program, args, dynamo=True, input_names=input_names, output_names=output_names,
            opset_version=opset, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
        )
        return onnx_program.model_proto
    except Exception as exc:
        raise ExportError(
            f"converting the captured program to ONNX failed: {summarize_error(exc)}",
            hint="an operator may have no ONNX translation at this opset; try another --opset",
        ) from exc


def _dim_text(d: Any) -> str | int:
    return d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")


def _finish_axes(model: Any, specs: Sequence[InputSpec], back: dict[str, str]) -> None:
    """Give dynamic axes the spec's names and check each requested dynamic axis came out dynamic."""
    renamed = {k: v for k, v in back.items() if k != v}
    if renamed:
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
            for d in value.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in renamed:
                    d.dim_param = renamed[d.dim_param]
    by_name = {v.name: v for v in model.graph.input}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            raise ExportError(f"the exported ONNX model has no input '{spec.name}' (it has {sorted(by_name)})")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ExportError(f"input '{spec.name}' has rank {len(dims)} in the ONNX model, {len(spec.shape)} in --input")
        for i, axis in spec.dynamic_axes.items():
            if not dims[i].HasField("dim_param"):
                raise ExportError(
                    f"axis {i} ('{axis}') of input '{spec.name}' came out static ({_dim_text(dims[i])}) in the ONNX model",
                    hint="the model's code fixes this size; declare it static in --input",
                )


# --------------------------------------------------------------------------------------------------------------
# the export


def export_loaded(
    loaded: LoadedTorchModel,
    specs: Sequence[InputSpec],
    output: str | Path,
    options: ExportOptions | None = None,
    sample: Feeds | None = None,
) -> ExportResult:
    """Export an already-loaded model; ``sample`` (input name -> array) defaults to random data from ``specs``."""
    torch = _torch()
    options = options or ExportOptions()
    output = Path(output)
    specs = list(specs)
    if not specs:
        raise InvalidInputError(
            "exporting a PyTorch model needs one --input NAME:SHAPE:DTYPE per forward() argument",
            hint="example: --input input:1x3x224x224:float32 (the first dim is the dynamic batch)",
        )
    if output.suffix != ".onnx":
        raise InvalidInputError(f"output {output} should end in .onnx")
    tolerance = tolerance_for(options.precision, options.atol, options.rtol, options.min_cosine)
    rng = np.random.default_rng(options.seed)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"input names must be unique, got {names}")
    if loaded.kind != "torchscript":
        check_arity(loaded.module, specs)
    params = forward_parameters(loaded.module)
    if params and set(names) <= set(params):  # inputs named like forward()'s parameters bind by name
        specs.sort(key=lambda s: params.index(s.name))
        names = [s.name for s in specs]
    sample = dict(sample) if sample is not None else sample_feed(specs, rng)
    check_feed(sample, specs, "sample inputs", against="--input")
    reference = TorchReference(loaded, names)
    sample_outputs = reference(sample)  # the model must run on its sample before we try to capture it
    output_names = options.output_names or reference.output_names
    if output_names is None:
        output_names = ["output"] if len(sample_outputs) == 1 else [f"output_{i}" for i in range(len(sample_outputs))]
    if len(output_names) != len(sample_outputs):
        raise InvalidInputError(f"{len(output_names)} output name(s) given, the model returns {len(sample_outputs)}")

    dynamic_shapes, back = dynamic_shapes_for(specs, torch)
    args = _trace_args(sample, specs, torch)
    with _quiet_torch():
        program, dynamic_shapes, capture_notes = _capture(loaded, args, dynamic_shapes, torch)
        proto = _to_onnx(program, args, names, list(output_names), dynamic_shapes, options.opset, torch)
    _finish_axes(proto, specs, back)
    bounds = _axis_upper_bounds(dynamic_shapes, back)
    if bounds:  # carried to the repository entry by `repo add` (config parameter accelserve_max_shape)
        set_axis_bounds(proto, bounds)
    proto.producer_name = "accelserve (torch.onnx dynamo exporter)"

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        tmp = tmp_dir / output.name
        compat = save_onnx(proto, tmp, external_data=options.external_data)
        del proto
        checked = check_model(tmp)
        report: VerificationReport | None = None
        if options.verify:
            feeds = [sample, *random_feeds(specs, options.verify_random_inputs, rng, max_sizes=bounds)]
            report = verify(tmp, feeds, reference, precision=options.precision, tolerance=tolerance)
            report.model = str(output)
            if not report.passed:
                raise VerificationError(
                    f"{output} was not written: its outputs under ONNX Runtime differ from PyTorch's:\n{report.table()}",
                    hint="loosen --atol/--rtol/--min-cosine if this is expected, or pass --no-verify to write it anyway",
                )
        move_onnx(tmp, output)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    metadata = {
        "source": loaded.description,
        "source_kind": loaded.kind,
        "ir_version": checked.ir_version,
        "opset": model_opset(checked),
        "inputs": {s.name: list(s.shape) for s in specs},
        "output_names": list(output_names),
        "compatibility_changes": list(compat.changes),
    }
    if bounds:
        metadata["axis_max_sizes"] = dict(bounds)
    if report is not None:
        metadata["verification"] = report.to_dict()
    artifact = ModelArtifact(output, source_framework="torch", precision="fp32", history=("export:torch",),
                             metadata=metadata)
    messages = [*fixed_length_warnings(specs), *capture_notes,
                *(f"made ONNX Runtime-compatible: {c}" for c in compat.changes)]
    return ExportResult(artifact=artifact, messages=messages, verification=report)


# --------------------------------------------------------------------------------------------------------------
# public API


def _to_numpy(value: Any, torch: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def specs_from_samples(
    samples: Mapping[str, np.ndarray],
    *,
    dynamic_batch: bool = True,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
) -> list[InputSpec]:
    """Input specs matching sample arrays: first dim ``batch`` (if ``dynamic_batch``), plus ``dynamic_axes``.

    Integer inputs draw random verification data from the sample's value range (token ids stay in vocabulary).
    """
    dynamic_axes = dynamic_axes or {}
    unknown = set(dynamic_axes) - set(samples)
    if unknown:
        raise InvalidInputError(f"dynamic_axes names unknown input(s) {sorted(unknown)}; inputs: {list(samples)}")
    specs = []
    for name, arr in samples.items():
        axes = dynamic_axes.get(name, {})
        if not isinstance(axes, Mapping):
            axes = {int(i): f"{name}_dim{int(i)}" for i in axes}
        dims: list[int | str] = list(arr.shape)
        if dynamic_batch and arr.ndim:
            dims[0] = "batch"
        for i, axis in axes.items():
            if not -arr.ndim <= int(i) < arr.ndim:
                raise InvalidInputError(f"dynamic axis {i} of input '{name}' is out of range for rank {arr.ndim}")
            dims[int(i) % arr.ndim] = axis
        low = high = None
        if np.issubdtype(arr.dtype, np.integer) and arr.size:
            low, high = float(arr.min()), float(arr.max()) + 1
        specs.append(InputSpec(name=name, shape=tuple(dims), dtype=arr.dtype.name, sample_shape=tuple(arr.shape),
                               low=low, high=high))
    return specs


def export_torch(
    model: Any,
    sample_inputs: Any = None,
    output: str | Path = "model.onnx",
    *,
    inputs: Sequence[InputSpec | str] | None = None,
    input_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str] | Sequence[int]] | None = None,
    options: ExportOptions | None = None,
    **option_overrides: Any,
) -> ExportResult:
    """Export a PyTorch model to a verified, ONNX-Runtime-loadable ONNX file.

    ``model``: an ``nn.Module`` / ScriptModule / ExportedProgram, or a source string (``MODULE:ATTR``, a file).
    ``sample_inputs``: a tensor/array, a tuple of them (forward()'s positional arguments) or a dict by input name;
    or None to generate random samples from ``inputs``. ``inputs``: input specs (``InputSpec`` or
    ``"NAME:SHAPE:DTYPE"``), which also name the dynamic axes; without them, names come from ``input_names``, the
    dict keys or forward()'s parameters, the first dim is the dynamic ``batch`` and ``dynamic_axes``
    (``{"input_ids": {1: "seq"}}``) adds more. Other keyword arguments set :class:`ExportOptions` fields
    (``verify=False``, ``opset=18``, ``precision="fp16"``, ``atol=...``, ``verify_random_inputs=5``...).
    """
    torch = _torch()
    known = {f.name for f in fields(ExportOptions)}
    for key in option_overrides:
        if key not in known:
            raise TypeError(f"export_torch() got an unexpected keyword argument '{key}'")
    options = replace(options or ExportOptions(), **option_overrides)
    loaded = load_torch_model(model, factory=options.factory, trust_source=options.trust_source)
    specs = [InputSpec.parse(s, dynamic_batch=options.dynamic_batch) if isinstance(s, str) else s
             for s in (inputs or [])]
    sample: Feeds | None = None
    if sample_inputs is not None:
        if isinstance(sample_inputs, Mapping):
            sample = {str(k): _to_numpy(v, torch) for k, v in sample_inputs.items()}
        else:
            values = [sample_inputs] if isinstance(sample_inputs, (torch.Tensor, np.ndarray)) else list(sample_inputs)
            arrays = [_to_numpy(v, torch) for v in values]
            names = list(input_names or [s.name for s in specs] or forward_parameters(loaded.module)[: len(arrays)])
            if len(names) < len(arrays):
                names += [f"input_{i}" for i in range(len(names), len(arrays))]
            sample = dict(zip(names[: len(arrays)], arrays))
        if not specs:
            specs = specs_from_samples(sample, dynamic_batch=options.dynamic_batch, dynamic_axes=dynamic_axes)
    elif not specs:
        raise InvalidInputError("export_torch needs sample_inputs or inputs (input specs)")
    return export_loaded(loaded, specs, output, options, sample)


class TorchExporter(Exporter):
    """The ``torch`` exporter plugin."""

    name = "torch"
    source_help = (
        "MODULE:ATTR naming an nn.Module instance, class or zero-argument factory (MODULE may be a .py path); "
        "a TorchScript archive; a torch.export .pt2 archive; or a state-dict checkpoint with --factory MODULE:FN"
    )

    def export(
        self, source: Any, inputs: list[InputSpec], output: Path, options: ExportOptions | None = None
    ) -> ExportResult:
        options = options or ExportOptions()
        loaded = load_torch_model(source, factory=options.factory, trust_source=options.trust_source)
        sample = options.extra.get("sample_feed")
        return export_loaded(loaded, inputs, output, options, sample)

    def load_reference(self, source: Any, options: ExportOptions | None = None) -> TorchReference:
        options = options or ExportOptions()
        _torch()
        return TorchReference(load_torch_model(source, factory=options.factory, trust_source=options.trust_source))
