"""How many requests/s can one Locust process generate here? The load-generator capacity, so users know when to add
`--workers` (or machines).

    .venv/bin/python bench/locust_capacity.py                 # HTTP and gRPC, concurrency 1,4,16,64, 10 s steps
    .venv/bin/python bench/locust_capacity.py --write-docs    # ... and put the table into docs/loadtest.md
    .venv/bin/python bench/locust_capacity.py --quick         # smoke run: HTTP, concurrency 4, 2 s; writes nothing

Against a trivial model (sub-millisecond on the server) it sweeps concurrency with `accelserve loadtest` in one
Locust process and reads, per step, the requests/s and the CPU of that process (Locust's own sampling). Requests/s
divided by the fraction of a core used estimates what one process can produce with a full core. The same top step
is then run with `--workers 2`, and with wrk (HTTP) as a reference for what the server sustains: when Locust's CPU
is near 100% and wrk gets much more, the load generator is the limit.

On a small machine the server and the load generator share the cores: read the estimate per core, not the totals.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section, write_result  # noqa: E402
from bench.loadtest_vs_wrk import (  # noqa: E402
    DOC,
    client_prefix,
    endpoint,
    request_body,
    run_accelserve,
    run_wrk,
)

HEADER = ("| protocol | Locust processes | concurrency | req/s | Locust CPU (busiest process) | est. req/s per "
          "fully used core |\n|---|---:|---:|---:|---:|---:|")
#: the per-core estimate is req/s divided by the CPU used: the process's own, or (workers) the busiest worker's times
#: the number of workers


def row(protocol: str, workers: int, concurrency: int, r: dict) -> dict:
    cpu = r.get("load_generator_cpu_percent")  # with workers: the busiest one; the others are assumed alike
    per_core = r["requests_per_s"] / (cpu / 100.0 * max(workers, 1)) if cpu else None
    return {"protocol": protocol, "workers": workers, "concurrency": concurrency, **r, "per_core_estimate": per_core}


def fmt(r: dict) -> str:
    cpu = r.get("load_generator_cpu_percent")
    est = r.get("per_core_estimate")
    procs = r["workers"] or 1
    return (f"| {r['protocol']} | {procs} | {r['concurrency']} | {r['requests_per_s']:.0f} | "
            f"{'-' if cpu is None else f'{cpu:.0f}%'} | {'-' if est is None else f'{est:.0f}'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--write-docs", action="store_true", help="put the table into docs/loadtest.md")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    seconds, warmup, protocols = args.seconds, args.warmup, ["http", "grpc"]
    if args.quick:
        levels, seconds, warmup, protocols = [4], 2, 1, ["http"]
    rows: list[dict] = []
    wrk_top: dict | None = None
    print(HEADER, flush=True)
    with endpoint(None, "trivial") as served, tempfile.TemporaryDirectory(prefix="bench-cap-") as tmp:
        directory = Path(tmp)
        http_url, model = served["http"], served["model"]
        for protocol in protocols:
            extra: list[str] = []
            url = served[protocol]
            for c in levels:
                rows.append(row(protocol, 0, c, run_accelserve(url, model, c, seconds, warmup, directory, extra)))
                print(fmt(rows[-1]), flush=True)
            top = levels[-1]
            r = run_accelserve(url, model, top, seconds, warmup, directory, [*extra, "--workers", "2"])
            rows.append(row(protocol, 2, top, r))
            print(fmt(rows[-1]), flush=True)
        if shutil.which("wrk"):
            body, json_size = request_body(http_url, model, 1, directory)
            wrk_top = run_wrk(http_url, model, body, json_size, levels[-1], seconds, warmup)
            print(f"wrk (HTTP, concurrency {levels[-1]}): {wrk_top['requests_per_s']:.0f} req/s", flush=True)
    if args.quick:
        return 0
    info = machine()
    write_result("locust_capacity", {"seconds": seconds, "warmup": warmup, "rows": rows, "wrk_top": wrk_top})
    if args.write_docs:
        where = ("tritonserver pinned to core 0, the load generators to the other cores" if client_prefix()
                 else "tritonserver and the load generator share the cores")
        note = (f"Measured {time.strftime('%Y-%m-%d')} on {info['model']} ({info['cores']} cores; {where}), trivial "
                f"model, {seconds} s per step after {warmup} s warm-up.")
        wrk_line = (f"\n\nwrk (HTTP, concurrency {levels[-1]}) against the same server: "
                    f"{wrk_top['requests_per_s']:.0f} req/s." if wrk_top else "")
        write_docs_section("locust-capacity", f"{note}\n\n" + "\n".join([HEADER, *(fmt(r) for r in rows)]) + wrk_line,
                           "Load-generator capacity: when to add workers", DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
