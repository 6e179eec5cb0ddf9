"""Optimization profiles (min/opt/max shape per input) for TensorRT engines with dynamic axes.

A TensorRT engine only accepts shapes inside one of its profiles, so the profile must cover every batch Triton's
dynamic batcher will send: the batch axis runs from 1 to the repository's ``max_batch_size``. Other dynamic axes
(sequence length, image size) need a bound: from the caller (``dim_bounds``, e.g. what the exporter found) or an
explicit override per input in trtexec's form (``x:1x3x224x224,8x3x224x224,32x3x224x224``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import onnx

from accelserve.errors import InvalidInputError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: Shape
    opt: Shape
    max: Shape

    def check(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise InvalidInputError(f"profile of '{self.name}': min/opt/max have different ranks")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (1 <= lo <= mid <= hi):
                raise InvalidInputError(
                    f"profile of '{self.name}': need 1 <= min <= opt <= max on every axis, got "
                    f"min={_fmt(self.min)} opt={_fmt(self.opt)} max={_fmt(self.max)}"
                )

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def parse_shape(text: str, what: str) -> Shape:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"{what}: '{text}' is not a shape like 8x3x224x224") from None
    if not dims or any(d < 1 for d in dims):
        raise InvalidInputError(f"{what}: '{text}' needs positive dims")
    return dims


def parse_profile_override(text: str) -> InputProfile:
    """``NAME:MIN,OPT,MAX`` (each ``AxBxC``) or ``NAME:SHAPE`` for a static shape."""
    name, sep, rest = text.rpartition(":")
    if not sep or not name:
        raise InvalidInputError(f"profile '{text}' is not NAME:MIN,OPT,MAX (e.g. x:1x3x32x32,8x3x32x32,32x3x32x32)")
    parts = rest.split(",")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise InvalidInputError(f"profile '{text}': give one shape or three (min,opt,max)")
    profile = InputProfile(name, *(parse_shape(p, f"profile of '{name}'") for p in parts))
    profile.check()
    return profile


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


def derive_profiles(model: onnx.ModelProto, *, max_batch_size: int, opt_batch_size: int | None = None,
                    dim_bounds: Mapping[str, int] | None = None,
                    overrides: Sequence[InputProfile] = ()) -> list[InputProfile]:
    """One profile entry per graph input (initializers excluded).

    The first axis of a batched model (``max_batch_size > 0``) is the batch: ``1 .. max_batch_size`` with opt at
    ``opt_batch_size`` (default ``max_batch_size``, what a loaded dynamic batcher sends). Other dynamic axes take
    ``1 .. dim_bounds[axis name]`` with opt at the bound. Fixed axes stay fixed. ``overrides`` replace an input's
    derived profile and are checked against the model's fixed dims."""
    bounds = dict(dim_bounds or {})
    inits = {i.name for i in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    by_name = {p.name: p for p in overrides}
    unknown = sorted(set(by_name) - set(inputs))
    if unknown:
        raise InvalidInputError(f"profile given for unknown input(s) {unknown}", hint=f"inputs: {sorted(inputs)}")
    if max_batch_size < 0:
        raise InvalidInputError(f"max_batch_size must be >= 0, got {max_batch_size}")
    opt_batch = opt_batch_size or max_batch_size
    if max_batch_size and not 1 <= opt_batch <= max_batch_size:
        raise InvalidInputError(f"opt batch size {opt_batch} is outside 1..{max_batch_size}")
    profiles = []
    for name, vi in inputs.items():
        dims = _dims(vi)
        if name in by_name:
            profile = by_name[name]
            _check_override(profile, dims, max_batch_size)
            profiles.append(profile)
            continue
        lo, mid, hi = [], [], []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                lo.append(dim), mid.append(dim), hi.append(dim)
            elif axis == 0 and max_batch_size > 0:
                lo.append(1), mid.append(opt_batch), hi.append(max_batch_size)
            elif isinstance(dim, str) and dim in bounds:
                lo.append(1), mid.append(bounds[dim]), hi.append(bounds[dim])
            else:
                label = f"'{dim}'" if dim else f"{axis}"
                raise InvalidInputError(
                    f"input '{name}' axis {label} is dynamic and has no known bound, so no TensorRT profile can be "
                    "derived for it",
                    hint=f"give it with --profile {name}:MIN,OPT,MAX (e.g. {name}:"
                         f"{_example(dims, 1)},{_example(dims, 64)},{_example(dims, 128)})",
                )
        profile = InputProfile(name, tuple(lo), tuple(mid), tuple(hi))
        profile.check()
        profiles.append(profile)
    return profiles


def _example(dims: list[int | str | None], fill: int) -> str:
    return "x".join(str(d) if isinstance(d, int) else str(fill) for d in dims)


def _check_override(profile: InputProfile, dims: list[int | str | None], max_batch_size: int) -> None:
    if len(profile.min) != len(dims):
        raise InvalidInputError(f"profile of '{profile.name}' has rank {len(profile.min)}, the input has {len(dims)}")
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and not profile.min[axis] == profile.opt[axis] == profile.max[axis] == dim:
            raise InvalidInputError(f"profile of '{profile.name}': axis {axis} is fixed at {dim} in the model")
    if max_batch_size > 0 and profile.max[0] < max_batch_size:
        raise InvalidInputError(
            f"profile of '{profile.name}' allows batch <= {profile.max[0]}, but Triton may send up to "
            f"max_batch_size={max_batch_size}",
            hint="raise the profile's max batch, or lower the repository's max_batch_size",
        )


def trtexec_shapes(profiles: Sequence[InputProfile]) -> dict[str, str]:
    """trtexec's ``--minShapes/--optShapes/--maxShapes`` values (empty when every input is static)."""
    if all(p.is_static for p in profiles):
        return {}
    return {
        flag: ",".join(f"{p.name}:{_fmt(getattr(p, attr))}" for p in profiles)
        for flag, attr in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max"))
    }
