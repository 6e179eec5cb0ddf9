"""``python -m accelserve.evaluate._memory_probe MODEL FEED.npz THREADS RUNS``: prints peak RSS as JSON."""

from __future__ import annotations

import json
import resource
import sys


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    model, feed_file, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    import numpy as np
    import onnxruntime as ort

    with np.load(feed_file) as npz:
        feed = {k: npz[k] for k in npz.files}
    baseline = _max_rss_bytes()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for _ in range(max(1, runs)):
        session.run(None, feed)
    print(json.dumps({"baseline": baseline, "peak": _max_rss_bytes()}))


if __name__ == "__main__":
    main()
