"""The training-data contract of ``accelserve train-compress --train MODULE:FN`` and of the Python API.

``FN()`` returns a :class:`TrainingData` (or a dict with the same keys):

* ``train``: a re-iterable of ``(inputs, labels)`` batches (a torch ``DataLoader`` is one). ``inputs`` is a tensor,
  or a tuple of tensors in ``forward()`` order; ``labels`` a tensor of class indices (what the task loss takes).
* ``eval``: the same, held out; the accuracy figures and the accuracy budget are measured on it.
* ``calibration`` (optional): batches of inputs (or ``(inputs, labels)``) used to initialise quantization ranges;
  default: the first batches of ``train``.
* ``input_names`` (optional): ONNX input names, one per forward() argument (default ``x``, ``x1``, ...).

Numpy arrays are accepted wherever tensors are. Nothing here imports torch until it is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accelserve._lazy import require
from accelserve.errors import InvalidInputError


@dataclass
class TrainingData:
    train: Iterable[Any]
    eval: Iterable[Any]
    calibration: Iterable[Any] | None = None
    input_names: Sequence[str] = field(default_factory=tuple)
    #: batches of calibration data used when ``calibration`` is None
    calibration_batches: int = 8

    def input_names_for(self, count: int) -> list[str]:
        if self.input_names:
            if len(self.input_names) != count:
                raise InvalidInputError(f"input_names has {len(self.input_names)} names for {count} model inputs")
            return list(self.input_names)
        return ["x"] if count == 1 else [f"x{i}" for i in range(count)]

    def calibration_inputs(self) -> Iterator[tuple[Any, ...]]:
        """Input tuples (no labels) for range initialisation and ONNX calibration."""
        if self.calibration is not None:
            for batch in self.calibration:
                yield split_batch(batch, labelled=False)[0]
            return
        for i, batch in enumerate(self.train):
            if i >= self.calibration_batches:
                return
            yield split_batch(batch)[0]


def as_tensor(value: Any) -> Any:
    torch = require("torch", "training-aware compression")
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value))


def split_batch(batch: Any, *, labelled: bool = True) -> tuple[tuple[Any, ...], Any]:
    """``(inputs tuple, labels or None)`` from one batch of the contract."""
    if labelled or (isinstance(batch, (tuple, list)) and len(batch) == 2 and _is_label(batch[1])):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InvalidInputError(
                f"a training batch must be (inputs, labels), got {type(batch).__name__}",
                hint="yield (x, y) pairs, e.g. from a torch DataLoader over a TensorDataset(x, y)")
        inputs, labels = batch
        labels = as_tensor(labels)
    else:
        inputs, labels = batch, None
    inputs = tuple(as_tensor(t) for t in inputs) if isinstance(inputs, (tuple, list)) else (as_tensor(inputs),)
    return inputs, labels


def _is_label(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and "int" in str(dtype) and getattr(value, "ndim", 0) == 1


def load_training_data(spec: Any) -> TrainingData:
    """``MODULE:FN`` / ``file.py:FN`` (called with no arguments), a callable, a dict or a TrainingData."""
    if isinstance(spec, str):
        from accelserve.calibration import resolve_callable

        spec = resolve_callable(spec, "--train")
    if callable(spec) and not isinstance(spec, TrainingData):
        spec = spec()
    if isinstance(spec, dict):
        unknown = set(spec) - {"train", "eval", "calibration", "input_names"}
        if unknown or not {"train", "eval"} <= set(spec):
            raise InvalidInputError(
                f"training data must have keys train and eval (and optionally calibration, input_names); got "
                f"{sorted(spec)}")
        spec = TrainingData(**spec)
    if not isinstance(spec, TrainingData):
        raise InvalidInputError(f"training data must be a TrainingData or a dict, got {type(spec).__name__}")
    return spec


def numpy_loader(x: np.ndarray, y: np.ndarray, batch_size: int = 64, *, shuffle: bool = True, seed: int = 0) -> Any:
    """A torch DataLoader over arrays (shuffled with a seeded generator)."""
    torch = require("torch", "training-aware compression")
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(seed) if shuffle else None)
