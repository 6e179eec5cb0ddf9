"""The model artifact that every exporter, pass and repository writer passes along."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from accelserve.onnx_io import external_data_files, load_onnx, read_onnx


@dataclass(frozen=True)
class ModelArtifact:
    """An ONNX model on disk (the ``.onnx`` file plus any external-data files beside it) and what is known of it.

    Artifacts are immutable: a pass returns a new artifact at a new path and records itself in ``history``.
    """

    path: Path
    source_framework: str = "onnx"
    precision: str = "fp32"
    history: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def from_onnx(cls, path: str | Path, *, check: bool = True, **kwargs: Any) -> "ModelArtifact":
        """Open an existing ``.onnx`` file; with ``check`` run the ONNX checker and shape inference on it."""
        if check:
            load_onnx(path, check=True)
        return cls(Path(path), **kwargs)

    def derive(self, path: str | Path, step: str, **changes: Any) -> "ModelArtifact":
        """The artifact a pass produced from this one."""
        meta = {**self.metadata, **changes.pop("metadata", {})}
        return replace(self, path=Path(path), history=(*self.history, step), metadata=meta, **changes)

    def load(self, *, load_external_data: bool = True) -> onnx.ModelProto:
        return read_onnx(self.path, load_external_data=load_external_data)

    def files(self) -> list[Path]:
        """The model file and its external-data files (a TensorRT engine, ``.plan``, is one file)."""
        if self.path.suffix in (".plan", ".engine"):
            return [self.path]
        header = read_onnx(self.path, load_external_data=False)
        return [self.path, *external_data_files(header, self.path.parent)]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def sha256(self) -> str:
        """Digest over the model file and its external data (names and bytes), so any change shows."""
        digest = hashlib.sha256()
        for f in self.files():
            digest.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def copy_to(self, directory: str | Path, filename: str = "model.onnx") -> "ModelArtifact":
        """Copy the model and its external data into ``directory`` under ``filename``.

        External data keeps its relative location, which the model file refers to by name.
        """
        target_dir = Path(directory)
        target_dir.mkdir(parents=True, exist_ok=True)
        files = self.files()
        shutil.copy2(files[0], target_dir / filename)
        for extra in files[1:]:
            rel = extra.relative_to(self.path.parent)
            (target_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, target_dir / rel)
        return replace(self, path=target_dir / filename)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source_framework": self.source_framework,
            "precision": self.precision,
            "history": list(self.history),
            "size_bytes": self.size_bytes(),
            "sha256": self.sha256(),
            "metadata": json.loads(json.dumps(self.metadata, default=str)),
        }
