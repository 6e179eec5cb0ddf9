"""``accelserve demo``: the whole spine on a bundled example, printing each step.

export (PyTorch → ONNX) → verify against PyTorch → add to a Triton model repository → validate it → start the real
tritonserver → infer over HTTP and gRPC and compare with local ONNX Runtime → concurrent requests, showing Triton's
dynamic batcher at work → stop the server.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from accelserve.errors import VerificationError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run export → verify → repository → Triton → infer on a bundled example model")
    p.add_argument("--example", default="small_cnn", choices=["small_cnn", "tiny_encoder"],
                   help="bundled example model (default: small_cnn)")
    p.add_argument("--repo", default="model_repository", help="model repository to write (default: model_repository)")
    p.add_argument("--name", help="model name in the repository (default: the example's name)")
    p.add_argument("--work-dir", help="where the exported ONNX file goes (default: a temporary directory)")
    p.add_argument("--requests", type=int, default=64, help="concurrent requests sent to show batching (default 64)")
    p.set_defaults(func=run)


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/7] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="accelserve-demo-") as tmp:
        return _run(args, Path(args.work_dir) if args.work_dir else Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> int:
    from accelserve.examples import EXAMPLES, example_input_specs
    from accelserve.exporters.base import ExportOptions
    from accelserve.exporters.torch_exporter import TorchExporter
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
    from accelserve.triton.client import TritonClient
    from accelserve.triton.config import TritonModelOptions
    from accelserve.triton.repository import add_model
    from accelserve.triton.server import TritonServer
    from accelserve.triton.validate import validate_repository
    from accelserve.verify import compare_arrays, tolerance_for

    name = args.name or args.example
    source, _ = EXAMPLES[args.example]
    specs = example_input_specs(args.example)
    onnx_path = work / f"{args.example}.onnx"

    _step(1, f"export {source} with torch.onnx (dynamo) → {onnx_path}")
    result = TorchExporter().export(source, specs, onnx_path, ExportOptions(verify=True))
    for msg in result.messages:
        print(f"  {msg}")

    _step(2, "verify the ONNX model against PyTorch (sample input + random inputs of other batch sizes)")
    print("  " + result.verification.table().replace("\n", "\n  "))

    _step(3, f"add to the Triton model repository {args.repo} as '{name}'")
    added = add_model(onnx_path, args.repo, name, TritonModelOptions())
    if added.identical_to is not None:
        print(f"  version {added.identical_to} already holds this model (identical bytes): no version added")
    else:
        print(f"  wrote {added.version_dir} and {added.config_path}")
    print("  " + added.config_text.strip().replace("\n", "\n  "))

    _step(4, f"validate {args.repo}")
    problems = validate_repository(args.repo)
    for p in problems:
        print(f"  problem: {p}")
    if problems:
        raise VerificationError(f"the repository {args.repo} has {len(problems)} problem(s); see above")
    print("  no problems")

    _step(5, "start the real tritonserver (from nvidia-pytriton) on 127.0.0.1")
    t0 = time.perf_counter()
    with TritonServer(args.repo) as server:
        print(f"  ready in {time.perf_counter() - t0:.1f}s: HTTP {server.http_url}, gRPC {server.grpc_url}")
        for model, changes in server.stand_ins.items():
            print(f"  '{model}': no native onnxruntime backend here, served by the ONNX Runtime stand-in "
                  f"(python backend; {'; '.join(changes)})")

        _step(6, "infer over HTTP and gRPC; compare with local ONNX Runtime")
        rng = np.random.default_rng(0)
        feeds = {s.name: s.random(rng, {"batch": 4}) for s in specs}
        local = OnnxRuntimeSession(added.files[0]).run(feeds)
        tol = tolerance_for("fp32")
        ok = True
        for url in (server.http_url, server.grpc_url):
            with TritonClient(url) as client:
                remote = client.infer(name, feeds)
            for out, expected in local.items():
                cmp = compare_arrays(out, remote[out], expected, tol)
                ok &= cmp.passed
                print(f"  {url.split(':')[0]:<5} {out} {tuple(remote[out].shape)}: max_abs_err={cmp.max_abs_error:.2e} "
                      f"cosine={cmp.cosine:.6f} {'PASS' if cmp.passed else 'FAIL'}")

        _step(7, f"{args.requests} concurrent single-sample requests over gRPC (Triton's dynamic batcher)")
        before = _counts(server.grpc_url, name)
        one = {s.name: s.random(rng, {"batch": 1}) for s in specs}

        def send(_: int) -> None:
            with TritonClient(server.grpc_url) as c:
                c.infer(name, one)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(send, range(args.requests)))
        elapsed = time.perf_counter() - t0
        after = _counts(server.grpc_url, name)
        inferences, executions = after[0] - before[0], after[1] - before[1]
        print(f"  {inferences} inferences in {executions} model executions "
              f"({inferences / max(executions, 1):.2f} requests per execution) in {elapsed:.2f}s")
    print("\nserver stopped. Done: the model is in", Path(args.repo).resolve() / name)
    if not ok:
        raise VerificationError("Triton's outputs differ from local ONNX Runtime beyond tolerance (see above)")
    return 0


def _counts(url: str, model: str) -> tuple[int, int]:
    from accelserve.triton.client import TritonClient

    with TritonClient(url) as client:
        stats = client.statistics(model)["model_stats"]
    inference = sum(int(s.get("inference_count", 0)) for s in stats)
    execution = sum(int(s.get("execution_count", 0)) for s in stats)
    return inference, execution
