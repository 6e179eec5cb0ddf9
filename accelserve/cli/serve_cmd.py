"""``accelserve serve REPO``: run a model repository on the real tritonserver until Ctrl-C / SIGTERM.

"Ready" (the banner, ``--ready-file``) is only announced once *this* tritonserver is ready (see TritonServer:
its own id and log lines), never because another server answers on the port. SIGINT and SIGTERM (installed by
``accelserve.cli.main`` for every command, also when a script started ``serve &`` with SIGINT ignored) stop the
server and its stubs, remove its temporary files, and exit 0: a requested stop is how serving ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from accelserve.errors import interruption_reason

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
    p.add_argument("--ready-file", metavar="PATH",
                   help="once this server and its models are ready, write its endpoints here as JSON (http, grpc, "
                   "metrics URLs, pids, models), atomically; removed again on stop. For scripts: wait for the file")
    _add_model_control_args(p)
    p.set_defaults(func=run)


def _add_model_control_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model control (as Triton's --model-control-mode, --load-model, --exit-on-error)")
    g.add_argument("--model-control", choices=["none", "poll", "explicit"], default="none",
                   help="none: load every model at start (default); poll: also load models and versions added to "
                   "REPO while serving (e.g. by `accelserve repo add`); explicit: load only --load-model models, "
                   "others through the load/unload API")
    g.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="with --model-control explicit: a model to load at start (repeatable; '*' = all)")
    g.add_argument("--poll-interval", type=float, default=2.0, metavar="S",
                   help="with --model-control poll: seconds between repository scans (default 2)")
    g.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="--strict (default): a model that fails to load at start stops the server, as Triton's "
                   "--exit-on-error; --no-strict: serve the models that loaded and report each failure")


def _model_control(args: argparse.Namespace):  # noqa: ANN202 - ModelControl, imported lazily
    from accelserve.triton.model_control import ModelControl

    return ModelControl(mode=args.model_control, load_models=tuple(args.load_model), strict=args.strict,
                        poll_interval=args.poll_interval)


def run(args: argparse.Namespace) -> int:
    from accelserve.triton.server import TritonServer

    ready_file = Path(args.ready_file).expanduser().resolve() if args.ready_file else None
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a file left by an earlier run must not announce this one
    server = TritonServer(
        args.repository,
        http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        host=args.host, tritonserver=args.tritonserver, timeout=args.timeout,
        log_verbose=args.log_verbose, log_file=args.log_file, model_control=_model_control(args),
    )
    try:
        print(f"starting tritonserver on {server.repository} ...", flush=True)
        with server:
            for left in server.removed_leftovers:
                print(f"removed the temporary directory of a killed server: {left.describe()}")
            _print_banner(server)
            if ready_file is not None:
                _write_ready_file(ready_file, server)
            watch = _model_watcher(server)
            while True:
                server.check_alive()  # raises, quoting the log, if tritonserver died
                watch()
                time.sleep(0.5)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (accelserve.errors.Terminated): the normal way to stop
        from accelserve import stop

        stop.reset()  # this stop is handled: serving ends with 0, not as an interrupted command
        print(f"{interruption_reason(exc)}: stopping tritonserver ...", file=sys.stderr, flush=True)
        server.stop()
        print("stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)


def _write_ready_file(path: Path, server: TritonServer) -> None:
    """The endpoints as JSON, written atomically (a reader sees the whole file or none)."""
    data = {
        "http": server.http_url, "grpc": server.grpc_url, "metrics": server.metrics_url,
        "pid": os.getpid(), "tritonserver_pid": server.pid, "server_id": server.server_id,
        "log": str(server.log_path), "models": [
            {"name": m.name, "version": m.version, "state": m.state} for m in server.models()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"ready file: {path}", flush=True)


def _model_watcher(server: TritonServer):  # noqa: ANN202 - a callable
    """Under poll/explicit control, a function that prints each change of the repository index (a new version
    READY, a failed load with Triton's reason, an unload), checked every poll interval."""
    from accelserve.errors import ServerError
    from accelserve.triton.model_control import index_changes, index_snapshot, load_failures

    if server.control.mode == "none":
        return lambda: None
    state = {"index": index_snapshot(server.models()), "next": time.monotonic() + server.control.poll_interval}

    def watch() -> None:
        if time.monotonic() < state["next"]:
            return
        state["next"] = time.monotonic() + server.control.poll_interval
        try:
            index = index_snapshot(server.models())
        except ServerError:
            return  # shutting down, or a transient failure: the liveness check reports a dead server
        for line in index_changes(state["index"], index, load_failures(server.log_text())):
            print(line, flush=True)
        state["index"] = index

    return watch


def _print_banner(server: TritonServer) -> None:
    print(f"Triton Inference Server is ready ({server.install.binary if server.install else '?'})")
    print(f"  HTTP     {server.http_url}")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  {server.metrics_url}")
    print(f"  log      {server.log_path}")
    control = server.control
    print(f"model control: {control.mode}" + (f" (repository scanned every {control.poll_interval:g} s)"
                                              if control.mode == "poll" else "")
          + ("" if control.strict else ", not strict: models that fail to load are reported, the rest served"))
    print("models:")
    for model in server.models():
        if model.name in server.failed_models and model.state != "READY":
            continue  # listed below with its reason
        line = f"  {model.name} (version {model.version}) {model.state}" if model.version or model.state \
            else f"  {model.name} not loaded (POST /v2/repository/models/{model.name}/load loads it)"
        if model.name in server.stand_ins:
            line += "  [ONNX Runtime stand-in on the python backend: the onnxruntime backend is not installed]"
        print(line)
    for name, reason in server.failed_models.items():
        print(f"  {name} FAILED TO LOAD: {reason}")
    print("Press Ctrl-C to stop.", flush=True)
