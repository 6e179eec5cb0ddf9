"""``accelserve optimize MODEL -o OUT --recipe a,b [...]``: run passes, write the model, evaluate it.

Pass options are forwarded by field name: a flag in ``OPTION_FLAGS`` becomes the option of the same name (dashes
to underscores), and ``--set NAME=VALUE`` sets any other field (VALUE is parsed as JSON when it can be: numbers,
true/false, lists). An option that no pass in the recipe has is an error. Adding a flag is one line in
``OPTION_FLAGS``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from accelserve.errors import InvalidInputError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


@dataclass(frozen=True)
class OptionFlag:
    flag: str  #: e.g. "--accuracy-budget"; the option name is the flag without dashes, '-' -> '_'
    type: Any  #: argparse type (float, int, str, _csv)
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


#: pass options with their own flags. One line per flag; the pass that has the field gets the value.
OPTION_FLAGS: list[OptionFlag] = [
    OptionFlag("--target", str, "deployment target: ort-cpu (default) or tensorrt for int8; "
               "'ort' lets simplify write ONNX Runtime-only fused ops"),
    OptionFlag("--method", str, "calibration method for int8", ("minmax", "entropy", "percentile")),
    OptionFlag("--percentile", float, "percentile of |x| kept by --method percentile (default 99.999)"),
    OptionFlag("--accuracy-budget", float, "int8/int8-dynamic: keep the most sensitive layers in float until the "
               "error vs FP32 is within this (top-1 disagreement in points for classifiers, else 1 - cosine); "
               "prune-*/lowrank: "
               "compress layer by layer, most robust first, while the error stays within it"),
    OptionFlag("--op-types", _csv, "int8/int8-dynamic: op types to quantize (comma-separated)"),
    OptionFlag("--exclude-nodes", _csv, "int8/int8-dynamic: node names kept in float; prune-*/lowrank: nodes left "
               "alone (comma-separated)"),
    OptionFlag("--exclude-op-types", _csv, "int8: op types kept in float (comma-separated)"),
    OptionFlag("--keep-first", int, "int8: keep the first N Conv/Gemm/MatMul layers in float"),
    OptionFlag("--keep-last", int, "int8: keep the last N Conv/Gemm/MatMul layers in float"),
    OptionFlag("--ratio", float, "prune-channels: fraction of each channel group removed; lowrank: fraction of each "
               "layer's rank removed (in [0, 1))"),
    OptionFlag("--sparsity", float, "prune-magnitude: fraction of the Conv/Gemm/MatMul weights set to zero ([0, 1))"),
    OptionFlag("--energy", float, "lowrank: keep the smallest rank holding this share of sum(sigma^2) (not --ratio)"),
    OptionFlag("--importance", str, "prune-channels: channel score (activation needs --calib)",
               ("l1", "l2", "activation")),
    OptionFlag("--scope", str, "prune-magnitude: one threshold per layer or one for all layers", ("layer", "global")),
    OptionFlag("--nodes", _csv, "prune-*/lowrank: only these nodes (comma-separated)"),
]


def parse_set(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set '{item}' is not NAME=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = value
    return out


def collect_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {f.field: getattr(args, f.field) for f in OPTION_FLAGS if getattr(args, f.field, None) is not None}
    for key, value in parse_set(args.set).items():
        if key in options:
            raise InvalidInputError(f"option '{key}' is given twice (as a flag and with --set)")
        options[key] = value
    return options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize", help="run optimization passes (simplify, int8, int8-dynamic, fp16, ...) on an ONNX model",
        description="Run a recipe of passes on MODEL, write OUT atomically, and evaluate OUT against MODEL.",
    )
    p.add_argument("model", help="input .onnx model")
    p.add_argument("-o", "--output", required=True, help="output .onnx model")
    p.add_argument("--recipe", required=True, help="comma-separated pass names, e.g. simplify,int8")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--calib", help="calibration data: .npz, a directory of .npy, or MODULE:FN yielding feeds")
    calib.add_argument("--random-calib", action="store_true", help="random calibration data (smoke only)")
    p.add_argument("--calib-count", type=int, help="use at most N calibration feeds")
    p.add_argument("--calib-batch", type=int, help="samples per calibration feed when cutting arrays (default 8)")
    for f in OPTION_FLAGS:
        p.add_argument(f.flag, dest=f.field, type=f.type, choices=f.choices, help=f.help, default=None)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other pass option (repeatable)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--no-evaluate", action="store_true", help="do not evaluate the result")
    ev.add_argument("--eval-data", help="evaluation data (default: the calibration data)")
    ev.add_argument("--labels", help="labels (.npy/.npz) aligned with the evaluation samples")
    ev.add_argument("--metric", help="MODULE:FN (outputs, labels) -> float, higher is better; default top-1")
    ev.add_argument("--batch-sizes", type=_csv_ints, default=[1], help="batch sizes to time (default 1)")
    ev.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores of this process)")
    ev.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ev.add_argument("--report", help="report prefix (default: OUTPUT without .onnx + .report)")
    from accelserve.evaluate.gates import add_gate_arguments

    add_gate_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from accelserve.evaluate.gates import EXIT_GATE_FAILED, gates_from_args, summary
    from accelserve.optimize import EvaluationSettings, optimize

    options = collect_options(args)
    settings = EvaluationSettings(
        data=args.eval_data, labels=args.labels, metric=args.metric, batch_sizes=tuple(args.batch_sizes),
        threads=args.threads, memory=not args.no_memory, report_prefix=args.report, gates=gates_from_args(args),
    )
    result = optimize(
        args.model, args.recipe, args.output, options, calibration=args.calib, evaluate=not args.no_evaluate,
        random_calibration=args.random_calib, calibration_count=args.calib_count,
        calibration_batch_size=args.calib_batch, evaluation=settings,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(result.table())
        if result.evaluation is not None:
            print()
            print(result.evaluation.markdown())
        for f in result.report_files:
            print(f"wrote {f}")
        print(f"wrote {result.output.path}")
    if result.evaluation is not None:
        for warning in result.evaluation.accuracy_warnings():
            sys.stderr.write(f"warning: agreement figures not meaningful: {warning}\n")
    if not result.gates_passed:
        sys.stderr.write(summary(result.gates) + "\n")
        return EXIT_GATE_FAILED
    return 0
