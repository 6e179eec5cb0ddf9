"""The runtime plugin interface: load a model file, run feeds, describe I/O."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  #: ints, axis names or None for unknown


class Session(ABC):
    @property
    @abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]: ...


class Runtime(ABC):
    name: ClassVar[str]

    @abstractmethod
    def load(self, model_path: str | Path, *, threads: int | None = None) -> Session: ...
