"""The stage cache under the work dir, after Olive's: a stage's key is a hash of everything it depends on (input
bytes or the key of the stage that produced its input, its config, data fingerprints, package versions), so keys
chain and an upstream change invalidates every later stage.

Layout: ``WORK/cache/<stage>/<key>/result.json`` plus the stage's files. An entry is written into a temporary
directory and renamed into place, so an interrupted run leaves finished entries and no half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: packages whose version is part of every key
_PACKAGES = ("accelserve", "onnx", "onnxruntime", "numpy", "onnxslim")


def hash_dict(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_path(path: str | Path) -> str:
    """A file's bytes, or a directory's entries (names and bytes, sorted)."""
    p = Path(path)
    if p.is_file():
        return hash_file(p)
    digest = hashlib.sha256()
    for sub in sorted(q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
        digest.update(str(sub.relative_to(p)).encode())
        digest.update(hash_file(sub).encode())
    return digest.hexdigest()


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in _PACKAGES + extra:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class StageCache:
    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = root
        self.enabled = enabled

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stored result (with ``_dir``: the entry's directory), or None."""
        if not self.enabled:
            return None
        path = self.entry(stage, key) / "result.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        data["_dir"] = str(path.parent)
        return data

    def begin(self, stage: str, key: str) -> Path:
        """A fresh directory to build the entry in; :meth:`commit` moves it into place."""
        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{key}.", dir=parent))

    def commit(self, stage: str, key: str, staging: Path, result: dict[str, Any]) -> Path:
        (staging / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str),
                                             encoding="utf-8")
        final = self.entry(stage, key)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        return final

    def abort(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
