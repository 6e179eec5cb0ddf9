"""A shadow of a model repository that runs ONNX models through Triton's python backend.

The native ``onnxruntime`` (and ``tensorrt``) backends ship only in NVIDIA's containers; the tritonserver in the
``nvidia-pytriton`` wheel has only the ``python`` backend. So that a repository written for production can still be
served here, :func:`build_shadow_repository` makes a shadow of it in a temporary directory:

* a model whose backend is available locally is linked in unchanged;
* an ONNX Runtime model whose backend is missing gets a directory of its own: its ``config.pbtxt`` is the original
  rewritten to ``backend: "python"`` (see :func:`stand_in_config`), and every version directory holds symlinks to
  the original files (model, external data, anything else) plus a link to accelserve's python model
  (``python_model/model.py``), which runs the same ONNX file with ONNX Runtime (and loads
  ``python_model/sequences.py`` from beside its real path).

The user's repository is never modified and still deploys unchanged to a production Triton.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import RepositoryError, ServerError
from accelserve.triton.config import CONFIG_FILENAME, config_to_text, read_config

#: model-config parameter naming the ONNX file (inside the version directory) the python model runs
ONNX_FILE_PARAMETER = "accelserve_onnx_file"
#: file name of accelserve's python model inside a shadow version directory (set as default_model_filename)
PYTHON_MODEL_FILENAME = "accelserve_onnxruntime_model.py"
PYTHON_MODEL_SOURCE = Path(__file__).parent / "python_model" / "model.py"
#: the python model linked instead when the onnxruntime backend would refuse to load the version, and its reason file
LOAD_ERROR_SOURCE = Path(__file__).parent / "python_model" / "load_error.py"
LOAD_ERROR_FILENAME = "accelserve_load_error.txt"

#: legacy ``platform`` values and the backend that serves them
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
#: backends whose models the python stand-in can run (with ONNX Runtime)
STAND_IN_BACKENDS = {"onnxruntime"}
DEFAULT_ONNX_FILENAME = "model.onnx"


def model_backend(config: mc.ModelConfig) -> str | None:
    """The backend that serves ``config``: its ``backend``, else the one its ``platform`` implies (None for
    an ensemble, which needs no backend)."""
    if config.backend:
        return config.backend
    if config.platform == "ensemble":
        return None
    return PLATFORM_BACKENDS.get(config.platform, config.platform or None)


def stand_in_config(config: mc.ModelConfig, onnx_filename: str) -> tuple[mc.ModelConfig, list[str]]:
    """The config of the python stand-in for an ONNX Runtime model, and what was changed (for the user).

    Kept: name, inputs, outputs, max_batch_size, dynamic/sequence batching, instance counts, warmup, version
    policy, parameters (ONNX Runtime-backend parameters such as ``intra_op_thread_count`` are honored by the
    stand-in). Changed: backend -> python, platform/runtime cleared, ``optimization.execution_accelerators``
    removed (ONNX Runtime-backend specific), GPU instance groups -> CPU (the stand-in runs on the CPU),
    ``default_model_filename`` -> the stand-in's model.py, the ONNX file named in a parameter.
    """
    new = mc.ModelConfig()
    new.CopyFrom(config)
    changes = [f"backend {model_backend(config)!r} -> 'python' (ONNX Runtime stand-in)"]
    new.backend = "python"
    new.platform = ""
    new.runtime = ""
    if new.optimization.HasField("execution_accelerators"):
        new.optimization.ClearField("execution_accelerators")
        changes.append("optimization.execution_accelerators removed")
    for group in new.instance_group:
        if group.kind == mc.ModelInstanceGroup.KIND_GPU:
            count = max(group.count, 1) * max(len(group.gpus), 1)
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            group.count = count
            del group.gpus[:]
            changes.append(f"instance group {group.name or '(unnamed)'}: KIND_GPU -> KIND_CPU x{count}")
    new.default_model_filename = PYTHON_MODEL_FILENAME
    new.parameters[ONNX_FILE_PARAMETER].string_value = onnx_filename
    return new, changes


@dataclass
class ShadowRepository:
    """Where the shadow is, and which models run through the stand-in (name -> what was changed).

    A stand-in model directory of the shadow is a symlink to a generation directory beside the shadow
    (``<shadow>.models/<name>.<n>``); :meth:`refresh` rebuilds a model whose directory changed in the user's
    repository (a version added by ``repo add``, a new config) into a new generation and swaps the link atomically,
    so Triton's repository poller or load API sees the change, never a half-built directory.
    """

    path: Path
    source: Path = Path()
    available: set[str] = field(default_factory=set)
    stand_ins: dict[str, list[str]] = field(default_factory=dict)
    native: list[str] = field(default_factory=list)
    #: models linked unchanged although their backend is missing or their config unreadable (Triton reports them)
    unservable: dict[str, str] = field(default_factory=dict)
    _fingerprints: dict[str, tuple] = field(default_factory=dict)
    _generation: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def generations(self) -> Path:
        return self.path.with_name(self.path.name + ".models")

    def refresh(self) -> list[str]:
        """Bring the shadow up to date with the user's repository; returns the names of models added, changed or
        removed."""
        changed = []
        current = {d.name: d for d in _model_dirs(self.source)}
        for name in sorted(set(self._fingerprints) - set(current)):
            (self.path / name).unlink(missing_ok=True)
            self._fingerprints.pop(name)
            self.stand_ins.pop(name, None)
            self.unservable.pop(name, None)
            if name in self.native:
                self.native.remove(name)
            changed.append(name)
        for name, model_dir in current.items():
            fingerprint = _fingerprint(model_dir)
            if self._fingerprints.get(name) == fingerprint:
                continue
            self._shadow_model(model_dir)
            self._fingerprints[name] = fingerprint
            changed.append(name)
        return changed

    def _shadow_model(self, model_dir: Path) -> None:
        name = model_dir.name
        self.stand_ins.pop(name, None)
        self.unservable.pop(name, None)
        if name in self.native:
            self.native.remove(name)
        try:
            config = read_config(model_dir / CONFIG_FILENAME) if (model_dir / CONFIG_FILENAME).is_file() else None
        except RepositoryError as exc:
            config = None
            self.unservable[name] = exc.message
        backend = model_backend(config) if config is not None else None
        if config is None or backend is None or backend in self.available or backend not in STAND_IN_BACKENDS:
            if config is not None and backend is not None and backend not in self.available \
                    and backend not in STAND_IN_BACKENDS:
                self.unservable[name] = f"backend '{backend}' is not available in this tritonserver"
            else:
                self.native.append(name)
            _swap_link(model_dir.resolve(), self.path / name)
            return
        target = self.generations / f"{name}.{next(self._generation)}"
        self.stand_ins[name] = _build_stand_in(model_dir, target, config)
        _swap_link(target, self.path / name)


def model_directories(repository: Path) -> list[Path]:
    """Model directories of a repository: its subdirectories, except hidden ones (``.git``, ``.ipynb_checkpoints``)."""
    if not repository.is_dir():
        raise RepositoryError(
            f"model repository {repository} is not a directory",
            hint="pass the repository root, the directory that holds one subdirectory per model",
        )
    models = _model_dirs(repository)
    if not models:
        raise RepositoryError(
            f"model repository {repository} holds no models (no subdirectories)",
            hint="point at the directory that holds <model>/config.pbtxt and <model>/<version>/",
        )
    return models


def _model_dirs(repository: Path) -> list[Path]:
    return sorted(d for d in repository.iterdir() if d.is_dir() and not d.name.startswith("."))


def _fingerprint(model_dir: Path) -> tuple:
    """What changes when anything in a model directory changes: every entry's path, mtime and size."""
    entries = []
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((str(path.relative_to(model_dir)), st.st_mtime_ns, st.st_size))
    return tuple(entries)


def _swap_link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (a new symlink renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.accelserve-link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def plan_stand_ins(repository: Path, available: set[str]) -> dict[str, mc.ModelConfig]:
    """Configs of the models that need the stand-in (ONNX Runtime models whose backend is not in ``available``).

    A model whose backend is missing and that the stand-in cannot run (TensorRT plans, TorchScript, ...) is a
    ServerError: it would fail to load anyway.
    """
    needed: dict[str, mc.ModelConfig] = {}
    unservable = []
    for model_dir in model_directories(repository):
        config_path = model_dir / CONFIG_FILENAME
        if not config_path.is_file():
            continue  # the backend auto-completes it, or Triton reports the problem when loading
        config = read_config(config_path)
        backend = model_backend(config)
        if backend is None or backend in available:
            continue
        if backend in STAND_IN_BACKENDS:
            needed[model_dir.name] = config
        else:
            unservable.append(f"{model_dir.name} (backend '{backend}')")
    if unservable:
        raise ServerError(
            f"model(s) {', '.join(unservable)} need a Triton backend that this tritonserver lacks (it has: "
            f"{', '.join(sorted(available)) or 'none'}), and accelserve can stand in only for ONNX Runtime models",
            hint="serve this repository with a full Triton install (--tritonserver /opt/tritonserver/bin/tritonserver, "
            "e.g. in an NGC tritonserver container), or add the model as ONNX",
        )
    return needed


def _build_stand_in(model_dir: Path, target: Path, original: mc.ModelConfig) -> list[str]:
    """Write the stand-in directory of one model at ``target``; returns what was changed in its config."""
    onnx_filename = original.default_model_filename or DEFAULT_ONNX_FILENAME
    config, changes = stand_in_config(original, onnx_filename)
    target.mkdir(parents=True)
    (target / CONFIG_FILENAME).write_text(config_to_text(config), encoding="utf-8")
    for entry in sorted(model_dir.iterdir()):
        if entry.name == CONFIG_FILENAME:
            continue
        if entry.is_dir() and entry.name.isdigit():
            version_dir = target / entry.name
            version_dir.mkdir()
            for item in entry.iterdir():
                if item.name != PYTHON_MODEL_FILENAME:
                    _link(item, version_dir / item.name)
            problems = _backend_problems(original, model_dir.name, entry / onnx_filename)
            if problems:  # load fails with the onnxruntime backend's reason, as it would in production
                (version_dir / LOAD_ERROR_FILENAME).write_text("; ".join(problems), encoding="utf-8")
                _link(LOAD_ERROR_SOURCE, version_dir / PYTHON_MODEL_FILENAME)
            else:
                _link(PYTHON_MODEL_SOURCE, version_dir / PYTHON_MODEL_FILENAME)
        else:
            _link(entry, target / entry.name)  # label files, other configs, ...
    return changes


def _backend_problems(config: mc.ModelConfig, name: str, model_file: Path) -> list[str]:
    """What Triton's onnxruntime backend would refuse when loading ``model_file`` with ``config``."""
    from accelserve.triton.ort_rules import onnx_problems

    from accelserve.errors import InvalidModelError
    from accelserve.onnx_io import read_onnx

    try:
        read_onnx(model_file, load_external_data=False)
    except InvalidModelError:
        return []  # no file, or not ONNX: the stand-in's ONNX Runtime reports it when loading, as the backend would
    named = mc.ModelConfig()
    named.CopyFrom(config)
    named.name = named.name or name
    return onnx_problems(named, model_file)


def _link(src: Path, dst: Path) -> None:
    os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())


def build_shadow_repository(repository: Path, destination: Path, available: set[str], *,
                            always: bool = False, strict: bool = True) -> ShadowRepository | None:
    """Build the shadow under ``destination`` (which must not exist); None when every model can be served natively
    (unless ``always``: a repository served with polling or explicit model control may gain stand-in models later).
    With ``strict`` a model whose backend is missing and that the stand-in cannot run is a ServerError up front;
    otherwise it is linked unchanged, and Triton reports it as that model's load failure."""
    repository = Path(repository).resolve()
    if strict:
        needed = plan_stand_ins(repository, available)
        if not needed and not always:
            return None
    else:
        model_directories(repository)  # a missing or empty repository is still an error
    destination.mkdir(parents=True)
    shadow = ShadowRepository(path=destination, source=repository, available=set(available))
    shadow.refresh()
    if not always and not shadow.stand_ins:
        return None
    return shadow
