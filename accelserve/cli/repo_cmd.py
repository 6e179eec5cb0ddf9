"""``accelserve repo add|validate|list``: write and check Triton model repositories."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repo", help="add models to a Triton model repository, validate or list one")
    cmds = p.add_subparsers(dest="repo_command", metavar="SUBCOMMAND", parser_class=type(p))
    cmds.required = True
    _register_add(cmds)

    v = cmds.add_parser("validate", help="check every config.pbtxt and model file of a repository")
    v.add_argument("repo", help="model repository directory")
    v.set_defaults(func=run_validate)

    ls = cmds.add_parser("list", help="list the models of a repository with versions, platform and batch size")
    ls.add_argument("repo", help="model repository directory")
    ls.set_defaults(func=run_list)


def _register_add(cmds: argparse._SubParsersAction) -> None:
    a = cmds.add_parser(
        "add",
        help="add an ONNX model as the next version of a model (writes config.pbtxt and <version>/model.onnx)",
        description="Add an ONNX model to a Triton model repository as NAME/<next version>/model.onnx and "
        "(re)generate NAME/config.pbtxt. An existing model's config is regenerated only if the new model has the "
        "same inputs/outputs; otherwise use a new --name or --replace-config. Nothing is changed on failure. A model "
        "identical to the latest version adds no version (--force-new-version adds one anyway); a changed config "
        "is listed field by field. Staging directories left by killed adds are removed.",
    )
    a.add_argument("model", help="the .onnx file (external-data files beside it are copied too), or a TensorRT "
                   "engine (.plan) for a tensorrt_plan entry")
    a.add_argument("--from-onnx", metavar="MODEL.onnx", default=None,
                   help="for a .plan: take inputs/outputs from the ONNX model it was built from (no TensorRT needed)")
    a.add_argument("--repo", default="model_repository", help="model repository directory (default: %(default)s)")
    a.add_argument("--name", required=True, help="model name (the directory under the repository)")
    a.add_argument("--max-batch-size", type=int, default=None,
                   help="Triton max_batch_size (default: 32 if every input/output has a dynamic first dim, else 0)")
    a.add_argument("--instances", type=int, default=1, help="instances per instance group (default: 1)")
    a.add_argument("--instance-kind", choices=["cpu", "gpu", "auto"], default=None,
                   help="instance kind (default: cpu; gpu with --accelerator tensorrt)")
    a.add_argument("--dynamic-batching", action=argparse.BooleanOptionalAction, default=None,
                   help="Triton dynamic batching (default: on when max_batch_size > 0)")
    a.add_argument("--preferred-batch-sizes", type=int, nargs="+", default=(), metavar="N",
                   help="dynamic batching preferred batch sizes")
    a.add_argument("--max-queue-delay-us", type=int, default=None, help="dynamic batching max queue delay (us)")
    a.add_argument("--warmup", action="store_true", help="add a model_warmup request at batch 1")
    a.add_argument("--warmup-data", choices=["random", "zero"], default="random",
                   help="data of the warmup request (default: random)")
    a.add_argument("--accelerator", choices=["tensorrt"], default=None,
                   help="ONNX Runtime's TensorRT execution provider in Triton's onnxruntime backend (GPU)")
    a.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="TensorRT precision_mode (default: fp32); int8 needs a Q/DQ model")
    a.add_argument("--workspace-bytes", type=int, default=None, help="TensorRT max_workspace_size_bytes")
    a.add_argument("--trt-engine-cache", metavar="DIR", default=None,
                   help="enable TensorRT's engine cache in DIR (absolute path as the server sees it)")
    a.add_argument("--trt-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any documented parameter of the onnxruntime backend's TensorRT accelerator (repeatable), "
                   "e.g. trt_timing_cache_enable=1, int8_calibration_table_name=model.calib; checked by name")
    a.add_argument("--replace-config", action="store_true",
                   help="write a fresh config.pbtxt even if it is incompatible with the existing one")
    a.add_argument("--force-new-version", action="store_true",
                   help="add a new version even when the model is identical to the latest version")
    a.add_argument("--dry-run", action="store_true", help="print the config and target paths; write nothing")
    a.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    from accelserve.tensorrt.accelerator import parse_trt_options
    from accelserve.triton.config import TritonModelOptions
    from accelserve.triton.repository import add_model

    options = TritonModelOptions(
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        instance_kind=args.instance_kind,
        dynamic_batching=args.dynamic_batching,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        max_queue_delay_us=args.max_queue_delay_us,
        warmup=args.warmup_data if args.warmup else None,
        accelerator=args.accelerator,
        precision=args.precision,
        workspace_bytes=args.workspace_bytes,
        trt_engine_cache=args.trt_engine_cache,
        trt_parameters=tuple(parse_trt_options(args.trt_option).items()),
    )
    result = add_model(args.model, args.repo, args.name, options, replace_config=args.replace_config,
                       dry_run=args.dry_run, force_new_version=args.force_new_version, onnx_source=args.from_onnx)
    for left in result.removed_leftovers:
        print(f"removed the staging directory of an interrupted add: {left.describe()}")
    if result.identical_to is not None:
        print(f"'{result.name}' version {result.identical_to} already holds this model (identical bytes): "
              f"{'would add' if result.dry_run else 'added'} no version (--force-new-version adds one anyway)")
    elif result.dry_run:
        print(f"dry run: would add '{result.name}' version {result.version}; nothing was written")
        for f in result.files:
            print(f"  {f}")
    else:
        what = "new model" if result.created_model else "new version"
        print(f"added '{result.name}' version {result.version} ({what}) -> {result.version_dir}")
    if result.config_changes:
        verb = "would change" if result.dry_run else "changed"
        print(f"  config: {result.config_path} ({verb}; every version of '{result.name}' is served with it):")
        for change in result.config_changes:
            print(f"    {change}")
    elif not result.dry_run:
        print(f"  config: {result.config_path} ({'written' if result.config_written else 'unchanged'})")
    if result.dry_run:
        print(f"{result.config_path}:")
        print(result.config_text, end="")
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from accelserve.triton.repository import list_models
    from accelserve.triton.validate import errors, validate_repository

    problems = validate_repository(args.repo)
    for problem in problems:
        print(problem, file=sys.stderr)
    failed = errors(problems)
    warned = len(problems) - len(failed)
    if failed:
        print(f"{args.repo}: {len(failed)} problem(s)" + (f", {warned} warning(s)" if warned else ""), file=sys.stderr)
        return 1
    print(f"{args.repo}: {len(list_models(args.repo))} model(s), no problems" + (f", {warned} warning(s)" if warned
                                                                               else ""))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from accelserve.triton.repository import list_models

    entries = list_models(args.repo)
    if not entries:
        print(f"{args.repo}: no models")
        return 0
    rows = [("MODEL", "VERSIONS", "PLATFORM/BACKEND", "MAX_BATCH")]
    for e in entries:
        versions = ",".join(map(str, e.versions)) or "-"
        if e.error:
            rows.append((e.name, versions, f"(config error: {e.error.splitlines()[0]})", ""))
        else:
            rows.append((e.name, versions, e.platform or e.backend or "?", str(e.max_batch_size)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return 0
