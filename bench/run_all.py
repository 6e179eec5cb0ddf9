"""Run every benchmark in turn (on a quiet machine: nothing else should load the CPU) and write the results into
bench/results/ and the docs (docs/benchmarks.md, docs/loadtest.md), each with the machine it ran on.

    .venv/bin/python bench/run_all.py            # full runs (tens of minutes on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # smoke runs: check that every benchmark works; figures mean nothing
    .venv/bin/python bench/run_all.py --only serving,pruning

The load-test comparison needs wrk (Debian/Ubuntu: apt-get install -y wrk); the Olive comparison needs Olive in its
own virtual environment (see bench/olive_compare.py; $ACCELSERVE_OLIVE_VENV, default /tmp/olive-venv). Without
either, that benchmark is skipped and says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: name -> (script, extra arguments for a full run)
BENCHMARKS = {
    "serving": ("serving.py", []),
    "quantization": ("quantization.py", []),
    "pruning": ("pruning.py", []),
    "training": ("training.py", []),
    "loadtest_vs_wrk": ("loadtest_vs_wrk.py", []),
    "locust_capacity": ("locust_capacity.py", []),
    "loadgen_fidelity_trivial": ("loadtest_vs_wrk.py", ["--model", "trivial", "--tools", "http,wrk,grpc,h2load"]),
    "tune_search": ("tune_search.py", []),
    "olive_compare": ("olive_compare.py", []),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs only; nothing is written to the docs")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        script, extra = BENCHMARKS[name]
        if name.startswith(("loadtest_vs_wrk", "loadgen_fidelity")) and shutil.which("wrk") is None:
            print(f"== {name}: SKIPPED, wrk is not installed (apt-get install -y wrk)", flush=True)
            continue
        olive = Path(os.environ.get("ACCELSERVE_OLIVE_VENV", "/tmp/olive-venv")) / "bin" / "olive"
        if name == "olive_compare" and not olive.exists():
            print(f"== {name}: SKIPPED, no Olive environment ({olive} missing; see bench/olive_compare.py)", flush=True)
            continue
        cmd = [sys.executable, str(BENCH / script), *(["--quick"] if args.quick else ["--write-docs", *extra])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        print(f"== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
