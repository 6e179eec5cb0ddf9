"""Reading, checking and writing ONNX files: external data, broken files, and runtime IR/opset limits.

Loaders follow Polygraphy's style: small functions that each do one thing and raise a user error
(:class:`InvalidModelError`) that names the problem.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import onnx
from onnx import external_data_helper

from accelserve.errors import InvalidModelError
from accelserve.onnx_limits import check_model_limits

_T = TypeVar("_T")

#: protobuf's hard limit for one serialized message
TWO_GB = 2**31 - 1
DEFAULT_DOMAINS = ("", "ai.onnx")

_FOREIGN_MAGIC = {
    b"PK\x03\x04": "a ZIP archive (a TorchScript/torch.export archive or a .keras file?); export it first with `accelserve export`",
    b"\x80\x02": "a Python pickle (a PyTorch checkpoint?); export it with `accelserve export torch`",
    b"\x80\x03": "a Python pickle (a PyTorch checkpoint?); export it with `accelserve export torch`",
    b"\x80\x04": "a Python pickle (a PyTorch checkpoint?); export it with `accelserve export torch`",
    b"\x80\x05": "a Python pickle (a PyTorch checkpoint?); export it with `accelserve export torch`",
    b"\x1f\x8b": "a gzip-compressed file; decompress it first",
    b"\x93NUMPY": "a NumPy .npy array, not a model",
    b"\x89HDF": "an HDF5 file (a Keras .h5 model?); export it with `accelserve export tensorflow`",
    b"ftrt": "a serialized TensorRT engine, not an ONNX model",
}


def external_data_files(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Paths of the external-data files the model refers to (without reading them), in a stable order."""
    locations: list[str] = []
    for tensor in external_data_helper._get_all_tensors(model):  # noqa: SLF001 - onnx's own tensor walker
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            if info.location not in locations:
                locations.append(info.location)
    out = []
    for loc in locations:
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts:
            raise InvalidModelError(
                f"external data location '{loc}' points outside the model's directory; refusing to follow it",
                hint="re-save the model with its external data beside it (onnx.save(..., location='model.onnx.data'))",
            )
        out.append(base_dir / rel)
    return out


def _sniff(path: Path) -> None:
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        raise InvalidModelError(f"{path} is empty (0 bytes): not an ONNX model")
    for magic, what in _FOREIGN_MAGIC.items():
        if head.startswith(magic):
            raise InvalidModelError(f"{path} is not an ONNX model: it looks like {what}")


def read_onnx(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX file with a clear error for a missing, foreign, truncated or corrupt file, or one whose shapes
    or external data no machine can hold (:func:`accelserve.onnx_limits.check_model_limits`)."""
    p = Path(path)
    if not p.exists():
        raise InvalidModelError(f"model file {p} does not exist")
    if p.is_dir():
        raise InvalidModelError(f"{p} is a directory, not an ONNX file")
    _sniff(p)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InvalidModelError(
            f"{p} cannot be parsed as ONNX ({type(exc).__name__}: {exc}); the file is truncated or not an ONNX model",
            hint="re-export or re-download the model; compare its size with the original",
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(f"{p} parsed but holds no graph: the file is truncated or not an ONNX model")
    missing = [f for f in external_data_files(model, p.parent) if not f.exists()]
    if missing:
        names = ", ".join(str(m) for m in missing)
        raise InvalidModelError(
            f"{p} keeps its weights in external data file(s) that are missing: {names}",
            hint="copy the .data file(s) next to the .onnx file, with the same names",
        )
    check_model_limits(model, p)  # shapes and external data a machine can hold: one check for every command
    if load_external_data:
        try:
            external_data_helper.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise InvalidModelError(f"external data of {p} cannot be read: {exc}") from exc
    return model


def check_model(model: onnx.ModelProto | str | Path, *, what: str = "model") -> onnx.ModelProto:
    """Run ``onnx.checker`` and strict shape inference; return the model with inferred value_info.

    Given a path, the file is read first (so a missing, foreign or truncated file gets :func:`read_onnx`'s clear
    error) and the checker runs on the path, which also checks external data.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        loaded = read_onnx(path)
        what = what if what != "model" else str(path)
        _checked(lambda: onnx.checker.check_model(str(path)), what)
        if loaded.ByteSize() >= TWO_GB:  # shape inference serializes: infer on the header (tensors keep their dims)
            header = read_onnx(path, load_external_data=False)
            return _checked(lambda: onnx.shape_inference.infer_shapes(header, strict_mode=True, data_prop=True), what)
        model = loaded
    elif model.ByteSize() >= TWO_GB:
        # checker and shape inference serialize the model, which protobuf cannot do above 2 GB: save it with
        # external data and check it by path instead
        return model
    else:
        _checked(lambda: onnx.checker.check_model(model), what)
    return _checked(lambda: onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True), what)


def _checked(fn: Callable[[], _T], what: str) -> _T:
    try:
        return fn()
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise InvalidModelError(f"{what} fails the ONNX checker: {msg[0] if msg else type(exc).__name__}") from exc


def load_onnx(path: str | Path, *, check: bool = True) -> onnx.ModelProto:
    """Read (with external data) and optionally check an ONNX file."""
    model = read_onnx(path)
    return check_model(model, what=str(path)) if check else model


# --------------------------------------------------------------------------------------------------------------
# What the installed ONNX Runtime accepts


@dataclass(frozen=True)
class RuntimeLimits:
    max_ir_version: int
    max_opset: int


def _tiny_model(ir_version: int, opset: int) -> bytes:
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def onnxruntime_limits() -> RuntimeLimits:
    """Highest IR version and default-domain opset the installed ONNX Runtime loads, found by probing it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4

    def loads(ir: int, opset: int) -> bool:
        try:
            ort.InferenceSession(_tiny_model(ir, opset), opts, providers=["CPUExecutionProvider"])
            return True
        except Exception:
            return False

    max_ir = next((ir for ir in range(onnx.IR_VERSION, 2, -1) if loads(ir, 13)), 3)
    max_opset = next((op for op in range(onnx.defs.onnx_opset_version(), 6, -1) if loads(min(max_ir, 8), op)), 7)
    return RuntimeLimits(max_ir_version=max_ir, max_opset=max_opset)


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return imp.version
    return 0


@dataclass
class Compatibility:
    """What was changed so a model loads in the target runtime (reported to the user)."""

    changes: list[str] = field(default_factory=list)


def make_runtime_compatible(model: onnx.ModelProto, limits: RuntimeLimits | None = None) -> Compatibility:
    """Clamp IR version and convert the default opset down to what the runtime loads (in place)."""
    limits = limits or onnxruntime_limits()
    result = Compatibility()
    opset = model_opset(model)
    if opset > limits.max_opset:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, limits.max_opset)
        except Exception as exc:
            raise InvalidModelError(
                f"the model uses opset {opset}, the installed ONNX Runtime loads at most opset {limits.max_opset}, "
                f"and converting it down failed: {exc}",
                hint=f"export with --opset {limits.max_opset}, or upgrade onnxruntime",
            ) from exc
        model.CopyFrom(converted)
        result.changes.append(f"opset {opset} -> {limits.max_opset} (ONNX Runtime's maximum)")
    if model.ir_version > limits.max_ir_version:
        result.changes.append(f"IR version {model.ir_version} -> {limits.max_ir_version} (ONNX Runtime's maximum)")
        model.ir_version = limits.max_ir_version
    return result


def save_onnx(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    external_data: bool | None = None,
    runtime_compatible: bool = True,
) -> Compatibility:
    """Write ``model`` to ``path`` atomically.

    Models under 2 GB are written as one file unless ``external_data=True``; larger ones keep their weights in
    ``<name>.data`` beside the model. With ``runtime_compatible`` the IR version/opset are clamped first (in place).
    The files are written in a temporary directory beside ``path`` and renamed into place, so a failure never
    leaves a half-written model; a stale ``<name>.data`` from an earlier save is removed when writing one file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    compat = make_runtime_compatible(model) if runtime_compatible else Compatibility()
    if external_data is None:
        external_data = model.ByteSize() >= TWO_GB
    if not external_data and any(
        external_data_helper.uses_external_data(t) for t in external_data_helper._get_all_tensors(model)  # noqa: SLF001
    ):
        raise InvalidModelError("cannot save as one file: the model's external data was not loaded")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        tmp = tmp_dir / p.name
        if external_data:
            onnx.save_model(
                model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                location=p.name + ".data", size_threshold=1024,
            )
            # onnx.save_model moved the caller's tensors out to the file: load them back so `model` stays usable
            external_data_helper.load_external_data_for_model(model, str(tmp_dir))
        else:
            onnx.save_model(model, str(tmp))
        move_onnx(tmp, p)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return compat


def move_onnx(src: str | Path, dst: str | Path) -> None:
    """Move an ONNX file and its external data to ``dst`` (same file name, or no external data).

    Each file is renamed with ``os.replace`` (atomic within one filesystem), external data first and the model
    last, so ``dst`` never refers to data that is not there yet. A stale ``<dst name>.data`` that the new model
    does not use is removed.
    """
    src, dst = Path(src), Path(dst)
    header = read_onnx(src, load_external_data=False)
    data_files = external_data_files(header, src.parent)
    if data_files and src.name != dst.name:
        raise ValueError(f"cannot rename {src.name} to {dst.name}: its external data refers to files by name")
    dst.parent.mkdir(parents=True, exist_ok=True)
    for f in data_files:
        target = dst.parent / f.relative_to(src.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
    os.replace(src, dst)
    stale = dst.with_name(dst.name + ".data")
    if stale.exists() and stale not in {dst.parent / f.relative_to(src.parent) for f in data_files}:
        stale.unlink()


# --------------------------------------------------------------------------------------------------------------
# Known bounds of dynamic axes, carried in the model file from export to the repository entry

#: ``metadata_props`` key with the upper bounds of named dynamic axes the exporter found (JSON ``{"seq": 128}``)
AXIS_BOUNDS_KEY = "accelserve.axis_max_sizes"


def set_axis_bounds(model: onnx.ModelProto, bounds: dict[str, int]) -> None:
    """Record ``bounds`` (axis name -> largest size the model supports) in the model's metadata."""
    import json

    text = json.dumps({str(k): int(v) for k, v in sorted(bounds.items())}, separators=(",", ":"))
    entry = next((p for p in model.metadata_props if p.key == AXIS_BOUNDS_KEY), None) or model.metadata_props.add()
    entry.key, entry.value = AXIS_BOUNDS_KEY, text


def axis_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """The bounds :func:`set_axis_bounds` recorded ({} when none, or when the entry is not readable)."""
    import json

    entry = next((p for p in model.metadata_props if p.key == AXIS_BOUNDS_KEY), None)
    if entry is None:
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(entry.value).items() if int(v) > 0}
    except (ValueError, TypeError, AttributeError):
        return {}


def input_max_shapes(model: onnx.ModelProto, batched: bool) -> dict[str, list[int]]:
    """Per graph input with a bounded named axis: the largest size of each dim as a Triton config lists dims
    (without the batch dim when ``batched``); -1 where there is no bound."""
    bounds = axis_bounds(model)
    if not bounds:
        return {}
    initializers = {t.name for t in model.graph.initializer}
    out: dict[str, list[int]] = {}
    for value in model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = list(value.type.tensor_type.shape.dim)[1 if batched else 0:]
        sizes = [d.dim_value if d.HasField("dim_value") else bounds.get(d.dim_param, -1) for d in dims]
        if any(not d.HasField("dim_value") and d.dim_param in bounds for d in dims):
            out[value.name] = sizes
    return out
