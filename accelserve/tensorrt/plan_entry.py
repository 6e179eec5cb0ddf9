"""``tensorrt_plan`` repository entries: the config for a TensorRT engine.

Inputs, outputs, dtypes, dims and max_batch_size come from the engine itself when TensorRT is installed
(:func:`engine_signature`: I/O tensors and the first optimization profile's max batch), or, without TensorRT,
from the ONNX model the engine was built from (:func:`plan_config` with ``onnx_source``; the caller says so in its
output, since a config derived from the ONNX model is only right if the engine was built from that model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidInputError, InvalidModelError, MissingDependencyError

PLAN_PLATFORM = "tensorrt_plan"
PLAN_FILENAME = "model.plan"


@dataclass(frozen=True)
class EngineTensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  #: -1 for dynamic axes
    max_shape: tuple[int, ...] | None = None  #: inputs: the max shape of profile 0


def engine_signature(plan_path: str | Path) -> list[EngineTensor]:
    """The engine's I/O tensors (needs TensorRT and a GPU to deserialize the engine)."""
    from accelserve.tensorrt.api import load_tensorrt

    trt = load_tensorrt("reading a TensorRT engine's inputs and outputs")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise InvalidModelError(f"TensorRT cannot deserialize {plan_path} (built by another TensorRT version or GPU?)")
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        max_shape = tuple(engine.get_tensor_profile_shape(name, 0)[2]) if is_input else None
        out.append(EngineTensor(name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                                tuple(engine.get_tensor_shape(name)), max_shape))
    return out


def _config_from_engine(tensors: list[EngineTensor], name: str, max_batch_size: int | None) -> mc.ModelConfig:
    from accelserve.triton.dtypes import numpy_to_triton

    inputs = [t for t in tensors if t.is_input]
    batched = bool(inputs) and all(t.shape and t.shape[0] == -1 for t in tensors)
    engine_max = min((t.max_shape[0] for t in inputs if t.max_shape), default=0) if batched else 0
    if max_batch_size is None:
        max_batch_size = engine_max
    elif max_batch_size > engine_max:
        raise InvalidInputError(
            f"max_batch_size {max_batch_size} is larger than the engine's profile allows ({engine_max})",
            hint="rebuild the engine with a larger max batch (accelserve build-engine --max-batch-size)",
        )
    config = mc.ModelConfig(name=name, platform=PLAN_PLATFORM, max_batch_size=max_batch_size)
    for t in tensors:
        entry = (config.input if t.is_input else config.output).add()
        entry.name = t.name
        entry.data_type = numpy_to_triton(t.dtype)
        entry.dims.extend(t.shape[1:] if max_batch_size > 0 else t.shape)
    return config


def plan_config(plan_path: str | Path, name: str, *, onnx_source: str | Path | None = None, options=None,  # noqa: ANN001
                ) -> tuple[mc.ModelConfig, str]:
    """The ``tensorrt_plan`` config for the engine at ``plan_path`` and where its signature came from.

    Without ``onnx_source`` the engine is read with TensorRT; with it, the ONNX model is used instead (no TensorRT
    needed). ``options`` (TritonModelOptions) give max_batch_size, instances, dynamic batching and warmup; the
    instance kind is always GPU and ONNX Runtime accelerator options do not apply."""
    from accelserve.onnx_io import read_onnx
    from accelserve.triton.config import INSTANCE_KINDS, TritonModelOptions, build_config

    options = options or TritonModelOptions()
    if options.accelerator is not None:
        raise InvalidInputError("--accelerator configures ONNX Runtime's TensorRT provider; a .plan is already an "
                                "engine", hint="drop --accelerator and its options")
    if options.instance_kind not in (None, "gpu"):
        raise InvalidInputError(f"TensorRT engines run on GPU instances, not '{options.instance_kind}'")
    plan_path = Path(plan_path)
    if not plan_path.is_file() or plan_path.stat().st_size == 0:
        raise InvalidModelError(f"engine {plan_path} does not exist or is empty")
    if onnx_source is not None:
        config = build_config(read_onnx(onnx_source, load_external_data=False), name, options)
        config.platform, config.backend = PLAN_PLATFORM, ""
        source = f"signature from the ONNX model {onnx_source} (not read from the engine: TensorRT was not used)"
    else:
        try:
            tensors = engine_signature(plan_path)
        except MissingDependencyError as exc:
            raise MissingDependencyError(
                exc.message, hint="without TensorRT, pass --from-onnx MODEL.onnx (the model the engine was built "
                "from) to take the inputs and outputs from it; or " + (exc.hint or "")) from exc
        config = _config_from_engine(tensors, name, options.max_batch_size)
        base = build_config_batching(options, config.max_batch_size)
        config.MergeFrom(base)
        source = f"signature read from the engine {plan_path}"
    del config.instance_group[:]
    config.instance_group.add(count=options.instances, kind=INSTANCE_KINDS["gpu"])
    return config, source


def build_config_batching(options, max_batch_size: int) -> mc.ModelConfig:  # noqa: ANN001
    """Only the dynamic-batching and warmup parts of a config built from ``options``."""
    out = mc.ModelConfig()
    if max_batch_size > 0 and options.dynamic_batching is not False:
        out.dynamic_batching.SetInParent()
        out.dynamic_batching.preferred_batch_size.extend(options.preferred_batch_sizes)
        if options.max_queue_delay_us is not None:
            out.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    return out


def is_plan_file(path: str | Path) -> bool:
    return Path(path).suffix in (".plan", ".engine")


def plan_problems(config: mc.ModelConfig, plan_file: Path) -> list[str]:
    """What is wrong with a ``tensorrt_plan`` version file: empty, an ONNX model under the engine's name, or (when
    TensorRT is installed) an engine whose inputs/outputs disagree with the config. Without TensorRT the engine's
    contents cannot be read, and only the first two are checked."""
    size = plan_file.stat().st_size
    if size == 0:
        return ["the engine file is empty"]
    if _looks_like_onnx(plan_file):
        return ["this is an ONNX model, not a TensorRT engine: build an engine with `accelserve build-engine "
                "MODEL.onnx -o model.plan`, or serve the ONNX model with platform onnxruntime_onnx"]
    try:
        tensors = engine_signature(plan_file)
    except Exception:  # noqa: BLE001 - no TensorRT / no GPU here: the contents cannot be checked
        return []
    out = []
    engine = {t.name: t for t in tensors}
    mbs = config.max_batch_size
    for kind, entries in (("input", config.input), ("output", config.output)):
        for entry in entries:
            t = engine.get(entry.name)
            if t is None or t.is_input != (kind == "input"):
                out.append(f"config {kind} '{entry.name}' is not an {kind} of the engine")
                continue
            shape = list(t.shape[1:] if mbs > 0 else t.shape)
            if len(shape) != len(entry.dims) or any(e != -1 and d != -1 and e != d for e, d in zip(shape, entry.dims)):
                out.append(f"{kind} '{entry.name}': config dims {list(entry.dims)}, engine {shape}")
            if kind == "input" and mbs > 0 and t.max_shape and t.max_shape[0] < mbs:
                out.append(f"input '{entry.name}': the engine's profile allows batch <= {t.max_shape[0]}, "
                           f"max_batch_size is {mbs}")
    return out


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    if path.stat().st_size > 64 * 2**20:
        return False
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # noqa: BLE001 - not protobuf at all
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0
