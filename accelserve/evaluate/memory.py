"""Peak resident memory of an ONNX Runtime session running a model, measured in a fresh process so nothing else
in this process counts.

``session_bytes`` (peak minus baseline) is the figure to compare between models: the baseline (interpreter, numpy,
onnxruntime, the feed) is the same for every model. The probe resets the kernel's peak counter after the imports
(see :mod:`accelserve.evaluate._memory_probe`), so a small model's peak is not hidden under the imports' peak.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError


@dataclass(frozen=True)
class MemoryStats:
    peak_rss_bytes: int  #: peak resident set of the measuring process while loading and running the model
    baseline_rss_bytes: int  #: the same process just before the session was created (Python + numpy + onnxruntime)
    method: str = "vmhwm-reset"  #: "vmhwm-reset" (peak after the baseline) or "ru_maxrss" (peak of the whole process)

    @property
    def session_bytes(self) -> int:
        return max(0, self.peak_rss_bytes - self.baseline_rss_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "session_bytes": self.session_bytes}


def peak_memory(model_path: str | Path, feeds: list[dict[str, np.ndarray]], threads: int | None = None,
                runs: int = 3) -> MemoryStats:
    """Load ``model_path`` in a new Python process, run the first feed ``runs`` times, and report its peak RSS and
    the RSS just before the session was created."""
    if not feeds:
        raise InvalidInputError("no data to run the model with for the memory measurement")
    with tempfile.TemporaryDirectory(prefix="accelserve-mem-") as tmp:
        feed_file = Path(tmp) / "feed.npz"
        np.savez(feed_file, **feeds[0])
        cmd = [sys.executable, "-m", "accelserve.evaluate._memory_probe", str(model_path), str(feed_file),
               str(threads or 0), str(runs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise InvalidInputError(
            f"measuring the memory of {model_path} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
        )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return MemoryStats(peak_rss_bytes=int(data["peak"]), baseline_rss_bytes=int(data["baseline"]),
                       method=str(data.get("method", "ru_maxrss")))
