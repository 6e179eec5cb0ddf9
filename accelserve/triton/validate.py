"""``accelserve repo validate``: find every problem in a Triton model repository, written by anyone.

Checks, per model directory: the name (Triton's rules; hidden directories are loaded as models too), that
``config.pbtxt`` parses as Triton's ``ModelConfig`` (file, line and column on errors), the config's own consistency
(the checks Triton's ``ValidateModelConfig`` and ``ValidateIOShape`` make: dims, reshape sizes, preferred batch
sizes, name vs directory), that each version Triton would load under ``version_policy`` has its model file, and for
ONNX models that input/output names, types and dims match the model file the way Triton's onnxruntime backend
compares them (``max_batch_size > 0`` adds a dynamic batch dim; ``reshape`` gives the model-side shape; a dynamic
model dim accepts any config dim, a fixed one must match). All problems are collected; nothing stops at the first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidModelError, RepositoryError
from accelserve.onnx_io import read_onnx
from accelserve.triton.config import (
    CONFIG_FILENAME,
    ONNX_BACKEND,
    ONNX_PLATFORM,
    ConfigParseError,
    TensorSignature,
    graph_signature,
    read_config,
)
from accelserve.tensorrt.accelerator import accelerator_problems
from accelserve.tensorrt.plan_entry import plan_problems
from accelserve.triton.dtypes import onnx_to_triton, onnx_type_name, triton_type_name
from accelserve.triton.naming import triton_name_problems
from accelserve.triton.repository import STAGING_MARKER, staging_leftovers, version_dirs

#: platform -> (backend, default model filename), as Triton's core maps them
PLATFORMS: dict[str, tuple[str, str | None]] = {
    "onnxruntime_onnx": ("onnxruntime", "model.onnx"),
    "tensorrt_plan": ("tensorrt", "model.plan"),
    "tensorflow_savedmodel": ("tensorflow", "model.savedmodel"),
    "tensorflow_graphdef": ("tensorflow", "model.graphdef"),
    "pytorch_libtorch": ("pytorch", "model.pt"),
    "ensemble": ("", None),
}
#: backend -> default model filename, where the backend has one
BACKEND_FILENAMES = {
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "pytorch": "model.pt",
    "python": "model.py",
    "openvino": "model.xml",
}
WILDCARD = -1


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a repository: where (file, and line/column when known) and what."""

    path: Path
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.message}"


def validate_repository(repo: str | Path) -> list[Problem]:
    """Every problem found in the repository at ``repo`` (empty when it is valid)."""
    root = Path(repo)
    if not root.is_dir():
        raise RepositoryError(
            f"model repository {root} does not exist or is not a directory",
            hint="create one with `accelserve repo add MODEL.onnx --repo DIR --name NAME`",
        )
    model_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    names = {p.name for p in model_dirs}
    problems: list[Problem] = []
    for model_dir in model_dirs:
        problems += validate_model_dir(model_dir, repository_models=names)
    reported = {p.path for p in problems}
    problems += [Problem(left.path, f"leftover staging directory of an interrupted `accelserve repo add` "
                                    f"({left.owner()}); "
                                    + ("the next add removes it, or delete it" if left.pid else "delete it"))
                 for left in staging_leftovers(root) if left.path not in reported]
    return problems


def validate_model_dir(model_dir: str | Path, *, repository_models: Iterable[str] | None = None) -> list[Problem]:
    """Every problem of one model directory; ``repository_models`` lets ensemble steps be checked."""
    model_dir = Path(model_dir)
    if STAGING_MARKER in model_dir.name:
        return [Problem(model_dir, "leftover staging directory of an interrupted `accelserve repo add`; delete it "
                                   "(Triton would try to load it as a model)")]
    problems = [Problem(model_dir, f"invalid model name: {p}") for p in triton_name_problems(model_dir.name)]
    if model_dir.name.startswith("."):
        problems.append(Problem(model_dir, "hidden directory: Triton loads every subdirectory of a repository as a "
                                           "model, hidden ones included; move it out of the repository"))
        return problems
    config_path = model_dir / CONFIG_FILENAME
    if not config_path.is_file():
        problems.append(Problem(config_path, f"missing {CONFIG_FILENAME} (Triton can auto-complete configs only for "
                                             "some backends, and not with --disable-auto-complete-config)"))
        return problems
    try:
        config = read_config(config_path)
    except ConfigParseError as exc:
        return [*problems, Problem(config_path, exc.detail, exc.line, exc.column)]
    except RepositoryError as exc:
        return [*problems, Problem(config_path, exc.message)]
    problems += [Problem(config_path, m) for m in config_problems(config, model_dir, repository_models)]
    problems += _version_problems(config, model_dir, config_path)
    return problems


# --------------------------------------------------------------------------------------------------------------
# The config on its own


def _element_count(dims: Sequence[int]) -> int:
    return WILDCARD if WILDCARD in dims else math.prod(dims)


def _chunks(dims: Sequence[int]) -> list[int]:
    """Element counts of the runs between variable-size dims (Triton's reshape rule)."""
    out, current = [], 1
    for d in dims:
        if d == WILDCARD:
            out.append(current)
            current = 1
        else:
            current *= d
    return [*out, current]


def _io_problems(kind: str, entry: mc.ModelInput | mc.ModelOutput, max_batch_size: int) -> list[str]:
    if not entry.name:
        return [f"an {kind} has no name"]
    label = f"{kind} '{entry.name}'"
    out = []
    if entry.data_type == mc.TYPE_INVALID:
        out.append(f"{label} has no data_type")
    if not entry.dims:
        out.append(f"{label} has no dims")
    if any(d < 1 and d != WILDCARD for d in entry.dims):
        out.append(f"{label} dims {list(entry.dims)}: each dim must be >= 1, or -1 for a variable size")
    if entry.HasField("reshape"):
        shape = list(entry.reshape.shape)
        if not shape and max_batch_size == 0:
            out.append(f"{label} has an empty reshape, which a non-batching model cannot have (scalars)")
        if any(d < 1 and d != WILDCARD for d in shape):
            out.append(f"{label} reshape {shape}: each dim must be >= 1, or -1 for a variable size")
        dims_count, reshape_count = _element_count(entry.dims), _element_count(shape)  # empty reshape counts 1
        size_ok = dims_count == reshape_count
        if size_ok and dims_count == WILDCARD:
            size_ok = _chunks(entry.dims) == _chunks(shape)
        if not size_ok:
            out.append(f"{label} dims {list(entry.dims)} and reshape {shape} hold different numbers of elements")
    return out


def _platform_problems(config: mc.ModelConfig) -> list[str]:
    if config.platform and config.platform not in PLATFORMS:
        return [f"unknown platform '{config.platform}' (known: {', '.join(PLATFORMS)})"]
    if config.platform and config.backend:
        expected = PLATFORMS[config.platform][0]
        if expected and config.backend != expected:
            return [f"platform '{config.platform}' runs on backend '{expected}', but backend is '{config.backend}'"]
    if not config.platform and not config.backend:
        return ["neither platform nor backend is set, so Triton cannot tell how to run the model"]
    return []


def config_problems(
    config: mc.ModelConfig, model_dir: Path, repository_models: Iterable[str] | None = None
) -> list[str]:
    """Problems of a parsed config on its own (and of the files it names inside ``model_dir``)."""
    out = []
    if config.name and config.name != model_dir.name:
        out.append(f"name '{config.name}' does not match the model directory name '{model_dir.name}'")
    out += _platform_problems(config)
    mbs = config.max_batch_size
    if mbs < 0:
        out.append(f"max_batch_size must be >= 0, got {mbs}")
    for kind, entries in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for entry in entries:
            out += _io_problems(kind, entry, mbs)
            if entry.name in seen:
                out.append(f"{kind} '{entry.name}' is listed twice")
            seen.add(entry.name)
            if kind == "output" and entry.label_filename and not (model_dir / entry.label_filename).is_file():
                out.append(f"output '{entry.name}' names label file '{entry.label_filename}', which is missing")
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > mbs:
                out.append(f"dynamic_batching preferred_batch_size {size} must be in [1, max_batch_size={mbs}]")
    input_names = {i.name for i in config.input}
    for warmup in config.model_warmup:
        if warmup.batch_size < 1 or (mbs > 0 and warmup.batch_size > mbs) or (mbs == 0 and warmup.batch_size != 1):
            out.append(f"model_warmup '{warmup.name}' batch_size {warmup.batch_size} is out of range")
        for key, data in warmup.inputs.items():
            if key not in input_names:
                out.append(f"model_warmup '{warmup.name}' feeds '{key}', which is not a config input")
            if data.input_data_file and not (model_dir / "warmup" / data.input_data_file).is_file():
                out.append(f"model_warmup '{warmup.name}' data file warmup/{data.input_data_file} is missing")
    out += accelerator_problems(config)
    if config.HasField("ensemble_scheduling") and repository_models is not None:
        known = set(repository_models)
        for step in config.ensemble_scheduling.step:
            if step.model_name not in known:
                out.append(f"ensemble step uses model '{step.model_name}', which is not in the repository")
    return out


# --------------------------------------------------------------------------------------------------------------
# Versions and model files


def loaded_versions(config: mc.ModelConfig, available: Iterable[int]) -> list[int]:
    """The versions Triton loads under the config's version_policy (default: latest 1)."""
    versions = sorted(available)
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if which == "all":
        return versions
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in versions if v in wanted]
    count = policy.latest.num_versions if which == "latest" else 1
    return versions[-count:] if count > 0 else []


def model_filename(config: mc.ModelConfig) -> str | None:
    """The model file or directory name Triton looks for in a version directory (None: none needed/known)."""
    if config.default_model_filename:
        return config.default_model_filename
    if config.platform in PLATFORMS:
        return PLATFORMS[config.platform][1]
    return BACKEND_FILENAMES.get(config.backend)


def _is_onnx(config: mc.ModelConfig) -> bool:
    return config.platform == ONNX_PLATFORM or (not config.platform and config.backend == ONNX_BACKEND)


def _version_problems(config: mc.ModelConfig, model_dir: Path, config_path: Path) -> list[Problem]:
    available = version_dirs(model_dir)
    if not available:
        return [Problem(model_dir, "no version directories (numeric subdirectories such as 1/)")]
    versions = loaded_versions(config, available)
    if not versions:
        return [Problem(config_path, f"version_policy selects none of the versions on disk {list(available)}")]
    filename = model_filename(config)
    problems = []
    for version in versions:
        if filename is None:
            continue
        model_file = available[version] / filename
        if not model_file.exists():
            problems.append(Problem(model_file, f"missing model file for version {version}"))
        elif _is_onnx(config) and model_file.is_file():
            problems += [Problem(model_file, m) for m in onnx_problems(config, model_file)]
        elif config.platform == "tensorrt_plan" and model_file.is_file():
            problems += [Problem(model_file, m) for m in plan_problems(config, model_file)]
    return problems


def _model_shape(entry: mc.ModelInput | mc.ModelOutput, max_batch_size: int) -> list[int]:
    """The shape the model itself should declare for a config entry."""
    shape = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
    return [WILDCARD, *shape] if max_batch_size > 0 else shape


def _tensor_mismatch(entry: mc.ModelInput | mc.ModelOutput, sig: TensorSignature, mbs: int, label: str) -> list[str]:
    out = []
    try:
        model_type = onnx_to_triton(sig.elem_type)
    except InvalidModelError:
        return [f"{label} has ONNX type {onnx_type_name(sig.elem_type)}, which Triton cannot serve"]
    if model_type != entry.data_type:
        out.append(f"{label}: config data_type {triton_type_name(entry.data_type)}, model has "
                   f"{triton_type_name(model_type)} ({onnx_type_name(sig.elem_type)})")
    if sig.shape is None:
        return out
    model = [WILDCARD if d is None else d for d in sig.shape]
    expected = _model_shape(entry, mbs)
    source = "reshape" if entry.HasField("reshape") else "dims"
    batch_note = " with the implicit batch dim of max_batch_size > 0" if mbs > 0 else ""
    if mbs > 0 and (not model or model[0] != WILDCARD):
        out.append(f"{label}: max_batch_size {mbs} needs a dynamic first dim in the model, but the model shape is "
                   f"{model}; set max_batch_size: 0 and list the full shape in dims")
    elif len(model) != len(expected) or any(m != WILDCARD and m != e for m, e in zip(model, expected)):
        out.append(f"{label}: config {source} {list(expected[1:] if mbs > 0 else expected)}{batch_note} "
                   f"do not match the model shape {model}")
    return out


def onnx_problems(config: mc.ModelConfig, model_file: Path) -> list[str]:
    """How the config's inputs/outputs disagree with the ONNX model file (empty when they agree)."""
    try:
        model = read_onnx(model_file, load_external_data=False)
        inputs, outputs = graph_signature(model, require_shapes=False)
    except InvalidModelError as exc:
        return [exc.message]
    mbs = config.max_batch_size
    out = []
    model_inputs = {s.name: s for s in inputs}
    model_outputs = {s.name: s for s in outputs}
    for kind, entries, tensors in (("input", config.input, model_inputs), ("output", config.output, model_outputs)):
        for entry in entries:
            label = f"{kind} '{entry.name}'"
            sig = tensors.get(entry.name)
            if sig is None:
                out.append(f"config {label} is not an {kind} of the model (model {kind}s: {', '.join(tensors) or '-'})")
            else:
                out += _tensor_mismatch(entry, sig, mbs, label)
    configured = {i.name for i in config.input}
    for name in model_inputs:
        if name not in configured:
            out.append(f"model input '{name}' is missing from the config (Triton needs every model input listed)")
    return out
