"""Checks that a parsed ONNX model describes tensors a machine can hold, before any command acts on it.

``onnx.checker`` accepts a graph input of shape 10^6 x 10^6 x 10^6, a rank of 10000, or an external-data entry
claiming 2^62 bytes: commands then crash while making random inputs, or copy such a file into a repository that
the server later refuses. :func:`check_model_limits` runs inside :func:`accelserve.onnx_io.read_onnx`, which every
command that reads a model goes through (verify, optimize, evaluate, repo add/validate, export's description,
infer --compare), so they all refuse such a file with the same :class:`InvalidModelError` (exit 1).

Only the model's header is looked at (shapes, dims, external-data fields and the data files' sizes): nothing
large is read or allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import external_data_helper

from accelserve.errors import InvalidModelError

#: most dims an array may have (NumPy 1.x's NPY_MAXDIMS; ONNX Runtime's tensors are read into NumPy arrays)
MAX_RANK = 32
#: largest graph input/output at batch 1 (dynamic dims counted as 1): a request that size cannot be served
MAX_IO_BYTES = 16 * 2**30
#: largest initializer (ONNX's external-data format itself has no limit; no model stores a tensor this big)
MAX_TENSOR_BYTES = 2**40

_HINT = "the file is corrupt or was crafted: re-export the model"


def _itemsize(elem_type: int) -> int:
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except Exception:  # undefined / string / unknown: count a byte so only the element count is bounded
        return 1
    return max(1, int(np_dtype.itemsize))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def _check_dims(where: str, dims: list[int], itemsize: int, limit: int, what: str) -> None:
    if len(dims) > MAX_RANK:
        raise InvalidModelError(f"{where} has rank {len(dims)}; at most {MAX_RANK} dims are supported", hint=_HINT)
    negative = [d for d in dims if d < 0]
    if negative:
        raise InvalidModelError(f"{where} has a negative dimension ({negative[0]})", hint=_HINT)
    nbytes = math.prod(dims) * itemsize
    if nbytes > limit:
        shape = "x".join(map(str, dims))
        raise InvalidModelError(
            f"{where} ({shape}) needs {_human(nbytes)}{what}, more than the {_human(limit)} accelserve accepts",
            hint=_HINT if nbytes > 2**50 else "check the model's shapes; split such a model or give dynamic dims",
        )


def _value_infos(graph: onnx.GraphProto) -> Iterable[tuple[str, onnx.ValueInfoProto]]:
    yield from (("input", v) for v in graph.input)
    yield from (("output", v) for v in graph.output)


def check_model_limits(model: onnx.ModelProto, path: Path | None = None) -> None:
    """Raise :class:`InvalidModelError` when an input/output or initializer of ``model`` cannot exist on a real
    machine (rank, negative or absurd dims, external data beyond its file). ``path`` locates external data."""
    name = str(path) if path is not None else "the model"
    graph = model.graph
    for kind, vi in _value_infos(graph):
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not ttype.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim]
        _check_dims(f"{name}: {kind} '{vi.name}'", dims, _itemsize(ttype.elem_type), MAX_IO_BYTES,
                    " at batch 1" if any(not d.HasField("dim_value") for d in ttype.shape.dim) else "")
    base = path.parent if path is not None else None
    sizes: dict[str, int] = {}
    for tensor in external_data_helper._get_all_tensors(model):  # noqa: SLF001 - onnx's own walker (subgraphs too)
        where = f"{name}: tensor '{tensor.name}'"
        itemsize = _itemsize(tensor.data_type)
        _check_dims(where, list(tensor.dims), itemsize, MAX_TENSOR_BYTES, "")
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        try:
            offset = int(info.offset or 0)
            length = int(info.length) if info.length is not None else None
        except (TypeError, ValueError) as exc:
            raise InvalidModelError(f"{where} has an unreadable external-data offset/length ({exc})",
                                    hint=_HINT) from exc
        if offset < 0 or (length is not None and length < 0):
            raise InvalidModelError(f"{where} has a negative external-data offset or length", hint=_HINT)
        expected = math.prod(tensor.dims) * itemsize
        if length is not None and tensor.data_type != onnx.TensorProto.STRING and length != expected:
            raise InvalidModelError(
                f"{where} declares {length} bytes of external data, but its shape "
                f"{'x'.join(map(str, tensor.dims)) or 'scalar'} holds {expected} bytes", hint=_HINT)
        if base is None:
            continue
        location = str(info.location)
        if location not in sizes:
            data_file = base / location
            if not data_file.is_file():  # read_onnx reports missing files with its own message
                continue
            sizes[location] = data_file.stat().st_size
        end = offset + (length if length is not None else expected)
        if end > sizes[location]:
            raise InvalidModelError(
                f"{where} reaches byte {end} of external data file {location}, which has {sizes[location]} bytes",
                hint="the .data file is truncated or does not belong to this model; copy the matching one")
