"""Is `accelserve loadtest` measuring right? The same endpoint, the same request, the same concurrency, measured by
accelserve's Locust users and by an independent tool, wrk (C, epoll) with bench/wrk_kserve.lua.

    .venv/bin/python bench/loadtest_vs_wrk.py                  # concurrency 1,4,16, 10 s windows, ABBA order
    .venv/bin/python bench/loadtest_vs_wrk.py --write-docs     # ... and put the table into docs/benchmarks.md
    .venv/bin/python bench/loadtest_vs_wrk.py --model trivial --tools http,http-tritonclient,wrk,grpc  # senders
    .venv/bin/python bench/loadtest_vs_wrk.py --quick          # smoke run: concurrency 1, 2 s, once
    .venv/bin/python bench/loadtest_vs_wrk.py --url http://HOST:8000 --model NAME   # another server/model

Without --url it serves a model on the local tritonserver: by default ``compute`` (x: batch x 512, two 512x512
matrix products per sample: milliseconds of server work for a 1 KB request), or ``--model trivial`` (sub-millisecond:
then a closed loop at low concurrency measures the Python client's own per-request cost as much as the server's,
and the two tools cannot agree; see bench/locust_capacity.py for that cost). The request body wrk posts is produced by tritonclient's own encoder from the same shapes and dtypes, so both tools send the
same bytes over HTTP/1.1 keep-alive connections (one per concurrent request). Each tool runs a warm-up (excluded),
then a fixed window; the pair runs in A-B-B-A order so drift on a shared machine hits both alike. With a local
server and more than one core, the server is pinned to the first core and both load generators to the others.
Throughputs should agree within 15% while the Locust process is not CPU-bound (its CPU is printed); latencies differ
by the Python client's own per-request cost, which wrk does not have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section, write_result  # noqa: E402

DOC = ROOT / "docs" / "loadtest.md"
LUA = ROOT / "bench" / "wrk_kserve.lua"
AGREEMENT = 0.15


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def trivial_model(path: Path) -> Path:
    """y = relu(x @ W + b), x: batch x 4: the server answers in a fraction of a millisecond."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["pre"]),
         helper.make_node("Relu", ["pre"], ["y"])],
        "trivial",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")],
    )
    return _save(graph, path)


def compute_model(path: Path, dim: int = 512, layers: int = 2) -> Path:
    """A small request (x: batch x dim) that costs the server real work: x is broadcast to dim x dim and goes
    through ``layers`` dim x dim matrix products (about 2 * layers * dim^3 FLOPs per sample)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.zeros((dim, dim), np.float32), "Z"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"]),  # batch x 1 x dim
             helper.make_node("Add", ["x3", "Z"], ["h0"])]  # batch x dim x dim
    for i in range(layers):
        w = rng.standard_normal((dim, dim)).astype(np.float32) / np.sqrt(dim)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["y"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes, "compute",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )
    return _save(graph, path)


MODELS = {"trivial": trivial_model, "compute": compute_model}


def pin_process_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` and of its descendants (Triton's python-backend stubs) to ``cpus``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)


def client_prefix() -> list[str]:
    """Run the load generators off core 0 (the server's, see endpoint()) when there is more than one core."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(map(str, cores[1:]))]


@contextlib.contextmanager
def endpoint(url: str | None, model: str) -> Iterator[dict[str, str]]:
    """Yield {"http": url, "grpc": url or "", "model": name}: the given server, or one of MODELS served on the
    local tritonserver."""
    if url:
        yield {"http": url, "grpc": "", "model": model}
        return
    if model not in MODELS:
        raise SystemExit(f"--model {model}: without --url, pick one of {', '.join(MODELS)}")
    from accelserve.triton.config import TritonModelOptions
    from accelserve.triton.repository import add_model
    from accelserve.triton.server import TritonServer

    with tempfile.TemporaryDirectory(prefix="bench-loadtest-") as tmp:
        repo = Path(tmp) / "repo"
        onnx_path = MODELS[model](Path(tmp) / f"{model}.onnx")
        add_model(onnx_path, repo, model, TritonModelOptions(max_batch_size=8))
        with TritonServer(repo) as server:
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) > 1 and server.pid is not None:
                # the server on the first core, the load generators on the others: on a small machine a client's
                # CPU would otherwise come out of the server's throughput, and wrk (C) uses less than Locust
                pin_process_tree(server.pid, {cores[0]})
            yield {"http": server.http_url, "grpc": server.grpc_url, "model": model}


def request_body(url: str, model: str, batch: int, directory: Path) -> tuple[Path, int]:
    """The binary KServe-v2 request the accelserve users send (accelserve.loadtest.encoding), written for wrk."""
    from accelserve.loadtest.encoding import encode_http
    from accelserve.loadtest.plan import build_plan, payloads
    from accelserve.triton.client import TritonClient

    with TritonClient(url) as client:
        plan = build_plan(client, model, batch=batch)
    request = encode_http(plan, payloads(plan, count=1)[0])
    path = directory / "body.bin"
    path.write_bytes(request.body)
    return path, int(request.headers.get("Inference-Header-Content-Length", len(request.body)))


def grpc_body(url: str, model: str, batch: int, directory: Path) -> Path:
    """The serialized ModelInferRequest the accelserve gRPC users send, framed as one gRPC message (1 byte
    compression flag 0, 4 bytes big-endian length), for h2load."""
    from accelserve.loadtest.encoding import encode_grpc
    from accelserve.loadtest.plan import build_plan, payloads
    from accelserve.triton.client import TritonClient

    with TritonClient(url) as client:
        plan = build_plan(client, model, batch=batch)
    message = encode_grpc(plan, payloads(plan, count=1)[0])
    path = directory / "grpc_body.bin"
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


def _server_successes(http_url: str, model: str) -> int:
    from accelserve.loadtest.server_stats import parse_statistics
    from accelserve.triton.client import TritonClient

    with TritonClient(http_url) as client:
        return parse_statistics(client.statistics(model), model).success_count


def run_h2load(served: dict[str, str], model: str, body: Path, concurrency: int, seconds: int, warmup: int) -> dict:
    """h2load (nghttp2's C load generator, HTTP/2) posting the gRPC-framed request on ``concurrency`` connections
    with one stream each. h2load does not read gRPC trailers, so successes are Triton's own count over the run."""
    host_port = served["grpc"].split("://", 1)[-1]
    cmd = [*client_prefix(), "h2load", "-c", str(concurrency), "-m", "1", "-t", "1", "-D", str(seconds),
           f"--warm-up-time={warmup}" if warmup else "--warm-up-time=0", "-d", str(body),
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://{host_port}/inference.GRPCInferenceService/ModelInfer"]
    before = _server_successes(served["http"], model)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + warmup + 30)
    after = _server_successes(served["http"], model)
    done = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", proc.stdout)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", proc.stdout)
    if not done or not mean:
        raise RuntimeError(f"h2load printed no result:\n{proc.stdout}\n{proc.stderr}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[mean.group(2)]
    return {"requests_per_s": float(done.group(3)), "mean_ms": float(mean.group(1)) * scale,
            "p50_ms": None, "p99_ms": None, "server_successes": after - before}


def run_wrk(url: str, model: str, body: Path, json_size: int, concurrency: int, seconds: int, warmup: int) -> dict:
    target = f"{url.rstrip('/')}/v2/models/{model}/infer"
    env = dict(os.environ, WRK_BODY=str(body), WRK_JSON_SIZE=str(json_size))
    base = [*client_prefix(), "wrk", "-t1", f"-c{concurrency}", "--timeout", "10s", "-s", str(LUA)]
    if warmup:
        subprocess.run([*base, f"-d{warmup}s", target], env=env, capture_output=True, check=True, timeout=warmup + 30)
    proc = subprocess.run([*base, f"-d{seconds}s", "--latency", target], env=env, capture_output=True, text=True,
                          check=True, timeout=seconds + 30)
    match = re.search(r"WRK_JSON (\{.*\})", proc.stdout)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(match.group(1))
    rps = data["requests"] / (data["duration_us"] / 1e6)
    return {"requests_per_s": rps, "p50_ms": data["p50_us"] / 1e3, "p99_ms": data["p99_us"] / 1e3,
            "mean_ms": data["mean_us"] / 1e3, "errors": data["errors"], "requests": data["requests"]}


def run_accelserve(url: str, model: str, concurrency: int, seconds: int, warmup: int, directory: Path,
                   extra: list[str] | None = None, client: str = "bytes") -> dict:
    """One accelserve load test; ``client`` "bytes" (the default sender: pre-encoded requests over
    accelserve.loadtest.rawhttp / a raw gRPC call), "geventhttpclient" (the same bytes through geventhttpclient) or
    "tritonclient" (tritonclient's clients encoding every request, the sender before issue 10)."""
    out = directory / f"locust_c{concurrency}.json"
    env = dict(os.environ)
    env.pop("ACCELSERVE_LOADTEST_CLIENT", None)
    if client != "bytes":
        env["ACCELSERVE_LOADTEST_CLIENT"] = client
    cmd = [*client_prefix(), sys.executable, "-m", "accelserve", "loadtest", url, model, "--concurrency", str(concurrency),
           "--duration", str(seconds), "--warmup", str(warmup), "--json", str(out), *(extra or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 120, cwd=ROOT, check=False,
                          env=env)
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"accelserve loadtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(out.read_text())
    step = data["steps"][0]
    return {"requests_per_s": step["requests_per_s"], "p50_ms": step["latency_ms"]["p50"],
            "p99_ms": step["latency_ms"]["p99"], "mean_ms": step["latency_ms"]["avg"], "errors": step["errors"],
            "requests": step["requests"], "load_generator_cpu_percent": step["load_generator_cpu_percent"],
            "server_request_ms": (step["server"] or {}).get("request_ms"),
            "server_requests_per_s": (step["server"] or {}).get("requests", 0) / step["duration_s"]}


def mean_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and runs[0][k] is not None]
    return {k: float(np.mean([r[k] for r in runs if r.get(k) is not None])) for k in keys}


#: the measured tools: (key, column title)
TOOLS = {
    "wrk": "wrk (C) HTTP",
    "http": "accelserve HTTP",
    "http-geventhttpclient": "accelserve HTTP, geventhttpclient sender",
    "http-tritonclient": "accelserve HTTP, tritonclient sender",
    "grpc": "accelserve gRPC",
    "grpc-tritonclient": "accelserve gRPC, tritonclient sender",
    "h2load": "h2load (C) gRPC",
}


def run_tool(tool: str, served: dict[str, str], model: str, c: int, seconds: int, warmup: int, directory: Path,
             body: Path, json_size: int, workers: str | None, grpc_frame: Path | None = None) -> dict:
    if tool == "wrk":
        return run_wrk(served["http"], model, body, json_size, c, seconds, warmup)
    if tool == "h2load":
        assert grpc_frame is not None
        return run_h2load(served, model, grpc_frame, c, seconds, warmup)
    protocol, _, client = tool.partition("-")
    extra = ["--workers", workers] if workers else []
    return run_accelserve(served[protocol], model, c, seconds, warmup, directory, extra, client or "bytes")


def compare(served: dict[str, str], model: str, levels: list[int], seconds: int, warmup: int, repeat: int,
            tools: list[str], workers: str | None = None) -> list[dict]:
    """Per level, every tool ``repeat`` times in A-B-...-B-A order (reversed on odd rounds)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        directory = Path(tmp)
        body, json_size = request_body(served["http"], model, 1, directory)
        frame = grpc_body(served["http"], model, 1, directory) if "h2load" in tools else None
        for c in levels:
            runs: dict[str, list[dict]] = {t: [] for t in tools}
            for i in range(repeat):
                for tool in (tools if i % 2 == 0 else tools[::-1]):
                    runs[tool].append(run_tool(tool, served, model, c, seconds, warmup, directory, body, json_size,
                                               workers, frame))
            row = {"concurrency": c, "runs_each": repeat, "tools": {t: mean_of(r) for t, r in runs.items()}}
            for t in tools:  # HTTP tools against wrk, gRPC tools against h2load (when measured)
                ref_tool = "h2load" if t.startswith("grpc") else "wrk"
                if ref_tool in tools and t not in ("wrk", "h2load"):
                    ref = row["tools"][ref_tool]["requests_per_s"]
                    row["tools"][t]["vs_ref"] = (row["tools"][t]["requests_per_s"] - ref) / ref
            rows.append(row)
            print(format_row(row, tools), flush=True)
    return rows


def header(tools: list[str]) -> str:
    cols = " | ".join(f"{TOOLS[t]} req/s (p50 / p99 ms)" for t in tools)
    return (f"| concurrency | {cols} | generator CPU (CPU time per request) | Triton-counted (gRPC) |\n"
            f"|---:|{'---:|' * len(tools)}---:|---:|")


def format_row(r: dict, tools: list[str]) -> str:
    cells = []
    for t in tools:
        m = r["tools"][t]
        vs = f", {m['vs_ref']:+.0%}" if "vs_ref" in m else ""
        if m.get("p50_ms") is None:  # h2load: no percentiles, its mean
            cells.append(f"{m['requests_per_s']:.0f} (mean {m['mean_ms']:.2f})")
        else:
            cells.append(f"{m['requests_per_s']:.0f}{vs} ({m['p50_ms']:.2f} / {m['p99_ms']:.2f})")
    cpus = []
    for t in tools:
        m = r["tools"][t]
        cpu = m.get("load_generator_cpu_percent")
        if cpu is not None and m["requests_per_s"]:
            cpus.append(f"{t}: {cpu:.0f}% ({cpu * 1e4 / m['requests_per_s']:.0f} us/req)")
    server = [f"{r['tools'][t]['server_requests_per_s']:.0f}" for t in tools
              if t.startswith("grpc") and r["tools"][t].get("server_requests_per_s") is not None]
    if "h2load" in tools and "server_successes" in r["tools"]["h2load"]:
        server.append(f"h2load run: {r['tools']['h2load']['server_successes']:.0f} successes")
    return (f"| {r['concurrency']} | {' | '.join(cells)} | {', '.join(cpus) or '-'} | "
            f"{' / '.join(server) or '-'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an HTTP Triton URL to measure (default: serve a trivial model locally)")
    parser.add_argument("--model", default="compute",
                        help="with --url: the model's name; without: 'compute' (default; ~ms of server work per "
                        "request) or 'trivial' (sub-millisecond: shows the Python client's own cost)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool and level, in A-B-B-A order")
    parser.add_argument("--tools", default="http,wrk",
                        help=f"comma-separated, measured in this order then reversed (A-B-B-A): {', '.join(TOOLS)}")
    parser.add_argument("--workers", default=None, help="pass --workers N|auto to accelserve loadtest")
    parser.add_argument("--quick", action="store_true", help="smoke run: concurrency 1, 2 s, once; writes nothing")
    parser.add_argument("--write-docs", action="store_true", help="put the table into docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    seconds, warmup, repeat = args.seconds, args.warmup, args.repeat
    if args.quick:
        levels, seconds, warmup, repeat = [1], 2, 1, 1
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise SystemExit(f"--tools: unknown {unknown}; pick from {', '.join(TOOLS)}")
    print(header(tools), flush=True)
    load_before = os.getloadavg()[0]
    with endpoint(args.url, args.model) as served:
        model = served["model"]
        if args.url and any(t.startswith("grpc") for t in tools):
            raise SystemExit("--url serves HTTP only here: drop the grpc tools")
        rows = compare(served, model, levels, seconds, warmup, repeat, tools, args.workers)
    if args.quick:
        return 0
    info = machine()
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(load)
    result = {"load": load, "url": "local model" if not args.url else args.url, "model": model, "tools": tools,
              "seconds": seconds, "warmup": warmup, "rows": rows}
    write_result("loadtest_vs_wrk" if model == "compute" else f"loadtest_vs_wrk_{model}", result)
    if args.write_docs:
        import time

        table = "\n".join([header(tools), *(format_row(r, tools) for r in rows)])
        pinned = ""
        if client_prefix() and not args.url:
            pinned = " Server pinned to core 0, both load generators to the other cores."
        note = (f"Measured {time.strftime('%Y-%m-%d')} on {info['model']} ({info['cores']} cores, shared: {load}), {seconds} s windows "
                f"after {warmup} s warm-up, {repeat} runs per tool in A-B-B-A order, model `{model}`.{pinned}")
        write_docs_section(f"loadgen-fidelity-{model}", f"{note}\n\n{table}",
                           f"Load-generator fidelity: accelserve loadtest vs wrk, model `{model}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
