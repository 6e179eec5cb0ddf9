"""Calibration (and evaluation) data: load it from a file, a directory, a Python callable or random numbers, and
check it against the model's inputs before anything runs.

Formats (``spec``):

* ``data.npz`` -- one array per model input, keyed by input name. An array with the input's rank holds samples
  along axis 0 and is cut into feeds of ``batch_size`` samples (or the model's fixed batch size); an array with one
  more dimension holds whole feeds stacked along a new axis 0.
* a directory of ``.npy`` files -- ``NAME.npy`` per input (same rules as ``.npz``), or, for a one-input model, any
  number of ``.npy`` files, each one feed, in file-name order.
* ``MODULE:FN`` or ``path/to/file.py:FN`` (or a Python callable) -- ``FN()`` returns an iterable of feed dicts
  ``{input name: array}`` (a bare array is accepted for a one-input model).
* ``random=True`` -- random feeds from the model's input shapes; marked "smoke only" in every report.

Every feed is validated: input names, dtypes, ranks, fixed dimensions, dynamic axes shared between inputs, finite
values and non-empty arrays. Problems raise :class:`InvalidInputError` naming the input and the feed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from accelserve.errors import InvalidInputError
from accelserve.onnx_io import read_onnx
from accelserve.specs import random_array

Feed = dict[str, np.ndarray]
CalibrationSpec = str | Path | Callable[[], Iterable[Any]] | None

#: feeds made when random data is asked for and no count is given
DEFAULT_RANDOM_FEEDS = 8
#: samples per feed when an array of samples is cut into feeds and the model's batch axis is dynamic
DEFAULT_BATCH_SIZE = 8
#: size given to dynamic non-batch axes of random data unless ``dim_sizes`` names them
DEFAULT_DYNAMIC_DIM = 16

SMOKE_ONLY = "random calibration data: smoke only, the accuracy figures mean nothing"


@dataclass(frozen=True)
class ModelInput:
    """One graph input of an ONNX model (initializers excluded)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  #: ints for fixed dims, axis names or None for dynamic ones

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        dims = "x".join(str(d) if d is not None else "?" for d in self.shape) or "scalar"
        return f"{self.name}:{dims}:{self.dtype}"


def model_inputs(model: onnx.ModelProto | str | Path) -> list[ModelInput]:
    """The real inputs of a model (graph inputs that are not initializers), with numpy dtypes."""
    proto = model if isinstance(model, onnx.ModelProto) else read_onnx(model, load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out.append(ModelInput(vi.name, dtype, tuple(dims)))
    return out


@dataclass
class CalibrationData:
    """Validated feeds for one model. ``is_random`` data is for smoke tests only."""

    source: str
    inputs: list[ModelInput]
    _feeds: list[Feed]
    is_random: bool = False
    _fingerprint: str | None = field(default=None, repr=False)

    def feeds(self) -> list[Feed]:
        """The feeds, in order (a new list of the same arrays; do not modify the arrays)."""
        return list(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self):
        return iter(self.feeds())

    @property
    def samples(self) -> int:
        """Samples along axis 0 over all feeds (feeds of rank-0 inputs count as one sample each)."""
        first = self.inputs[0].name
        return sum(int(f[first].shape[0]) if f[first].ndim else 1 for f in self._feeds)

    def fingerprint(self) -> str:
        """SHA-256 over names, dtypes, shapes and bytes of every feed (the calibration-statistics cache key)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for feed in self._feeds:
                for name in sorted(feed):
                    arr = np.ascontiguousarray(feed[name])
                    digest.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
                    digest.update(arr.tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def rebatch(self, batch_size: int) -> list[Feed]:
        """All samples re-cut into feeds of ``batch_size`` samples (the last may be smaller).

        Needs every input's axis 0 to be dynamic in the model."""
        if batch_size < 1:
            raise InvalidInputError(f"batch size must be >= 1, got {batch_size}")
        fixed = [i.name for i in self.inputs if not i.shape or isinstance(i.shape[0], int)]
        if fixed:
            raise InvalidInputError(
                f"cannot re-batch the data: input(s) {', '.join(fixed)} have a fixed (or no) batch axis in the model"
            )
        merged = {i.name: np.concatenate([f[i.name] for f in self._feeds], axis=0) for i in self.inputs}
        total = next(iter(merged.values())).shape[0]
        return [{k: v[s:s + batch_size] for k, v in merged.items()} for s in range(0, total, batch_size)]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "feeds": len(self._feeds),
            "samples": self.samples,
            "random": self.is_random,
            "fingerprint": self.fingerprint()[:16],
        }
        if self.is_random:
            out["note"] = SMOKE_ONLY
        return out


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_calibration(
    spec: CalibrationSpec | CalibrationData,
    model_path: str | Path,
    *,
    random: bool = False,
    count: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    dim_sizes: dict[str, int] | None = None,
) -> CalibrationData:
    """Load and validate data for ``model_path``.

    ``count`` caps the number of feeds (random data: how many to make, default 8). ``batch_size`` is the number of
    samples per feed when arrays of samples are cut into feeds (default 8; the model's fixed batch size wins).
    ``dim_sizes`` gives sizes for dynamic axes of random data, by axis name.
    """
    inputs = model_inputs(model_path)
    if not inputs:
        raise InvalidInputError(f"{model_path} has no inputs: there is nothing to calibrate with")
    if isinstance(spec, CalibrationData):
        data = CalibrationData(spec.source, inputs, spec.feeds(), spec.is_random)
        validate_feeds(data.feeds(), inputs, data.source)
        return data
    if count is not None and count < 1:
        raise InvalidInputError(f"the number of calibration feeds must be >= 1, got {count}")
    if random:
        if spec is not None:
            raise InvalidInputError("give calibration data or ask for random data, not both")
        feeds = _random_feeds(inputs, count or DEFAULT_RANDOM_FEEDS, batch_size or 1, seed, dim_sizes or {})
        source = f"random ({len(feeds)} feeds, seed {seed})"
        validate_feeds(feeds, inputs, source)
        return CalibrationData(source, inputs, feeds, is_random=True)
    if spec is None:
        raise InvalidInputError(
            "no calibration data given",
            hint="pass --calib DATA (.npz, a directory of .npy, or MODULE:FN), or --random-calib for a smoke test",
        )
    if callable(spec):
        feeds = _feeds_from_callable(spec, inputs, getattr(spec, "__qualname__", repr(spec)))
        source = f"callable {getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', '?')}"
    else:
        text = str(spec)
        path = Path(text)
        if path.exists():
            if path.is_dir():
                feeds = _feeds_from_directory(path, inputs, batch_size)
            elif path.suffix == ".npz":
                feeds = _feeds_from_arrays(_read_npz(path), inputs, batch_size, str(path))
            elif path.suffix == ".npy":
                if len(inputs) != 1:
                    raise InvalidInputError(
                        f"{path} is one .npy array, but the model has {len(inputs)} inputs "
                        f"({', '.join(i.name for i in inputs)})",
                        hint="use an .npz with one array per input name",
                    )
                feeds = _feeds_from_arrays({inputs[0].name: _read_npy(path)}, inputs, batch_size, str(path))
            else:
                raise InvalidInputError(
                    f"calibration data {path} is neither .npz, .npy nor a directory",
                    hint="save arrays with numpy.savez(path, **{input_name: array})",
                )
            source = str(path)
        elif ":" in text:
            fn = resolve_callable(text)
            feeds = _feeds_from_callable(fn, inputs, text)
            source = text
        else:
            raise InvalidInputError(
                f"calibration data '{text}' does not exist and is not MODULE:FN",
                hint="give an .npz file, a directory of .npy files, or MODULE:FN yielding feed dicts",
            )
    if count is not None:
        feeds = feeds[:count]
    validate_feeds(feeds, inputs, source)
    return CalibrationData(source, inputs, feeds)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise InvalidInputError(f"cannot read {path} as an .npz archive: {exc}") from exc


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InvalidInputError(f"cannot read {path} as a .npy array: {exc}") from exc


def _feeds_from_arrays(
    arrays: dict[str, np.ndarray], inputs: list[ModelInput], batch_size: int | None, where: str
) -> list[Feed]:
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown name(s) {', '.join(extra)}")
        raise InvalidInputError(
            f"calibration data {where} does not match the model's inputs: {'; '.join(parts)}",
            hint=f"the model's inputs are: {', '.join(i.describe() for i in inputs)}",
        )
    per_input: dict[str, list[np.ndarray]] = {}
    for inp in inputs:
        arr = arrays[inp.name]
        if arr.ndim == inp.rank + 1:
            per_input[inp.name] = [arr[k] for k in range(arr.shape[0])]
        elif arr.ndim == inp.rank and inp.rank >= 1:
            step = inp.shape[0] if isinstance(inp.shape[0], int) else (batch_size or DEFAULT_BATCH_SIZE)
            per_input[inp.name] = [arr[s:s + step] for s in range(0, arr.shape[0], step)]
        else:
            raise InvalidInputError(
                f"calibration array '{inp.name}' in {where} has shape {arr.shape} (rank {arr.ndim}); the model input "
                f"{inp.describe()} has rank {inp.rank}",
                hint=f"give rank {inp.rank} (samples along axis 0) or rank {inp.rank + 1} (feeds stacked on axis 0)",
            )
    counts = {n: len(v) for n, v in per_input.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInputError(
            f"calibration arrays in {where} give different numbers of feeds per input: "
            + ", ".join(f"{n}: {c}" for n, c in counts.items()),
            hint="every input needs the same number of samples",
        )
    n = next(iter(counts.values()))
    return [{name: per_input[name][k] for name in names} for k in range(n)]


def _feeds_from_directory(path: Path, inputs: list[ModelInput], batch_size: int | None) -> list[Feed]:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise InvalidInputError(f"calibration directory {path} holds no .npy files (an empty dataset)")
    by_stem = {f.stem: f for f in files}
    names = [i.name for i in inputs]
    if all(n in by_stem for n in names):
        return _feeds_from_arrays({n: _read_npy(by_stem[n]) for n in names}, inputs, batch_size, str(path))
    if len(inputs) == 1:
        return [{inputs[0].name: _read_npy(f)} for f in files]
    raise InvalidInputError(
        f"calibration directory {path} has no file per model input ({', '.join(n + '.npy' for n in names)})",
        hint="for a model with several inputs use NAME.npy per input, or one .npz",
    )


def resolve_callable(text: str, what: str = "calibration") -> Callable[..., Any]:
    """Import ``MODULE:FN`` or ``path/to/file.py:FN`` and return ``FN``; user errors name ``what`` it was for."""
    module_name, _, attr = text.rpartition(":")
    if not module_name or not attr:
        raise InvalidInputError(f"'{text}' is not MODULE:FN")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            file = Path(module_name)
            if not file.exists():
                raise InvalidInputError(f"{what} module file {file} does not exist")
            mod_spec = importlib.util.spec_from_file_location(f"_accelserve_calib_{file.stem}", file)
            if mod_spec is None or mod_spec.loader is None:
                raise InvalidInputError(f"cannot import {file} as a Python module")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"importing {what} module '{module_name}' failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise InvalidInputError(f"module '{module_name}' has no callable '{attr}'")
    return fn


def _feeds_from_callable(fn: Callable[[], Iterable[Any]], inputs: list[ModelInput], where: str) -> list[Feed]:
    try:
        produced = fn()
        items = list(produced)
    except Exception as exc:
        raise InvalidInputError(f"calibration function {where} failed: {type(exc).__name__}: {exc}") from exc
    feeds: list[Feed] = []
    for k, item in enumerate(items):
        if isinstance(item, dict):
            feeds.append({str(n): np.asarray(v) for n, v in item.items()})
        elif len(inputs) == 1 and isinstance(item, (np.ndarray, list, tuple)):
            feeds.append({inputs[0].name: np.asarray(item)})
        else:
            raise InvalidInputError(
                f"calibration function {where} yielded a {type(item).__name__} as feed {k}; expected a dict "
                f"{{input name: array}}"
            )
    return feeds


def _random_feeds(inputs: list[ModelInput], count: int, batch: int, seed: int, dim_sizes: dict[str, int]) -> list[Feed]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for inp in inputs:
            shape = []
            for i, d in enumerate(inp.shape):
                if isinstance(d, int):
                    shape.append(d)
                elif isinstance(d, str) and d in dim_sizes:
                    shape.append(dim_sizes[d])
                else:
                    shape.append(batch if i == 0 else DEFAULT_DYNAMIC_DIM)
            if np.issubdtype(inp.dtype, np.integer) and "mask" in inp.name.lower():
                feed[inp.name] = np.ones(shape, dtype=inp.dtype)
            else:
                feed[inp.name] = random_array(rng, tuple(shape), inp.dtype)
        feeds.append(feed)
    return feeds


# --------------------------------------------------------------------------------------------------------------
# Validation


def validate_feeds(feeds: list[Feed], inputs: list[ModelInput], source: str) -> None:
    """Raise :class:`InvalidInputError` for the first feed that does not fit the model's inputs."""
    if not feeds:
        raise InvalidInputError(f"calibration data {source} is empty: it holds no feeds")
    expected = {i.name: i for i in inputs}
    for k, feed in enumerate(feeds):
        where = f"feed {k} of {source}"
        missing = [n for n in expected if n not in feed]
        if missing:
            raise InvalidInputError(
                f"{where} lacks model input(s) {', '.join(missing)}",
                hint=f"the model's inputs are: {', '.join(i.describe() for i in inputs)}",
            )
        extra = sorted(set(feed) - set(expected))
        if extra:
            raise InvalidInputError(
                f"{where} has name(s) {', '.join(extra)} that are not model inputs",
                hint=f"the model's inputs are: {', '.join(i.describe() for i in inputs)}",
            )
        axis_sizes: dict[str, tuple[int, str]] = {}
        for name, inp in expected.items():
            arr = feed[name]
            if not isinstance(arr, np.ndarray):
                raise InvalidInputError(f"{where}: input '{name}' is a {type(arr).__name__}, not a numpy array")
            if arr.dtype != inp.dtype:
                raise InvalidInputError(
                    f"{where}: input '{name}' is {arr.dtype}, the model expects {inp.dtype}",
                    hint=f"convert it with array.astype(numpy.{inp.dtype})",
                )
            if arr.ndim != inp.rank:
                raise InvalidInputError(
                    f"{where}: input '{name}' has shape {arr.shape} (rank {arr.ndim}); the model expects "
                    f"{inp.describe()} (rank {inp.rank})"
                )
            if arr.size == 0:
                raise InvalidInputError(f"{where}: input '{name}' is empty (shape {arr.shape})")
            for axis, (want, got) in enumerate(zip(inp.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise InvalidInputError(
                        f"{where}: input '{name}' has size {got} on axis {axis}; the model fixes it to {want} "
                        f"({inp.describe()})"
                    )
                if isinstance(want, str):
                    seen = axis_sizes.setdefault(want, (got, name))
                    if seen[0] != got:
                        raise InvalidInputError(
                            f"{where}: axis '{want}' is {seen[0]} in input '{seen[1]}' but {got} in input '{name}'"
                        )
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = int(np.count_nonzero(~np.isfinite(arr)))
                raise InvalidInputError(
                    f"{where}: input '{name}' has {bad} NaN/Inf value(s); calibration data must be finite"
                )
