"""``accelserve infer URL MODEL``: send one request to a Triton server and print (or check) the outputs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="send one request to a Triton server (random or .npz inputs); optionally compare with ONNX Runtime",
        description="Build inputs from the model's metadata on the server, run one request, and print every output "
        "(shape, dtype, first values, min/max/mean/std). With --compare MODEL.onnx the same inputs run in local "
        "ONNX Runtime and the command exits 1 if any output is out of tolerance.",
    )
    p.add_argument("url", metavar="URL", help="server address: http://HOST:PORT, grpc://HOST:PORT or HOST:PORT")
    p.add_argument("model", metavar="MODEL", help="model name (its directory name in the repository)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--random", action="store_true", help="random inputs of the model's shapes and dtypes")
    data.add_argument("--data", metavar="FILE.npz", help="inputs from an .npz file, one array per input name")
    p.add_argument("--protocol", choices=["http", "grpc"], help="protocol when URL has no scheme (default http)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size on batching models: of the --random request (default 1), or of the requests a "
                   "--data file is cut into along its first dim (default: one request, or max_batch_size samples "
                   "each when the file holds more)")
    p.add_argument("--range", dest="ranges", action="append", metavar="[NAME=]LOW:HIGH",
                   help="range of --random values, for one input or all (repeatable; default -1:1, integers 0:100), "
                   "e.g. --range ids=0:30522")
    p.add_argument("--shape", action="append", metavar="NAME=DIMS",
                   help="full shape of an input for --random, batch dim included, e.g. x=2x128 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--model-version", default="", help="model version (default: the server's policy)")
    p.add_argument("--compare", metavar="MODEL.onnx", help="also run the inputs in local ONNX Runtime and compare")
    p.add_argument("--precision", default="fp32", help="tolerance preset for --compare (fp32, fp16, bf16, int8, tf32)")
    p.add_argument("--atol", type=float, help="absolute tolerance for --compare (overrides the preset)")
    p.add_argument("--rtol", type=float, help="relative tolerance for --compare (overrides the preset)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the server to answer (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelserve.errors import InvalidInputError
    from accelserve.loadtest.plan import parse_ranges
    from accelserve.triton.client import (
        TritonClient,
        load_inputs,
        parse_shape_overrides,
        random_inputs,
        split_requests,
        summarize,
    )

    if args.batch is not None and args.batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {args.batch}")
    if args.shape and not args.random:
        raise InvalidInputError("--shape applies to --random inputs; --data arrays carry their own shapes")
    if args.ranges and not args.random:
        raise InvalidInputError("--range applies to --random inputs; --data arrays carry their own values")
    shapes = parse_shape_overrides(args.shape)
    ranges = parse_ranges(args.ranges)
    with TritonClient(args.url, args.protocol, timeout=args.timeout) as client:
        client.check_live()
        info = client.model_info(args.model)
        unknown = sorted(set(shapes) - {t.name for t in info.inputs})
        if unknown:
            raise InvalidInputError(
                f"--shape names {unknown}, but model {info.name} has inputs {[t.name for t in info.inputs]}"
            )
        if args.random:
            requests = [random_inputs(info, batch=args.batch or 1, shapes=shapes, seed=args.seed, ranges=ranges)]
        else:
            requests = split_requests(load_inputs(args.data, info), info, args.batch)
        replies = [client.infer(args.model, feeds, version=args.model_version) for feeds in requests]
    feeds, outputs = _joined(requests), _joined(replies)
    print(f"model {info.name} at {client.url}")
    if len(requests) > 1:
        sizes = [len(next(iter(r.values()))) for r in requests]
        last = f" (last {sizes[-1]})" if sizes[-1] != sizes[0] else ""
        print(f"requests: {len(requests)} of batch {sizes[0]}{last}")
    print("inputs:")
    for name, arr in feeds.items():
        print("  " + summarize(name, arr))
    print("outputs:")
    for name, arr in outputs.items():
        print("  " + summarize(name, arr))
    if args.compare:
        return _compare(args, requests, outputs)
    return 0


def _joined(parts: list[dict]) -> dict:
    """One array per name: the requests' arrays joined along the batch dim (a single request as it is)."""
    if len(parts) == 1:
        return parts[0]
    import numpy as np

    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def _compare(args: argparse.Namespace, requests: list[dict], outputs: dict) -> int:
    from accelserve.onnx_io import read_onnx
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
    from accelserve.verify import VerificationReport, compare_arrays, tolerance_for

    tol = tolerance_for(args.precision, atol=args.atol, rtol=args.rtol)
    read_onnx(args.compare, load_external_data=False)  # the checks every command runs on a model file
    session = OnnxRuntimeSession(args.compare)
    local = _joined([session.run(dict(feeds), output_names=list(outputs)) for feeds in requests])
    report = VerificationReport(model=f"{args.model} (server) vs {args.compare} (ONNX Runtime)",
                                precision=args.precision, tolerance=tol)
    for name, served in outputs.items():
        report.comparisons.append(compare_arrays(name, served, local[name], tol))
    print(report.table())
    if not report.passed:
        print("FAILED: the server's outputs differ from local ONNX Runtime beyond tolerance")
        return 1
    return 0
