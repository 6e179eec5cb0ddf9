"""Input specifications (``NAME:SHAPE:DTYPE``) shared by export, verify and infer."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from accelserve.errors import InvalidInputError

Dim = int | str  # a fixed size, or the name of a dynamic axis

_DTYPES = {
    "float32": np.float32, "fp32": np.float32, "float": np.float32,
    "float16": np.float16, "fp16": np.float16, "half": np.float16,
    "float64": np.float64, "fp64": np.float64, "double": np.float64,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
    "uint8": np.uint8, "bool": np.bool_,
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def numpy_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(_DTYPES[name.lower()])
    except KeyError:
        raise InvalidInputError(f"unknown dtype '{name}'", hint=f"use one of: {', '.join(sorted(_DTYPES))}") from None


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (ints, or names for dynamic axes) and numpy dtype name.

    ``sample_shape`` gives the concrete shape used for the sample input (dynamic axes take a small size).
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    sample_shape: tuple[int, ...] = ()
    low: float | None = None
    high: float | None = None

    @classmethod
    def parse(cls, text: str, *, dynamic_batch: bool = True) -> "InputSpec":
        """Parse ``NAME:SHAPE:DTYPE``; SHAPE is ``1x3x224x224`` or ``1,3,224,224``.

        A dim of ``-1`` is dynamic (and named ``<input>_dim<i>``), a dim like ``seq=16`` or ``seq`` is a named
        dynamic axis (16 is the sample size, default 2). The first dim is the batch dim and dynamic (``batch``)
        unless ``dynamic_batch`` is false.
        """
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise InvalidInputError(
                f"input spec '{text}' is not NAME:SHAPE[:DTYPE]", hint="example: --input x:1x3x224x224:float32"
            )
        name, shape_text = parts[0], parts[1]
        dtype = parts[2] if len(parts) == 3 else "float32"
        numpy_dtype(dtype)
        if not _NAME.match(name):
            raise InvalidInputError(f"input name '{name}' in '{text}' is not a valid tensor name")
        dims: list[Dim] = []
        sample: list[int] = []
        for i, tok in enumerate(t for t in re.split(r"[x,]", shape_text) if t != ""):
            tok = tok.strip()
            size_text = None
            if "=" in tok:
                tok, size_text = tok.split("=", 1)
            if re.fullmatch(r"\d+", tok):
                size = int(tok)
                if size <= 0:
                    raise InvalidInputError(f"dim {i} of '{text}' must be positive, got {size}")
                if i == 0 and dynamic_batch:
                    dims.append("batch")
                else:
                    dims.append(size)
                sample.append(size)
            elif tok == "-1" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
                axis = ("batch" if i == 0 else f"{name}_dim{i}") if tok == "-1" else tok
                dims.append(axis)
                try:
                    sample.append(int(size_text) if size_text else 2)
                except ValueError:
                    raise InvalidInputError(f"sample size '{size_text}' of dim {i} in '{text}' is not an integer") from None
            else:
                raise InvalidInputError(f"dim '{tok}' of '{text}' is neither a positive integer, -1, nor an axis name")
        if not dims:
            raise InvalidInputError(f"input spec '{text}' has an empty shape")
        return cls(name=name, shape=tuple(dims), dtype=dtype, sample_shape=tuple(sample))

    @property
    def np_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, overrides: dict[str, int] | None = None) -> tuple[int, ...]:
        overrides = overrides or {}
        base = self.sample_shape or tuple(d if isinstance(d, int) else 2 for d in self.shape)
        return tuple(overrides.get(d, base[i]) if isinstance(d, str) else d for i, d in enumerate(self.shape))

    def random(self, rng: np.random.Generator, overrides: dict[str, int] | None = None) -> np.ndarray:
        """Random data of this input's dtype and (concrete) shape."""
        return random_array(rng, self.concrete_shape(overrides), self.np_dtype, self.low, self.high)


def random_array(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, low: float | None = None, high: float | None = None
) -> np.ndarray:
    try:
        return _random_array(rng, shape, dtype, low, high)
    except (MemoryError, ValueError) as exc:  # absurd shapes: a user error, not a crash
        dtype = np.dtype(dtype)
        raise InvalidInputError(
            f"cannot make a random {dtype} array of shape {'x'.join(map(str, shape)) or 'scalar'}: "
            f"{type(exc).__name__}: {exc}",
            hint="give smaller sizes for the dynamic axes (--input NAME:SHAPE) or real data (--data)",
        ) from exc


def _random_array(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, low: float | None, high: float | None
) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        lo = int(low) if low is not None else 0
        hi = int(high) if high is not None else 100
        return rng.integers(lo, hi, size=shape, endpoint=False).astype(dtype)
    lo = low if low is not None else -1.0
    hi = high if high is not None else 1.0
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def fixed_length_warnings(specs: list[InputSpec], model_specs: list[InputSpec] | None = None) -> list[str]:
    """Warnings for integer inputs (token ids, positions, masks) whose dims after the first are all fixed: such a
    spec exports a model that only takes that one sequence length, which is rarely meant. ``model_specs`` (the
    model's own inputs, where it declares them) limit this to dims the model itself leaves dynamic."""
    model = {m.name: m for m in model_specs or []}
    out = []
    for spec in specs:
        if not np.issubdtype(spec.np_dtype, np.integer) or spec.np_dtype.itemsize < 4 or len(spec.shape) < 2:
            continue  # uint8/int8 are image data rather than tokens
        rest = list(enumerate(spec.shape))[1:]
        if any(isinstance(d, str) for _, d in rest) or all(d == 1 for _, d in rest):
            continue
        own = model.get(spec.name)
        if own is not None and len(own.shape) == len(spec.shape) and not any(
                isinstance(own.shape[i], str) for i, d in rest if isinstance(d, int) and d > 1):
            continue  # the model fixes those dims itself
        concrete = spec.concrete_shape()
        shape = "x".join(map(str, concrete))
        dims = [str(i) for i, d in rest if isinstance(d, int) and d > 1]
        named = "x".join([str(concrete[0])] + [f"seq={d}" if str(i) == dims[-1] else str(d) for i, d in rest])
        out.append(
            f"warning: integer input '{spec.name}' ({shape}, {spec.dtype}) has no dynamic axis after the batch, so "
            f"the exported model only takes that length (dim {', '.join(dims)}); for token ids name the sequence "
            f"axis, e.g. --input {spec.name}:{named}:{spec.dtype} (ignore this if the length is fixed by design)"
        )
    return out


def axis_sample_sizes(specs: list[InputSpec]) -> dict[str, int]:
    """Sample size of each named dynamic axis; an axis shared by several inputs takes its first given size."""
    sizes: dict[str, int] = {}
    for spec in specs:
        base = spec.concrete_shape()
        for i, axis in spec.dynamic_axes.items():
            sizes.setdefault(axis, base[i])
    return sizes


def sample_feed(specs: list[InputSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One random input set at the sample shapes (shared axis names get one size)."""
    sizes = axis_sample_sizes(specs)
    return {s.name: s.random(rng, sizes) for s in specs}


def random_feeds(
    specs: list[InputSpec], count: int, rng: np.random.Generator, *, vary_dynamic: bool = True,
    max_sizes: dict[str, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """``count`` random input sets; with ``vary_dynamic`` each set draws new sizes for the dynamic axes.

    An axis name shared by several inputs (``batch``, ``seq``) gets one size per set. The first set always
    differs from the sample size (sample + 1), the others are drawn from ``1 .. max(2 * sample, 4)``; sizes never
    exceed ``max_sizes[axis]`` (an upper bound the model has, e.g. 512 positions).
    """
    axes = axis_sample_sizes(specs)
    max_sizes = max_sizes or {}
    feeds = []
    for k in range(count):
        overrides = dict(axes)
        if vary_dynamic:
            for axis, sample in axes.items():
                size = sample + 1 if k == 0 else int(rng.integers(1, max(2 * sample, 4) + 1))
                overrides[axis] = min(size, max_sizes.get(axis, size))
        feeds.append({s.name: s.random(rng, overrides) for s in specs})
    return feeds


def input_specs_from_onnx(model: "onnx.ModelProto") -> list[InputSpec]:  # noqa: F821 - onnx is imported lazily
    """Input specs of an ONNX graph (initializers excluded); unnamed dynamic dims get ``<input>_dim<i>``."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    axis_samples: dict[str, int] = {}  # one sample size per axis name, shared between inputs
    out = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
            numpy_dtype(dtype)
        except (KeyError, TypeError, InvalidInputError):
            raise InvalidInputError(
                f"model input '{value.name}' has a type accelserve cannot generate data for "
                f"(ONNX elem_type {tensor_type.elem_type})",
                hint="pass the input data with --data FEEDS.npz",
            ) from None
        dims: list[Dim] = []
        sample: list[int] = []
        for i, d in enumerate(tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
                sample.append(d.dim_value)
            else:
                axis = d.dim_param or f"{value.name}_dim{i}"
                dims.append(axis)
                sample.append(axis_samples.setdefault(axis, 1 if i == 0 else 2))
        out.append(InputSpec(name=value.name, shape=tuple(dims), dtype=dtype, sample_shape=tuple(sample)))
    return out


def check_feed(feed: dict[str, np.ndarray], specs: list[InputSpec], origin: str, against: str = "the model") -> None:
    """A clear error when ``feed`` does not fit ``specs``: missing/extra inputs, rank, static sizes or dtype.

    ``origin`` names the feed in the message (a file, "sample inputs"), ``against`` what the specs describe."""
    names = [s.name for s in specs]
    if set(feed) != set(names):
        raise InvalidInputError(f"{origin} has inputs {sorted(feed)}, {against}'s inputs are {names}")
    for spec in specs:
        arr = np.asarray(feed[spec.name])
        shape = "x".join(map(str, spec.shape))
        if arr.ndim != len(spec.shape):
            raise InvalidInputError(
                f"{origin}: input '{spec.name}' has rank {arr.ndim} ({'x'.join(map(str, arr.shape))}), "
                f"{against} expects rank {len(spec.shape)} ({shape})"
            )
        for i, d in enumerate(spec.shape):
            if isinstance(d, int) and arr.shape[i] != d:
                raise InvalidInputError(f"{origin}: input '{spec.name}' has size {arr.shape[i]} on axis {i}, "
                                        f"{against} expects {d} ({shape})")
        if arr.dtype != spec.np_dtype:
            raise InvalidInputError(f"{origin}: input '{spec.name}' is {arr.dtype}, {against} expects {spec.dtype}")
