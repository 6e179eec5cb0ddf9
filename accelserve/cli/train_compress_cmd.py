"""``accelserve train-compress``: QAT, distillation or prune → fine-tune of a trained PyTorch model, exported to
ONNX and evaluated against the original."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-compress",
        help="training-aware compression of a PyTorch model (qat, distill, prune-finetune) to an ONNX model",
        description="Fine-tune a trained PyTorch model with quantization-aware training (fake quantization in the "
        "int8 pass's layout, exported as a Q/DQ model and verified against the fake-quant model), knowledge "
        "distillation into a student (given, or the model with channels pruned), or iterative prune -> fine-tune "
        "under an accuracy budget. --train MODULE:FN returns the data: a dict or accelserve.training.data."
        "TrainingData with 'train' and 'eval' (re-iterable (inputs, labels) batches, e.g. DataLoaders), optional "
        "'calibration' and 'input_names'. The report compares the result with the exported original on 'eval'.",
    )
    p.add_argument("source", help="the trained PyTorch model, as `accelserve export torch` takes it (MODULE:ATTR, "
                   "file.py:ATTR, or a weights file with --factory)")
    p.add_argument("--factory", help="MODULE:FN building the module for a weights-only checkpoint")
    p.add_argument("--method", required=True, choices=["qat", "distill", "prune-finetune"])
    p.add_argument("--train", required=True, metavar="MODULE:FN", help="training/eval data (see above)")
    p.add_argument("-o", "--output", required=True, help="ONNX model to write")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (prune-finetune: per step)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    q = p.add_argument_group("qat")
    q.add_argument("--target", choices=["ort-cpu", "tensorrt"], default="ort-cpu", help="Q/DQ layout (as int8)")
    q.add_argument("--ranges", choices=["ema", "learnable"], default="ema", help="activation range updates")
    q.add_argument("--per-tensor-weights", action="store_true",
                   help="one weight scale per tensor (as int8's per_channel=false); default per output channel")
    q.add_argument("--reduce-range", choices=["auto", "true", "false"], default="auto",
                   help="ort-cpu: 7-bit weights (auto: what the int8 pass picks for this CPU)")
    d = p.add_argument_group("distill / prune-finetune")
    d.add_argument("--student", help="MODULE:FN returning the (untrained) student module; default: pruned teacher")
    d.add_argument("--prune-ratio", type=float, default=None, help="distill: channels pruned to make the student")
    d.add_argument("--temperature", type=float, default=None, help="distillation temperature")
    d.add_argument("--alpha", type=float, default=None, help="weight of the distillation term (0..1)")
    d.add_argument("--target-ratio", type=float, default=None, help="prune-finetune: final share of channels pruned")
    d.add_argument("--steps", type=int, default=None, help="prune-finetune: pruning steps")
    d.add_argument("--accuracy-budget", type=float, default=None,
                   help="prune-finetune: max held-out accuracy drop in points (stop before exceeding it)")
    d.add_argument("--no-distill", action="store_true", help="prune-finetune: plain cross-entropy fine-tuning")
    r = p.add_argument_group("report")
    r.add_argument("--json", dest="report_json", help="write the report as JSON (also when interrupted)")
    r.add_argument("--markdown", dest="report_markdown", help="write the report as Markdown")
    r.add_argument("--no-speed", action="store_true", help="skip latency measurement in the evaluation")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):  # noqa: ANN202
    from pydantic import ValidationError

    from accelserve.errors import InvalidInputError
    from accelserve.training.distill import DistillConfig, PruneFinetuneConfig
    from accelserve.training.qat import QATConfig

    common = {"epochs": args.epochs, "lr": args.lr}
    if args.method == "qat":
        reduce_range = {"auto": "auto", "true": True, "false": False}[args.reduce_range]
        cls, values = QATConfig, {**common, "target": args.target, "ranges": args.ranges,
                                  "per_channel": not args.per_tensor_weights, "reduce_range": reduce_range}
    elif args.method == "distill":
        cls, values = DistillConfig, {**common, "prune_ratio": args.prune_ratio, "temperature": args.temperature,
                                      "alpha": args.alpha}
    else:
        cls, values = PruneFinetuneConfig, {"epochs_per_step": args.epochs, "lr": args.lr,
                                            "target_ratio": args.target_ratio, "steps": args.steps,
                                            "accuracy_budget": args.accuracy_budget, "distill": not args.no_distill,
                                            "temperature": args.temperature, "alpha": args.alpha}
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise InvalidInputError(f"invalid {args.method} options: {problems}") from None


def run(args: argparse.Namespace) -> int:
    from accelserve.calibration import resolve_callable
    from accelserve.errors import InvalidInputError
    from accelserve.exporters.torch_loading import load_torch_model
    from accelserve.training.api import train_compress
    from accelserve.training.data import load_training_data

    if args.student and args.method != "distill":
        raise InvalidInputError("--student only applies to --method distill")
    config = _config(args)
    data = load_training_data(args.train)
    model = load_torch_model(args.source, factory=args.factory).module
    student = resolve_callable(args.student, "--student")() if args.student else None
    result = train_compress(model, data, args.method, args.output, config=config, student=student,
                            evaluate_speed=not args.no_speed, report_json=args.report_json,
                            report_markdown=args.report_markdown)
    for key, value in result.figures.items():
        if key != "steps":
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if result.evaluation is not None:
        print(result.evaluation.markdown(), file=sys.stdout)
    print(f"wrote {result.output} ({args.method}, {result.seconds:.1f} s)")
    return 0
