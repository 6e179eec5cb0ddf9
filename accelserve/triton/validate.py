"""``accelserve repo validate``: check a model repository the way Triton would load it, without a server.

Checked per model directory: the name, the ``config.pbtxt`` syntax (file, line and column on errors), Triton
core's rules for the config (:mod:`accelserve.triton.core_rules`: dims and reshape, dynamic and sequence
batching with control and state tensors, ensembles, instance groups, warmup), that each version Triton would load
under ``version_policy`` has its model file, and for ONNX models what Triton's onnxruntime backend checks against
the model file (:mod:`accelserve.triton.ort_rules`). A config left out or without inputs/outputs is auto-completed
as Triton does for ONNX models. Values Triton accepts but no machine could serve (a billion instances, a batch
larger than the memory) are errors; values this machine cannot serve well are warnings. All problems are
collected; nothing stops at the first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import RepositoryError
from accelserve.tensorrt.accelerator import accelerator_problems
from accelserve.tensorrt.plan_entry import plan_problems
from accelserve.triton.config import CONFIG_FILENAME, ONNX_BACKEND, ONNX_PLATFORM, ConfigParseError, read_config
from accelserve.triton.core_rules import ENSEMBLE_PLATFORM, core_problems, ensemble_step_problems
from accelserve.triton.naming import triton_name_problems
from accelserve.triton.ort_rules import onnx_problems
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
#: model files from which Triton's core auto-completes the backend of a config that names none
AUTOCOMPLETE_FILES = {"model.onnx": "onnxruntime", "model.plan": "tensorrt", "model.pt": "pytorch",
                      "model.savedmodel": "tensorflow", "model.graphdef": "tensorflow", "model.xml": "openvino"}
#: bytes each model instance needs at the least besides its weights (a session, its threads and arenas)
INSTANCE_OVERHEAD_BYTES = 16 << 20
#: CPU instances per core above which the instances only compete for the cores
INSTANCES_PER_CPU_WARNING = 4


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a repository: where (file, and line/column when known) and what. A ``warning`` does not
    stop Triton from loading the model, but it will not serve well here."""

    path: Path
    message: str
    line: int | None = None
    column: int | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


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
    configs = {}
    for model_dir in model_dirs:  # for the ensembles' step checks; unreadable configs are reported below
        try:
            configs[model_dir.name] = read_config(model_dir / CONFIG_FILENAME)
        except RepositoryError:
            pass
    problems: list[Problem] = []
    for model_dir in model_dirs:
        problems += validate_model_dir(model_dir, repository_models=names, repository_configs=configs)
    reported = {p.path for p in problems}
    problems += [Problem(left.path, f"leftover staging directory of an interrupted `accelserve repo add` "
                                    f"({left.owner()}); "
                                    + ("the next add removes it, or delete it" if left.pid else "delete it"))
                 for left in staging_leftovers(root) if left.path not in reported]
    return problems


def _autocomplete_backend(config: mc.ModelConfig, model_dir: Path) -> None:
    """AutoCompleteBackendFields (Triton core): fill backend/platform from each other or from the model file."""
    if not config.backend and config.platform in PLATFORMS:
        config.backend = PLATFORMS[config.platform][0]
    if not config.backend and not config.platform:
        versions = version_dirs(model_dir)
        latest = versions[max(versions)] if versions else None
        filename = config.default_model_filename
        for candidate, backend in AUTOCOMPLETE_FILES.items():
            if (filename or candidate) == candidate and latest is not None and (latest / candidate).exists():
                config.backend = backend
                break
    if config.backend == ONNX_BACKEND and not config.platform:
        config.platform = ONNX_PLATFORM


def validate_model_dir(model_dir: str | Path, *, repository_models: Iterable[str] | None = None,
                       repository_configs: dict[str, mc.ModelConfig] | None = None) -> list[Problem]:
    """Every problem of one model directory; ``repository_models`` (names) and ``repository_configs`` let an
    ensemble's steps be checked against the models of the repository."""
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
    if config_path.is_file():
        try:
            config = read_config(config_path)
        except ConfigParseError as exc:
            return [*problems, Problem(config_path, exc.detail, exc.line, exc.column)]
        except RepositoryError as exc:
            return [*problems, Problem(config_path, exc.message)]
    else:
        config = mc.ModelConfig()  # Triton auto-completes a missing config from the model file, where it can
    _autocomplete_backend(config, model_dir)
    if not config.name:
        config.name = model_dir.name
    if not config.backend and not config.platform:
        if not config_path.is_file():
            return [*problems, Problem(config_path, f"missing {CONFIG_FILENAME}, and no model file from which Triton "
                                                    "could auto-complete one (model.onnx, model.plan, model.pt, ...)")]
        return [*problems, Problem(config_path, f"Could not determine backend for model '{model_dir.name}' with no "
                                                "backend in model configuration: set 'backend' or 'platform'")]
    problems += [Problem(config_path, m) for m in config_problems(config, model_dir, repository_models)]
    if config.HasField("ensemble_scheduling") and repository_configs:
        problems += [Problem(config_path, m) for m in ensemble_step_problems(config, repository_configs)]
    problems += _version_problems(config, model_dir, config_path)
    return problems


# --------------------------------------------------------------------------------------------------------------
# The config on its own


def _platform_problems(config: mc.ModelConfig) -> list[str]:
    if config.platform and config.platform not in PLATFORMS and not config.backend:
        return [f"unexpected platform type '{config.platform}' (known: {', '.join(PLATFORMS)})"]
    if config.platform in PLATFORMS and config.backend and config.platform != ENSEMBLE_PLATFORM:
        expected = PLATFORMS[config.platform][0]
        if config.backend in BACKEND_FILENAMES and config.backend != expected:
            return [f"unexpected 'platform' and 'backend' pair, got:{config.platform}, {config.backend} (platform "
                    f"'{config.platform}' runs on backend '{expected}')"]
    return []


def config_problems(
    config: mc.ModelConfig, model_dir: Path, repository_models: Iterable[str] | None = None
) -> list[str]:
    """Problems of a parsed config on its own (and of the files it names inside ``model_dir``)."""
    out = []
    if config.name and config.name != model_dir.name:
        out.append(f"name '{config.name}' does not match the model directory name '{model_dir.name}'")
    out += _platform_problems(config)
    out += core_problems(config, model_dir, repository_models)
    out += accelerator_problems(config)
    for entry in config.output:
        if entry.label_filename and not (model_dir / entry.label_filename).is_file():
            out.append(f"output '{entry.name}' names label file '{entry.label_filename}', which is missing")
    return out


# --------------------------------------------------------------------------------------------------------------
# What this machine can serve


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


def _sample_bytes(config: mc.ModelConfig) -> int:
    """Bytes of one batch element over all inputs and outputs (variable dims counted as 1; a string as 4 bytes)."""
    from accelserve.triton.dtypes import triton_to_numpy

    total = 0
    for entry in [*config.input, *config.output]:
        count = 1
        for d in entry.dims:
            count *= max(d, 1)
        try:
            size = 4 if entry.data_type == mc.TYPE_STRING else triton_to_numpy(entry.data_type).itemsize
        except Exception:  # an unknown type is reported elsewhere
            size = 1
        total += count * size
    return total


def capacity_problems(config: mc.ModelConfig, model_bytes: int, *, memory: int | None = None,
                      cpus: int | None = None) -> list[tuple[str, str]]:
    """(severity, message) for values Triton accepts but that cannot be served on this machine: more instances or
    a larger full batch than the memory holds (errors), more CPU instances than the cores can run (warning)."""
    memory = physical_memory_bytes() if memory is None else memory
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    out = []
    instances = sum(max(g.count, 1) for g in config.instance_group) if config.instance_group else 1
    if memory:
        need = instances * (model_bytes + INSTANCE_OVERHEAD_BYTES)
        if need > memory:
            out.append(("error", f"instance_group asks for {instances:,} instances; each loads the model "
                                 f"({_gib(model_bytes)}) plus at least {INSTANCE_OVERHEAD_BYTES >> 20} MiB, "
                                 f"{_gib(need)} in all, more than this machine's {_gib(memory)} of memory"))
        batch_bytes = config.max_batch_size * _sample_bytes(config)
        if batch_bytes > memory:
            out.append(("error", f"max_batch_size {config.max_batch_size:,}: one full batch of these inputs and "
                                 f"outputs holds at least {_gib(batch_bytes)}, more than this machine's "
                                 f"{_gib(memory)} of memory (Triton would accept a batch it cannot run)"))
    cpu_instances = sum(max(g.count, 1) for g in config.instance_group
                        if g.kind != mc.ModelInstanceGroup.KIND_GPU) if config.instance_group else 1
    if not out and cpu_instances > INSTANCES_PER_CPU_WARNING * cpus:
        out.append(("warning", f"{cpu_instances} CPU instances on a machine with {cpus} CPU(s): the instances only "
                               "compete for the cores (throughput rarely improves past one or two per core)"))
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


def _file_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _version_problems(config: mc.ModelConfig, model_dir: Path, config_path: Path) -> list[Problem]:
    available = version_dirs(model_dir)
    if not available:
        return [Problem(model_dir, "no version directories (numeric subdirectories such as 1/)")]
    versions = loaded_versions(config, available)
    if not versions:
        return [Problem(config_path, f"version_policy selects none of the versions on disk {list(available)}")]
    filename = model_filename(config)
    problems = []
    model_bytes = 0
    for version in versions:
        if filename is None:
            continue
        model_file = available[version] / filename
        if not model_file.exists():
            problems.append(Problem(model_file, f"missing model file for version {version}"))
            continue
        model_bytes = max(model_bytes, _file_bytes(available[version]))
        if _is_onnx(config) and model_file.is_file():
            problems += [Problem(model_file, m) for m in onnx_problems(config, model_file)]
        elif config.platform == "tensorrt_plan" and model_file.is_file():
            problems += [Problem(model_file, m) for m in plan_problems(config, model_file)]
    problems += [Problem(config_path, message, severity=severity)
                 for severity, message in capacity_problems(config, model_bytes)]
    return problems
