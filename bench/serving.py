"""Serving benchmark: the same ONNX model in-process under ONNX Runtime vs through the local Triton server over HTTP
and gRPC, at batch 1 and 32, concurrency 1 and 16. Prints p50/p99 latency and throughput and writes
bench/results/serving.json with the machine it ran on.

    .venv/bin/python bench/serving.py            # 5 s per cell
    .venv/bin/python bench/serving.py --quick    # 1 s per cell (smoke test only)

Each cell: a warm-up (excluded), then N client threads send back-to-back requests for the measurement window.
Latency is per request (a request carries `batch` samples); throughput is samples per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cell(make_call: Callable[[], Callable[[], None]], concurrency: int, seconds: float, warmup: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]
    measuring = threading.Event()

    def worker(i: int) -> None:
        call = make_call()
        start_gate.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            call()
            if measuring.is_set():
                latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    stop_at[0] = float("inf")
    for t in threads:
        t.start()
    start_gate.wait()
    time.sleep(warmup)
    measuring.set()
    t_begin = time.perf_counter()
    stop_at[0] = t_begin + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_begin
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    return {"requests": int(lat.size), "seconds": elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "requests_per_s": lat.size / elapsed}


def docs_table(rows: list[dict], model: str, seconds: float) -> str:
    from bench.common import machine

    m = machine()
    lines = [f"Model: {model}. {seconds:.0f} s per cell after a warm-up; latency per request, throughput in samples/s. "
             f"Machine: {m.get('model', '?')}, {m.get('cores', '?')} cores, ONNX Runtime {m.get('onnxruntime', '?')}; Triton from nvidia-pytriton, the model "
             "served by the ONNX Runtime stand-in (python backend) with dynamic batching.", "",
             "| path | batch | concurrency | p50 ms | p99 ms | samples/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['batch']} | {r['concurrency']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['samples_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s cells: a smoke test, not a measurement")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    warmup = 0.5 if args.quick else 1.0

    from accelserve.examples import EXAMPLES, example_input_specs
    from accelserve.exporters.base import ExportOptions
    from accelserve.exporters.torch_exporter import TorchExporter
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
    from accelserve.triton.client import TritonClient
    from accelserve.triton.config import TritonModelOptions
    from accelserve.triton.repository import add_model
    from accelserve.triton.server import TritonServer

    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source, _ = EXAMPLES["small_cnn"]
        specs = example_input_specs("small_cnn")
        model = Path(tmp) / "small_cnn.onnx"
        TorchExporter().export(source, specs, model, ExportOptions(verify=False))
        add_model(model, Path(tmp) / "repo", "small_cnn", TritonModelOptions(max_batch_size=32))
        rng = np.random.default_rng(0)
        session = OnnxRuntimeSession(model)
        with TritonServer(Path(tmp) / "repo") as server:
            for batch in batches:
                feed = {s.name: s.random(rng, {"batch": batch}) for s in specs}
                out_names = [o.name for o in session.outputs]
                makers = {
                    "onnxruntime (in-process)": lambda: (lambda: session.run(feed)),
                    "triton http": lambda: (lambda c=TritonClient(server.http_url): c.infer("small_cnn", feed, out_names)),
                    "triton grpc": lambda: (lambda c=TritonClient(server.grpc_url): c.infer("small_cnn", feed, out_names)),
                }
                for concurrency in concurrencies:
                    for path, make_call in makers.items():
                        cell = run_cell(make_call, concurrency, seconds, warmup)
                        cell.update(path=path, batch=batch, concurrency=concurrency,
                                    samples_per_s=cell["requests_per_s"] * batch)
                        rows.append(cell)
                        print(f"{path:<26} batch={batch:<3} conc={concurrency:<3} p50={cell['p50_ms']:8.2f} ms "
                              f"p99={cell['p99_ms']:8.2f} ms  {cell['samples_per_s']:9.1f} samples/s", flush=True)
    from bench.common import write_docs_section, write_result

    model = "the bundled example small_cnn (3x32x32 fp32, accelserve.examples)"
    path = write_result("serving", {"benchmark": "serving", "model": model, "quick": args.quick,
                                    "seconds_per_cell": seconds, "rows": rows})
    print(f"wrote {path}")
    if args.write_docs:
        write_docs_section("serving", docs_table(rows, model, seconds), "Serving: in-process ONNX Runtime vs Triton")
    return 0


if __name__ == "__main__":
    sys.exit(main())
