"""What every request of a load test sends, decided and checked before the run starts.

:func:`build_plan` asks the server (through :class:`accelserve.triton.client.TritonClient`) for the model's
metadata and config, applies the user's batch size, ``--shape`` overrides, data ranges or ``.npz`` samples, and
raises a user error for anything that cannot work: server unreachable, model not loaded, dynamic dims not given,
shapes that do not fit, a batch size over ``max_batch_size``. The resulting :class:`RequestPlan` is plain data
(JSON) handed to the load process, where :func:`payloads` turns it into request tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError
from accelserve.specs import random_array

#: distinct random requests per user (cycled), so the server does not see one tensor over and over
RANDOM_POOL = 8
#: requests per sequence for a sequence model when --sequence-length is not given (perf_analyzer's default)
DEFAULT_SEQUENCE_LENGTH = 20


@dataclass(frozen=True)
class TensorPlan:
    name: str
    datatype: str  # wire datatype, e.g. "FP32"
    shape: tuple[int, ...]  # as sent (batch dim included for batching models)
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class RequestPlan:
    url: str  # protocol://host:port
    protocol: str  # "http" or "grpc"
    model: str
    batch_size: int  # samples per request (1 for models that do not batch)
    max_batch_size: int
    inputs: tuple[TensorPlan, ...]
    outputs: tuple[str, ...]
    binary_data: bool = True  # HTTP: binary tensor extension (JSON when False); gRPC is always binary
    data_file: str | None = None  # .npz with one array per input; else random data
    seed: int = 0
    request_timeout_s: float = 30.0
    notes: tuple[str, ...] = field(default=())
    string_length: int = 16  # characters of random BYTES elements
    string_data: str | None = None  # fixed text for every BYTES element instead of random strings
    sequence_length: int = 0  # > 0: a sequence model; each user sends sequences of this many requests

    @property
    def host_port(self) -> str:
        return self.url.split("://", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestPlan:
        data = dict(data)
        data["inputs"] = tuple(TensorPlan(**{**t, "shape": tuple(t["shape"])}) for t in data["inputs"])
        data["outputs"] = tuple(data["outputs"])
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    def describe(self) -> str:
        tensors = ", ".join(f"{t.name}:{'x'.join(map(str, t.shape))}:{t.datatype}" for t in self.inputs)
        source = f"samples from {self.data_file}" if self.data_file else "random data"
        wire = "binary" if self.binary_data or self.protocol == "grpc" else "JSON"
        sequences = f", sequences of {self.sequence_length} requests per user" if self.sequence_length else ""
        return (f"{self.model} over {self.url} ({wire} tensors), batch {self.batch_size}, inputs {tensors}, {source}"
                + sequences)


def parse_ranges(items: list[str] | None) -> dict[str | None, tuple[float, float]]:
    """``["0:1", "ids=0:30000"]`` -> ``{None: (0, 1), "ids": (0, 30000)}`` (None: every input)."""
    ranges: dict[str | None, tuple[float, float]] = {}
    for item in items or []:
        name, sep, span = item.rpartition("=")
        low_text, colon, high_text = span.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            low = high = float("nan")
        if not colon or not low < high:
            raise InvalidInputError(
                f"--range '{item}' is not [NAME=]LOW:HIGH with LOW < HIGH", hint="e.g. --range 0:1 or --range ids=0:30000"
            )
        ranges[name if sep else None] = (low, high)
    return ranges


def build_plan(
    client: Any,  # accelserve.triton.client.TritonClient, connected
    model: str,
    *,
    batch: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    ranges: dict[str | None, tuple[float, float]] | None = None,
    data_file: str | Path | None = None,
    binary_data: bool = True,
    seed: int = 0,
    request_timeout_s: float = 30.0,
    string_length: int = 16,
    string_data: str | None = None,
    sequence_length: int | None = None,
) -> RequestPlan:
    """Check the server and the model and decide the request; every problem is a user error raised here."""
    from accelserve.triton.client import check_max_shapes, load_inputs, request_shape

    client.check_live()
    info = client.model_info(model)  # lists the loaded models when ``model`` is not one of them
    shapes = dict(shapes or {})
    ranges = dict(ranges or {})
    names = [t.name for t in info.inputs]
    for name in [*shapes, *(k for k in ranges if k is not None)]:
        if name not in names:
            raise InvalidInputError(f"model '{model}' has no input '{name}'", hint=f"its inputs: {', '.join(names)}")
    if batch is not None and batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {batch}")
    if info.max_batch_size == 0 and (batch or 1) > 1:
        raise InvalidInputError(
            f"model '{model}' does not batch (max_batch_size 0), so --batch {batch} cannot be sent",
            hint="use --batch 1, or enable batching in the model's config (max_batch_size > 0)",
        )
    want_batch = batch or 1

    if data_file is not None:
        if shapes:
            raise InvalidInputError("--shape and --data exclude each other: with --data the arrays give the shapes")
        arrays = load_inputs(data_file, info)
        samples = {len(a) for a in arrays.values()} if info.max_batch_size > 0 else {1}
        if len(samples) != 1:
            raise InvalidInputError(
                f"the arrays in {data_file} hold different numbers of samples ({sorted(samples)}) along the batch dim"
            )
        shaped = {
            t.name: ((want_batch, *arrays[t.name].shape[1:]) if info.max_batch_size > 0 else arrays[t.name].shape)
            for t in info.inputs
        }
    else:
        shaped = {t.name: request_shape(t, info, want_batch, shapes) for t in info.inputs}

    effective = want_batch
    if info.max_batch_size > 0:
        batch_dims = {shape[0] for shape in shaped.values() if shape}
        if len(batch_dims) > 1:
            raise InvalidInputError(f"the inputs' batch dims disagree: {shaped}", hint="give the same first dim to every --shape")
        effective = batch_dims.pop() if batch_dims else want_batch
        if batch is not None and effective != batch:
            raise InvalidInputError(f"--batch {batch} disagrees with the batch dim {effective} given by --shape")
        if effective > info.max_batch_size:
            raise InvalidInputError(
                f"batch size {effective} exceeds the max_batch_size {info.max_batch_size} of model '{model}'",
                hint=f"use --batch {info.max_batch_size} or less, or raise max_batch_size in the model's config",
            )

    check_max_shapes(info, {name: np.broadcast_to(np.zeros((), np.int8), shape) for name, shape in shaped.items()})
    sequence_length, notes = _sequence_length(info, sequence_length, effective)
    if string_length < 0:
        raise InvalidInputError(f"--string-length must be >= 0, got {string_length}")
    inputs = []
    for t in info.inputs:
        low, high = ranges.get(t.name, ranges.get(None, (None, None)))
        inputs.append(TensorPlan(t.name, t.datatype, tuple(int(d) for d in shaped[t.name]), low, high))
    return RequestPlan(
        url=client.url,
        protocol=client.protocol,
        model=model,
        batch_size=effective,
        max_batch_size=info.max_batch_size,
        inputs=tuple(inputs),
        outputs=tuple(o.name for o in info.outputs),
        binary_data=binary_data,
        data_file=str(Path(data_file).resolve()) if data_file is not None else None,
        seed=seed,
        request_timeout_s=request_timeout_s,
        notes=tuple(notes),
        string_length=string_length,
        string_data=string_data,
        sequence_length=sequence_length,
    )


def _sequence_length(info: Any, requested: int | None, batch: int) -> tuple[int, list[str]]:
    """Requests per sequence for a sequence model (0 for any other), and a note when the default was taken."""
    if info.sequence is None:
        if requested:
            raise InvalidInputError(f"model '{info.name}' has no sequence_batching; --sequence-length applies to "
                                    "sequence models")
        return 0, []
    if requested is not None and requested < 1:
        raise InvalidInputError(f"--sequence-length must be >= 1, got {requested}")
    if info.max_batch_size > 0 and batch != 1:
        raise InvalidInputError(f"model '{info.name}' uses sequence batching: Triton takes only batch size 1 per "
                                f"request, not {batch}", hint="use --batch 1 (Triton batches the sequences itself)")
    if requested is None:
        return DEFAULT_SEQUENCE_LENGTH, [f"sequence model: {DEFAULT_SEQUENCE_LENGTH} requests per sequence "
                                         "(--sequence-length to change)"]
    return requested, []


def _npz_arrays(plan: RequestPlan) -> dict[str, np.ndarray]:
    assert plan.data_file is not None
    with np.load(plan.data_file, allow_pickle=False) as data:
        return {t.name: data[t.name] for t in plan.inputs}


def payloads(plan: RequestPlan, *, user_index: int = 0, count: int = RANDOM_POOL) -> list[dict[str, np.ndarray]]:
    """Request tensors for one user, to be cycled through.

    Random data: ``count`` distinct requests, seeded by ``plan.seed`` and ``user_index``. ``.npz`` samples: the
    arrays' first dim is a pool of samples, cut into consecutive batches of ``batch_size`` (wrapping around), each
    user starting at a different offset; for a model that does not batch, the arrays are one request.
    """
    from tritonclient.utils import triton_to_np_dtype

    from accelserve.triton.client import as_bytes_tensor, random_strings

    if plan.data_file is None:
        rng = np.random.default_rng([plan.seed, user_index])
        return [
            {
                t.name: random_strings(rng, t.shape, plan.string_length, plan.string_data) if t.datatype == "BYTES"
                else random_array(rng, t.shape, np.dtype(triton_to_np_dtype(t.datatype)), t.low, t.high)
                for t in plan.inputs
            }
            for _ in range(count)
        ]
    arrays = _npz_arrays(plan)
    dtypes = {t.name: np.dtype(triton_to_np_dtype(t.datatype)) for t in plan.inputs}
    arrays = {k: (as_bytes_tensor(a) if dtypes[k] == np.object_ else a.astype(dtypes[k]) if a.dtype != dtypes[k] else a)
              for k, a in arrays.items()}
    if plan.max_batch_size == 0:
        return [arrays]
    pool = len(next(iter(arrays.values())))
    b = plan.batch_size
    n_requests = max(1, -(-pool // b))
    start = (user_index * b) % pool
    out = []
    for r in range(n_requests):
        idx = [(start + r * b + j) % pool for j in range(b)]
        out.append({name: np.ascontiguousarray(a[idx]) for name, a in arrays.items()})
    return out
