"""``accelserve infer URL MODEL``: send one request (or one sequence) to a Triton server and print (or check) the
outputs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="send one request to a Triton server (random or .npz inputs); optionally compare with ONNX Runtime",
        description="Build inputs from the model's metadata on the server, run one request, and print every output "
        "(shape, dtype, first values, min/max/mean/std). With --compare MODEL.onnx the same inputs run in local "
        "ONNX Runtime and the command exits 1 if any output is out of tolerance. A sequence model "
        "(sequence_batching) gets a sequence of --sequence-length requests under one correlation ID, START on the "
        "first and END on the last; --compare then runs the sequence locally with the control tensors and implicit "
        "state Triton supplies.",
    )
    p.add_argument("url", metavar="URL", help="server address: http://HOST:PORT, grpc://HOST:PORT or HOST:PORT")
    p.add_argument("model", metavar="MODEL", help="model name (its directory name in the repository)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--random", action="store_true", help="random inputs of the model's shapes and dtypes")
    data.add_argument("--data", metavar="FILE.npz",
                      help="inputs from an .npz file, one array per input name (text arrays for BYTES inputs)")
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
    p.add_argument("--string-length", type=int, default=16, metavar="N",
                   help="--random: characters per random string of a BYTES input (default 16)")
    p.add_argument("--string-data", metavar="TEXT", help="--random: this text in every element of BYTES inputs")
    p.add_argument("--sequence-length", type=int, default=None, metavar="N",
                   help="sequence models: requests in the sequence (default 1); --data arrays give one sample each")
    p.add_argument("--sequence-id", type=int, default=None, metavar="ID",
                   help="sequence models: correlation ID (default: a new random one)")
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
    from accelserve.triton import sequence_client as sc
    from accelserve.triton.client import (
        TritonClient,
        check_max_shapes,
        load_inputs,
        parse_shape_overrides,
        random_inputs,
        split_requests,
    )

    if args.batch is not None and args.batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {args.batch}")
    if args.shape and not args.random:
        raise InvalidInputError("--shape applies to --random inputs; --data arrays carry their own shapes")
    if args.ranges and not args.random:
        raise InvalidInputError("--range applies to --random inputs; --data arrays carry their own values")
    if (args.string_data is not None or args.string_length != 16) and not args.random:
        raise InvalidInputError("--string-length/--string-data apply to --random inputs")
    if args.sequence_length is not None and args.sequence_length < 1:
        raise InvalidInputError(f"--sequence-length must be >= 1, got {args.sequence_length}")
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
        sequence = info.sequence is not None
        if not sequence and (args.sequence_length is not None or args.sequence_id is not None):
            raise InvalidInputError(f"model {info.name} has no sequence_batching: --sequence-length/--sequence-id "
                                    "apply to sequence models")
        if sequence and info.max_batch_size > 0 and (args.batch or 1) != 1:
            raise InvalidInputError(f"model {info.name} batches sequences: each request must have batch size 1")
        length = args.sequence_length or 1
        if args.random:
            requests = [random_inputs(info, batch=args.batch or 1, shapes=shapes, seed=args.seed + i, ranges=ranges,
                                      string_length=args.string_length, string_data=args.string_data)
                        for i in range(length if sequence else 1)]
        elif sequence:
            requests = sc.split_steps(load_inputs(args.data, info), info, length)
        else:
            requests = split_requests(load_inputs(args.data, info), info, args.batch)
        for feeds in requests:
            check_max_shapes(info, feeds)
        if sequence:
            sequence_id = args.sequence_id if args.sequence_id is not None else sc.new_sequence_id()
            replies = sc.send_sequence(client, args.model, requests, sequence_id, version=args.model_version)
        else:
            replies = [client.infer(args.model, feeds, version=args.model_version) for feeds in requests]
    print(f"model {info.name} at {client.url}")
    if sequence:
        print(f"{sc.describe(info)}; sent {len(requests)} request(s) as sequence {sequence_id}")
        for i, (feeds, outputs) in enumerate(zip(requests, replies, strict=True)):
            _print(feeds, outputs, prefix=f"[{i + 1}/{len(requests)}] ")
    else:
        if len(requests) > 1:
            sizes = [len(next(iter(r.values()))) for r in requests]
            last = f" (last {sizes[-1]})" if sizes[-1] != sizes[0] else ""
            print(f"requests: {len(requests)} of batch {sizes[0]}{last}")
        _print(_joined(requests), _joined(replies))
    if not args.compare:
        return 0
    from accelserve.onnx_io import read_onnx

    read_onnx(args.compare, load_external_data=False)  # the checks every command runs on a model file
    names = list(replies[0])
    if sequence:
        local = sc.run_sequence_locally(args.compare, info, requests, sequence_id, names)
        return _compare(args, replies, local)
    return _compare(args, [_joined(replies)], [_joined([_local_run(args.compare, r, names) for r in requests])])


def _print(feeds: dict, outputs: dict, prefix: str = "") -> None:
    from accelserve.triton.client import summarize

    print(f"{prefix}inputs:")
    for name, arr in feeds.items():
        print("  " + summarize(name, arr))
    print(f"{prefix}outputs:")
    for name, arr in outputs.items():
        print("  " + summarize(name, arr))


def _joined(parts: list[dict]) -> dict:
    """One array per name: the requests' arrays joined along the batch dim (a single request as it is)."""
    if len(parts) == 1:
        return parts[0]
    import numpy as np

    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def _local_run(onnx_path: str, feeds: dict, output_names: list[str]) -> dict:
    """``feeds`` in local ONNX Runtime; BYTES tensors as the stand-in passes them (UTF-8 text in, bytes out)."""
    import numpy as np

    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession
    from accelserve.triton.python_model.model import from_onnx_strings, to_onnx_strings

    session = OnnxRuntimeSession(onnx_path)
    text = {k: to_onnx_strings(k, v) if np.asarray(v).dtype == object else v for k, v in feeds.items()}
    local = session.run(text, output_names=output_names)
    return {k: from_onnx_strings(np.asarray(v)) if np.asarray(v).dtype == object else v for k, v in local.items()}


def _compare(args: argparse.Namespace, served: list[dict], local: list[dict]) -> int:
    """Every output of every request (or sequence step) against local ONNX Runtime; exit 1 when one is off."""
    from accelserve.verify import VerificationReport, compare_arrays, tolerance_for

    tol = tolerance_for(args.precision, atol=args.atol, rtol=args.rtol)
    report = VerificationReport(model=f"{args.model} (server) vs {args.compare} (ONNX Runtime)",
                                precision=args.precision, tolerance=tol)
    for step, (outputs, expected) in enumerate(zip(served, local, strict=True)):
        for name, value in outputs.items():
            report.comparisons.append(compare_arrays(name, value, expected[name], tol, sample=step))
    print(report.table())
    if not report.passed:
        print("FAILED: the server's outputs differ from local ONNX Runtime beyond tolerance")
        return 1
    return 0
