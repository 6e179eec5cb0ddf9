"""``python -m accelserve.evaluate._memory_probe MODEL FEED.npz THREADS RUNS``: prints, as JSON, the resident memory
of this fresh process before the ONNX Runtime session exists (``baseline``: Python + numpy + onnxruntime + the
feed) and its peak while the session loads and runs (``peak``).

On Linux the kernel's peak-RSS counter (VmHWM) is reset to the current RSS just before the session is created
(``/proc/self/clear_refs``), so ``peak`` is the peak *after* the baseline and never a left-over of the imports;
elsewhere (or where that file cannot be written) ``peak`` is ``ru_maxrss`` and ``method`` says so.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main() -> None:
    model, feed_file, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    import numpy as np
    import onnxruntime as ort

    with np.load(feed_file, allow_pickle=False) as npz:
        feed = {k: npz[k] for k in npz.files}
    gc.collect()
    reset = _reset_peak()
    rss = _status_kib("VmRSS")
    baseline = rss * 1024 if rss is not None else _ru_maxrss_bytes()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for _ in range(max(1, runs)):
        session.run(None, feed)
    hwm = _status_kib("VmHWM") if reset else None
    peak = hwm * 1024 if hwm is not None else _ru_maxrss_bytes()
    print(json.dumps({"baseline": baseline, "peak": peak, "method": "vmhwm-reset" if reset else "ru_maxrss"}))


if __name__ == "__main__":
    main()
