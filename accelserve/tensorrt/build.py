"""Building TensorRT engines (``model.plan``) from ONNX models.

Two steps, so that everything but the build itself runs without TensorRT:

1. :func:`plan_build` reads the ONNX model and the :class:`EngineBuildConfig` and decides *what* to build: the
   precision flags (a Q/DQ model is built as a strongly typed network, its precision taken from the Q/DQ nodes;
   a float model gets FP16/TF32 flags), sparse weights (on when the model carries accelserve's 2:4 marker),
   optimization profiles covering every batch Triton will send, the timing cache, and the equivalent ``trtexec``
   command line, stored in the report so the build can be reproduced by hand.
2. :func:`build_engine` carries the plan out with TensorRT's Python API (imported lazily) and writes the engine
   and the timing cache atomically.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field

from accelserve.errors import InvalidInputError, InvalidModelError, OptimizationError
from accelserve.evaluate.report import atomic_write_bytes
from accelserve.tensorrt.api import load_tensorrt, version_tuple
from accelserve.tensorrt.profiles import InputProfile, derive_profiles, parse_profile_override, trtexec_shapes

Precision = Literal["auto", "fp32", "tf32", "fp16", "int8"]
SPARSE_MARKER = "accelserve.tensorrt.sparse_weights"  # written by the prune-2:4 pass
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}


class EngineBuildConfig(BaseModel):
    """How to build an engine. Field names match the ``build-engine`` CLI flags."""

    model_config = ConfigDict(extra="forbid")

    #: auto: strongly typed for Q/DQ models, FP16 for float models
    precision: Precision = "auto"
    #: Triton's max_batch_size (0: the model is not batched, every input is used as declared)
    max_batch_size: int = Field(default=32, ge=0)
    opt_batch_size: int | None = Field(default=None, ge=1)
    #: per-input overrides, ``NAME:MIN,OPT,MAX``
    profiles: list[str] = Field(default_factory=list)
    #: bounds of named dynamic axes other than the batch (e.g. what the exporter found)
    dim_bounds: dict[str, int] = Field(default_factory=dict)
    #: None: on exactly when the model carries the 2:4 marker
    sparse_weights: bool | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = Field(default=None, ge=0, le=5)
    workspace_bytes: int | None = Field(default=None, gt=0)
    version_compatible: bool = False
    hardware_compatibility: Literal["none", "ampere+", "same-compute-capability"] = "none"
    #: implicit INT8 (TensorRT < 10.1): a TensorRT calibration cache (accelserve calib-cache writes one)
    calibration_cache: Path | None = None


@dataclass
class BuildPlan:
    """What :func:`build_engine` will do, decided without TensorRT."""

    model: Path
    output: Path
    strongly_typed: bool
    fp16: bool
    tf32: bool
    int8_implicit: bool
    sparse_weights: bool
    profiles: list[InputProfile]
    config: EngineBuildConfig
    notes: list[str] = field(default_factory=list)

    def trtexec_argv(self) -> list[str]:
        c = self.config
        argv = ["trtexec", f"--onnx={self.model}", f"--saveEngine={self.output}"]
        if self.strongly_typed:
            argv.append("--stronglyTyped")
        if self.fp16:
            argv.append("--fp16")
        if not self.tf32 and not self.strongly_typed:
            argv.append("--noTF32")
        if self.int8_implicit:
            argv += ["--int8", f"--calib={c.calibration_cache}"]
        if self.sparse_weights:
            argv.append("--sparsity=enable")
        argv += [f"{flag}={value}" for flag, value in trtexec_shapes(self.profiles).items()]
        if c.timing_cache is not None:
            argv.append(f"--timingCacheFile={c.timing_cache}")
        if c.optimization_level is not None:
            argv.append(f"--builderOptimizationLevel={c.optimization_level}")
        if c.workspace_bytes is not None:  # trtexec's default unit is MiB
            argv.append(f"--memPoolSize=workspace:{math.ceil(c.workspace_bytes / 2**20)}")
        if c.version_compatible:
            argv.append("--versionCompatible")
        if c.hardware_compatibility != "none":
            argv.append(f"--hardwareCompatibilityLevel={c.hardware_compatibility}")
        return argv

    def trtexec_command(self) -> str:
        return shlex.join(self.trtexec_argv())

    def to_dict(self) -> dict:
        return {
            "model": str(self.model), "output": str(self.output), "strongly_typed": self.strongly_typed,
            "fp16": self.fp16, "tf32": self.tf32, "int8_implicit": self.int8_implicit,
            "sparse_weights": self.sparse_weights, "profiles": [asdict(p) for p in self.profiles],
            "config": self.config.model_dump(mode="json"), "notes": list(self.notes),
            "trtexec": self.trtexec_command(),
        }


def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def has_sparse_marker(model: onnx.ModelProto) -> bool:
    return any(p.key == SPARSE_MARKER and p.value == "true" for p in model.metadata_props)


def plan_build(model_path: str | Path, output: str | Path, config: EngineBuildConfig | None = None, *,
               calibrating: bool = False) -> BuildPlan:
    """Decide the build. Raises user errors for contradictions (e.g. INT8 without a calibration cache).

    ``calibrating``: calibration data will be given to :func:`build_engine` (TensorRT calibrates and writes the
    cache to ``config.calibration_cache``)."""
    from accelserve.onnx_io import read_onnx

    config = config or EngineBuildConfig()
    model_path, output = Path(model_path), Path(output)
    if output.suffix not in (".plan", ".engine"):
        raise InvalidInputError(f"engine output '{output}' should end in .plan (Triton's tensorrt_plan file name)")
    model = read_onnx(model_path, load_external_data=False)
    qdq = has_qdq(model)
    marker = has_sparse_marker(model)
    notes: list[str] = []
    precision = config.precision
    if precision == "auto":
        precision = "int8" if qdq else "fp16"
        notes.append("Q/DQ model: strongly typed network, precision from its Q/DQ nodes" if qdq
                     else "float model: FP16 enabled (use --precision fp32/tf32 to keep float32)")
    strongly_typed = qdq
    int8_implicit = precision == "int8" and not qdq
    if int8_implicit and config.calibration_cache is None:
        raise InvalidInputError(
            "INT8 for a model without Q/DQ nodes needs --calibration-cache (read when it exists, else written)",
            hint="write one with `accelserve calib-cache MODEL.onnx --calib DATA -o model.calib`, or quantize first: "
                 "`accelserve optimize --recipe int8 --target tensorrt`",
        )
    if int8_implicit and not calibrating and not config.calibration_cache.is_file():
        raise InvalidInputError(
            f"calibration cache {config.calibration_cache} does not exist and no calibration data was given",
            hint="write it with `accelserve calib-cache MODEL.onnx --calib DATA -o FILE`, or pass --calib DATA",
        )
    if qdq and config.calibration_cache is not None:
        raise InvalidInputError("a Q/DQ model carries its own scales; a calibration cache cannot be used with it")
    if qdq and precision in ("fp32", "tf32", "fp16"):
        notes.append(f"--precision {precision} ignored: a strongly typed network takes its precision from the model")
    fp16 = precision == "fp16" and not strongly_typed
    tf32 = precision != "fp32" and not strongly_typed
    sparse = marker if config.sparse_weights is None else config.sparse_weights
    if marker and sparse:
        notes.append("2:4 sparse weights (the model carries the prune-2:4 marker)")
    elif config.sparse_weights and not marker:
        notes.append("sparse weights requested, but the model has no 2:4 marker: TensorRT only uses weights that "
                     "are 2:4 sparse")
    overrides = [parse_profile_override(p) for p in config.profiles]
    batch = _model_max_batch(model, config.max_batch_size)
    profiles = derive_profiles(model, max_batch_size=batch, opt_batch_size=config.opt_batch_size,
                               dim_bounds=config.dim_bounds, overrides=overrides)
    return BuildPlan(model_path, output, strongly_typed, fp16, tf32, int8_implicit, sparse, profiles, config, notes)


def _model_max_batch(model: onnx.ModelProto, max_batch_size: int) -> int:
    """max_batch_size, or 0 when the model's first axes are not all dynamic (then it cannot be batched)."""
    if max_batch_size == 0:
        return 0
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            raise InvalidInputError(
                f"input '{vi.name}' has no dynamic first axis, so the engine cannot serve max_batch_size "
                f"{max_batch_size}",
                hint="pass --max-batch-size 0 (not batched), or export with a dynamic batch axis",
            )
    return max_batch_size


@dataclass
class BuildResult:
    plan: BuildPlan
    engine: Path
    engine_bytes: int
    seconds: float
    tensorrt_version: str
    timing_cache_written: bool


def build_engine(model_path: str | Path, output: str | Path, config: EngineBuildConfig | None = None, *,
                 calibration=None) -> BuildResult:  # noqa: ANN001 - CalibrationData
    """Plan the build, then run it with TensorRT (needs an NVIDIA GPU and the ``tensorrt`` package).

    Implicit INT8 reads ``config.calibration_cache`` when the file exists (TensorRT then skips calibration);
    otherwise TensorRT calibrates on ``calibration`` and writes the cache there."""
    plan = plan_build(model_path, output, config, calibrating=calibration is not None)
    trt = load_tensorrt("building a TensorRT engine")
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.model)):  # by path: external weights resolve next to the model
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InvalidModelError(f"TensorRT's ONNX parser rejected {plan.model}: {errors}")
    builder_config = builder.create_builder_config()
    _apply_flags(trt, builder_config, plan)
    profile = builder.create_optimization_profile()
    for p in plan.profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    builder_config.add_optimization_profile(profile)
    if plan.int8_implicit:
        from accelserve.tensorrt.calibrator import make_calibrator

        builder_config.int8_calibrator = make_calibrator(trt, plan.config.calibration_cache, calibration)
        builder_config.set_calibration_profile(profile)
    cache = _load_timing_cache(builder_config, plan.config.timing_cache)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise OptimizationError("TensorRT failed to build the engine (see its log above)")
    atomic_write_bytes(plan.output, bytes(serialized))
    written = False
    if plan.config.timing_cache is not None and cache is not None:
        atomic_write_bytes(plan.config.timing_cache, bytes(builder_config.get_timing_cache().serialize()))
        written = True
    return BuildResult(plan, plan.output, plan.output.stat().st_size, time.perf_counter() - start,
                       trt.__version__, written)


def _network_flags(trt, plan: BuildPlan) -> int:  # noqa: ANN001 - the tensorrt module
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if version_tuple(trt.__version__) < (10, 0, 0) and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # the default (and the only mode) from TensorRT 10 on
    if plan.strongly_typed:
        if not hasattr(creation, "STRONGLY_TYPED"):
            raise OptimizationError(f"TensorRT {trt.__version__} has no strongly typed networks (needs >= 9.1)")
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _apply_flags(trt, builder_config, plan: BuildPlan) -> None:  # noqa: ANN001
    c = plan.config
    flag = trt.BuilderFlag
    if plan.fp16:
        builder_config.set_flag(flag.FP16)
    if not plan.tf32 and not plan.strongly_typed:
        builder_config.clear_flag(flag.TF32)
    if plan.int8_implicit:
        builder_config.set_flag(flag.INT8)
    if plan.sparse_weights:
        builder_config.set_flag(flag.SPARSE_WEIGHTS)
    if c.workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, c.workspace_bytes)
    if c.optimization_level is not None:
        builder_config.builder_optimization_level = c.optimization_level
    if c.version_compatible:
        if not hasattr(flag, "VERSION_COMPATIBLE"):
            raise OptimizationError(f"TensorRT {trt.__version__} cannot build version-compatible engines (needs 8.6)")
        builder_config.set_flag(flag.VERSION_COMPATIBLE)
    if c.hardware_compatibility != "none":
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), HARDWARE_COMPATIBILITY[c.hardware_compatibility],
                        None)
        if level is None:
            raise OptimizationError(f"TensorRT {trt.__version__} has no hardware compatibility level "
                                    f"'{c.hardware_compatibility}'")
        builder_config.hardware_compatibility_level = level


def _load_timing_cache(builder_config, path: Path | None):  # noqa: ANN001, ANN202
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = builder_config.create_timing_cache(data)
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
