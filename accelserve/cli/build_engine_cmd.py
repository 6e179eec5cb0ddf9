"""``accelserve build-engine`` (a TensorRT engine from an ONNX model) and ``accelserve calib-cache`` (TensorRT's INT8
calibration cache from accelserve's calibration statistics, no TensorRT needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "build-engine",
        help="build a TensorRT engine (model.plan) from an ONNX model (needs an NVIDIA GPU and TensorRT)",
        description="Build a TensorRT engine. Q/DQ models (from `optimize --recipe int8 --target tensorrt`) are "
        "built as strongly typed networks; float models get FP16 (or --precision fp32/tf32); a model carrying the "
        "prune-2:4 marker gets sparse weights. Optimization profiles cover batch 1..--max-batch-size and the bounds "
        "of other dynamic axes. The equivalent trtexec command is printed and stored in --report. --dry-run plans "
        "the build without TensorRT.",
    )
    b.add_argument("model", help="the .onnx model")
    b.add_argument("-o", "--output", required=True, help="engine file to write (model.plan)")
    b.add_argument("--precision", choices=["auto", "fp32", "tf32", "fp16", "int8"], default="auto",
                   help="auto: strongly typed for Q/DQ models, fp16 otherwise; int8 on a float model is TensorRT's "
                   "implicit INT8 (needs --calibration-cache)")
    b.add_argument("--max-batch-size", type=int, default=32,
                   help="Triton's max_batch_size the engine must serve (0: not batched; default %(default)s)")
    b.add_argument("--opt-batch-size", type=int, default=None, help="batch size to optimize for (default: max)")
    b.add_argument("--profile", action="append", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="shape range of one input, e.g. ids:1x1,8x128,32x128 (repeatable; overrides the derived one)")
    b.add_argument("--dim-bound", action="append", default=[], metavar="AXIS=N",
                   help="upper bound of a named dynamic axis other than the batch, e.g. seq=128")
    b.add_argument("--sparse-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorRT sparse weights (default: on when the model carries the 2:4 marker)")
    b.add_argument("--timing-cache", type=Path, default=None, help="TensorRT timing cache, read and written")
    b.add_argument("--optimization-level", type=int, default=None, help="builder optimization level 0..5")
    b.add_argument("--workspace-bytes", type=int, default=None, help="workspace memory pool limit")
    b.add_argument("--version-compatible", action="store_true", help="a version-compatible engine (TensorRT >= 8.6)")
    b.add_argument("--hardware-compatibility", choices=["none", "ampere+", "same-compute-capability"],
                   default="none", help="hardware compatibility level")
    b.add_argument("--calibration-cache", type=Path, default=None,
                   help="implicit INT8: TensorRT calibration cache (read when it exists, written after --calib)")
    b.add_argument("--calib", default=None, help="implicit INT8: calibration data to run TensorRT's calibrator on")
    b.add_argument("--report", type=Path, default=None, help="write the build plan/result as JSON")
    b.add_argument("--dry-run", action="store_true", help="print the plan and the trtexec command; build nothing")
    b.set_defaults(func=run_build)

    c = sub.add_parser(
        "calib-cache",
        help="write TensorRT's INT8 calibration cache from calibration data or a Q/DQ model (no TensorRT needed)",
        description="Collect accelserve's calibration statistics of every activation over --calib and write them "
        "in TensorRT's calibration cache format (TRT-<version>-<algorithm>, then 'tensor: hex scale' lines), for "
        "`build-engine --precision int8 --calibration-cache` or the onnxruntime backend's TensorRT accelerator "
        "(--trt-option int8_calibration_table_name=... int8_use_native_calibration_table=1). For a Q/DQ model "
        "(--from-qdq) the scales it carries are written instead.",
    )
    c.add_argument("model", help="the float .onnx model (or, with --from-qdq, a Q/DQ model)")
    c.add_argument("-o", "--output", required=True, help="cache file to write")
    c.add_argument("--calib", default=None, help="calibration data: .npz, a directory of .npy, or MODULE:FN")
    c.add_argument("--calib-count", type=int, default=None, help="use at most N calibration feeds")
    c.add_argument("--method", choices=["entropy", "minmax", "percentile"], default="entropy",
                   help="range method (default: entropy, TensorRT's EntropyCalibration2)")
    c.add_argument("--percentile", type=float, default=99.999, help="percentile for --method percentile")
    c.add_argument("--trt-version", default=None,
                   help="TensorRT version for the header (default: the installed TensorRT, else 10.0.0)")
    c.add_argument("--from-qdq", action="store_true", help="take the activation scales of a Q/DQ model")
    c.set_defaults(func=run_calib_cache)


def _bounds(items: list[str]) -> dict[str, int]:
    from accelserve.errors import InvalidInputError

    out = {}
    for item in items:
        axis, sep, value = item.partition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise InvalidInputError(f"--dim-bound '{item}' is not AXIS=N with N >= 1")
        out[axis] = int(value)
    return out


def run_build(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from accelserve.errors import InvalidInputError
    from accelserve.tensorrt.build import EngineBuildConfig, build_engine, plan_build

    try:
        config = EngineBuildConfig(
            precision=args.precision, max_batch_size=args.max_batch_size, opt_batch_size=args.opt_batch_size,
            profiles=args.profile, dim_bounds=_bounds(args.dim_bound), sparse_weights=args.sparse_weights,
            timing_cache=args.timing_cache, optimization_level=args.optimization_level,
            workspace_bytes=args.workspace_bytes, version_compatible=args.version_compatible,
            hardware_compatibility=args.hardware_compatibility, calibration_cache=args.calibration_cache,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInputError(f"invalid build options: {problems}") from None
    calibration = None
    if args.calib:
        from accelserve.calibration import load_calibration

        calibration = load_calibration(args.calib, args.model)
    plan = plan_build(args.model, args.output, config, calibrating=calibration is not None)
    if not args.dry_run:
        from accelserve.tensorrt.api import load_tensorrt

        load_tensorrt("building a TensorRT engine")  # fail before printing a plan that cannot be carried out
    for note in plan.notes:
        print(f"note: {note}")
    for p in plan.profiles:
        print(f"profile {p.name}: min {p.min} opt {p.opt} max {p.max}")
    print(f"trtexec equivalent: {plan.trtexec_command()}")
    report = plan.to_dict()
    if args.dry_run:
        print("dry run: nothing was built")
    else:
        result = build_engine(args.model, args.output, config, calibration=calibration)
        print(f"built {result.engine} ({result.engine_bytes} bytes) with TensorRT {result.tensorrt_version} "
              f"in {result.seconds:.1f} s")
        report.update(engine_bytes=result.engine_bytes, seconds=result.seconds,
                      tensorrt_version=result.tensorrt_version, timing_cache_written=result.timing_cache_written)
    if args.report:
        from accelserve.evaluate.report import atomic_write_bytes

        atomic_write_bytes(args.report, (json.dumps(report, indent=2) + "\n").encode())
    return 0


def run_calib_cache(args: argparse.Namespace) -> int:
    from accelserve.errors import InvalidInputError
    from accelserve.tensorrt.calib_cache import DEFAULT_TRT_VERSION, cache_from_calibration, cache_from_qdq_model

    version = args.trt_version or _installed_trt_version() or DEFAULT_TRT_VERSION
    if args.from_qdq:
        if args.calib:
            raise InvalidInputError("--from-qdq takes the model's own scales; drop --calib")
        from accelserve.onnx_io import load_onnx

        cache = cache_from_qdq_model(load_onnx(args.model), trt_version=version)
    else:
        if not args.calib:
            raise InvalidInputError("calibration data is needed", hint="pass --calib DATA (or --from-qdq for a Q/DQ model)")
        from accelserve.calibration import load_calibration

        data = load_calibration(args.calib, args.model, count=args.calib_count)
        cache = cache_from_calibration(args.model, data, method=args.method, percentile=args.percentile,
                                       trt_version=version)
    path = cache.write(args.output)
    print(f"wrote {path}: {cache.header}, {len(cache.scales)} tensor(s)")
    return 0


def _installed_trt_version() -> str | None:
    try:
        import tensorrt  # noqa: PLC0415
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)
