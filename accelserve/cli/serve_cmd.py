"""``accelserve serve REPO``: run a model repository on the real tritonserver until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelserve.triton.server import TritonServer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a Triton model repository on the local tritonserver (from nvidia-pytriton)",
        description="Start the real Triton Inference Server on REPO and wait for Ctrl-C. Models whose backend is not "
        "available locally (onnxruntime, tensorrt ship only in NVIDIA's containers) run through accelserve's "
        "ONNX Runtime stand-in on Triton's python backend; the repository itself is not changed.",
    )
    p.add_argument("repository", metavar="REPO", help="model repository (one subdirectory per model)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--tritonserver", metavar="PATH",
                   help="tritonserver binary of a full Triton install (default: the one in nvidia-pytriton)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the models to load (default 120)")
    p.add_argument("--log-verbose", type=int, default=0, metavar="N", help="Triton's verbose log level (default 0)")
    p.add_argument("--log-file", metavar="PATH", help="keep the server log here (default: a temporary file)")
    p.set_defaults(func=run)


class _Terminated(Exception):
    """SIGTERM arrived."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def run(args: argparse.Namespace) -> int:
    from accelserve.triton.server import TritonServer

    server = TritonServer(
        args.repository,
        http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        host=args.host, tritonserver=args.tritonserver, timeout=args.timeout,
        log_verbose=args.log_verbose, log_file=args.log_file,
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        print(f"starting tritonserver on {server.repository} ...", flush=True)
        with server:
            _print_banner(server)
            while True:
                server.check_alive()  # raises, quoting the log, if tritonserver died
                time.sleep(0.5)
    except (KeyboardInterrupt, _Terminated):
        print("stopping tritonserver ...", file=sys.stderr, flush=True)
        server.stop()
        print("stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_banner(server: TritonServer) -> None:
    print(f"Triton Inference Server is ready ({server.install.binary if server.install else '?'})")
    print(f"  HTTP     {server.http_url}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_path}")
    print("models:")
    for model in server.models():
        line = f"  {model.name} (version {model.version}) {model.state}"
        if model.name in server.stand_ins:
            line += "  [ONNX Runtime stand-in on the python backend: the onnxruntime backend is not installed]"
        print(line)
    print("Press Ctrl-C to stop.", flush=True)
