"""``accelserve evaluate BASE CANDIDATE... --data DATA``: size, accuracy, speed and memory, side by side.

Exit status: 0 ok, 1 user error, 2 an accuracy gate (--max-accuracy-drop, --min-cosine, --min-agreement) failed;
the reports are written either way."""

from __future__ import annotations

import argparse


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare candidate models with a base model (size, accuracy, speed, memory)")
    p.add_argument("base", help="base .onnx model (the reference)")
    p.add_argument("candidates", nargs="+", help="candidate .onnx models")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="evaluation data: .npz, a directory of .npy, or MODULE:FN yielding feeds")
    data.add_argument("--random-data", action="store_true", help="random data (smoke only)")
    p.add_argument("--count", type=int, help="use at most N feeds")
    p.add_argument("--batch", type=int, help="samples per feed when cutting arrays (default 8)")
    p.add_argument("--labels", help="labels (.npy/.npz) aligned with the samples along axis 0")
    p.add_argument("--metric", help="MODULE:FN (outputs dict, labels) -> float, higher is better; default top-1")
    p.add_argument("--batch-sizes", type=_csv_ints, default=[1], help="batch sizes to time (default 1)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores of this process)")
    p.add_argument("--runtime", default=None,
                   help="run every model with this accelserve.runtimes plugin (onnxruntime-cuda, onnxruntime-tensorrt, "
                   "tensorrt on a GPU; default: ONNX Runtime on the CPU)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="time limit per latency measurement")
    p.add_argument("--no-speed", action="store_true", help="skip latency/throughput")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory")
    p.add_argument("--json", dest="json_out", help="write the JSON report here")
    p.add_argument("--markdown", help="write the Markdown table here")
    p.add_argument("--plot", help="write the PNG plot here (accuracy drop vs latency)")
    from accelserve.evaluate.gates import add_gate_arguments

    add_gate_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from accelserve.calibration import load_calibration
    from accelserve.evaluate import evaluate_models, load_labels
    from accelserve.evaluate.gates import EXIT_GATE_FAILED, gates_from_args, summary

    gates = gates_from_args(args)
    gates.check_inputs(has_labels=bool(args.labels))
    data = load_calibration(args.data, args.base, random=args.random_data, count=args.count, batch_size=args.batch)
    labels = load_labels(args.labels) if args.labels else None
    report = evaluate_models(
        args.base, args.candidates, data, labels=labels, metric=args.metric, batch_sizes=args.batch_sizes,
        threads=args.threads, speed=not args.no_speed, memory=not args.no_memory, max_seconds=args.max_seconds,
        runtime=args.runtime,
    )
    if gates.enabled:
        report.apply_gates(gates)
    print(report.markdown())
    for f in report.write(json=args.json_out, markdown=args.markdown, plot=args.plot if not args.no_speed else None):
        print(f"wrote {f}")
    for warning in report.accuracy_warnings():
        sys.stderr.write(f"warning: agreement figures not meaningful: {warning}\n")
    if not report.gates_passed:
        sys.stderr.write(summary(report.gates) + "\n")
        return EXIT_GATE_FAILED
    return 0
