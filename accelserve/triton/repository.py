"""Adding ONNX models to a Triton model repository: versioned, atomic, never overwriting a version.

Layout written (Triton's)::

    REPO/NAME/config.pbtxt
    REPO/NAME/<version>/model.onnx   (+ its external-data files, under the names the model refers to)

Each add creates the next integer version (highest numeric directory + 1, starting at 1). An existing model's
config.pbtxt is regenerated only when the new model has the same client-visible signature (input/output names,
types, dims, and batching on/off) as the existing config, because Triton serves every loaded version with the one
config; the existing ``version_policy`` is kept. Otherwise the add fails, unless ``replace_config`` is given
(then the fresh config replaces the old one and older versions stay on disk; under Triton's default policy,
latest 1, only the new version is served).

Atomicity: everything is staged in a temporary directory and moved into place with ``os.rename`` (a new model
directory, or a new version directory) and ``os.replace`` (config.pbtxt). Triton loads *every* subdirectory of a
repository as a model, hidden ones included, so staging happens next to the repository when its parent is
writable and on the same filesystem; otherwise inside the model directory (Triton ignores non-numeric version
directories) or, for a new model, inside the repository under a hidden name (which only a killed process could
leave behind; ``repo validate`` reports it). A failure at any point removes the staging directory and leaves the
repository as it was. Staging directories carry their owner's PID (see ``accelserve.leftovers``): an add removes
those of processes that died (``kill -9`` mid-write) and says so; ``repo validate`` reports them.

Re-runs: a model whose bytes equal the latest version's adds no version (``force_new_version`` overrides); when
the serving options change the config that every version shares, the result lists what changed, field by field.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf import json_format

from accelserve.artifact import ModelArtifact
from accelserve.errors import AccelserveError, InvalidModelError, RepositoryError
from accelserve.leftovers import Leftover, find_leftovers, make_owned_dir, remove_stale
from accelserve.onnx_io import external_data_files, read_onnx
from accelserve.triton.config import (
    CONFIG_FILENAME,
    ONNX_BACKEND,
    ONNX_PLATFORM,
    ConfigParseError,
    ModelConfig,
    TritonModelOptions,
    build_config,
    config_to_text,
    max_shape_note,
    read_config,
    signature_differences,
)
from accelserve.triton.naming import check_model_name

MODEL_FILENAME = "model.onnx"
STAGING_MARKER = ".accelserve-staging-"
_NUMERIC = re.compile(r"\d+")
_VERSION_RACE_RETRIES = 16


@dataclass(frozen=True)
class AddResult:
    """What :func:`add_model` wrote (or, with ``dry_run``, would write)."""

    name: str
    version: int
    model_dir: Path
    version_dir: Path
    config_path: Path
    config: ModelConfig
    created_model: bool  #: the model directory is new
    config_written: bool  #: config.pbtxt was created or changed
    files: tuple[Path, ...] = ()  #: files of the new version (model + external data)
    notes: tuple[str, ...] = ()
    dry_run: bool = False
    #: the model equals this existing version byte for byte, so no version was added (``version`` is that one)
    identical_to: int | None = None
    #: what the new config changes in the existing one ("field: old -> new"), when it was rewritten
    config_changes: tuple[str, ...] = ()
    #: staging directories of interrupted adds (dead processes) that this add removed
    removed_leftovers: tuple[Leftover, ...] = ()

    @property
    def config_text(self) -> str:
        return config_to_text(self.config)


# --------------------------------------------------------------------------------------------------------------
# Versions


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Version directories as Triton sees them: numeric names without leading zeros."""
    if not model_dir.is_dir():
        return {}
    out = {}
    for child in model_dir.iterdir():
        if child.is_dir() and _NUMERIC.fullmatch(child.name) and (child.name == "0" or child.name[0] != "0"):
            out[int(child.name)] = child
    return dict(sorted(out.items()))


def next_version(model_dir: Path) -> int:
    """Highest numeric directory + 1 (leading-zero names count too, so no number is ever reused); 1 when none."""
    if not model_dir.is_dir():
        return 1
    numbers = [int(c.name) for c in model_dir.iterdir() if c.is_dir() and _NUMERIC.fullmatch(c.name)]
    return max(numbers, default=0) + 1


# --------------------------------------------------------------------------------------------------------------
# Reading the model


def _open_model(model: str | Path | ModelArtifact) -> tuple[ModelArtifact, onnx.ModelProto, list[Path]]:
    artifact = model if isinstance(model, ModelArtifact) else ModelArtifact(Path(model))
    header = read_onnx(artifact.path, load_external_data=False)  # clear errors: missing/truncated/foreign
    files = [artifact.path, *external_data_files(header, artifact.path.parent)]  # = artifact.files(), parsed once
    try:
        onnx.checker.check_model(str(artifact.path))  # by path: handles external data and models > 2 GB
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidModelError(
            f"{artifact.path} fails the ONNX checker: {first}",
            hint="fix or re-export the model; Triton would fail to load it",
        ) from exc
    return artifact, header, files


def _platform_of(config: ModelConfig) -> str:
    if not config.platform and config.backend == ONNX_BACKEND:
        return ONNX_PLATFORM
    return config.platform or config.backend


def _describe_model(model: str | Path | ModelArtifact, name: str, options: TritonModelOptions | None,
                    onnx_source: str | Path | None, notes: list[str]
                    ) -> tuple[ModelArtifact, list[Path], ModelConfig, str]:
    """The artifact, its files, the config to serve it with, and its file name in a version directory.

    ``.plan`` files are TensorRT engines (a ``tensorrt_plan`` entry, signature from the engine or ``onnx_source``);
    anything else is read as ONNX."""
    from accelserve.tensorrt.plan_entry import PLAN_FILENAME, is_plan_file, plan_config

    path = model.path if isinstance(model, ModelArtifact) else Path(model)
    if is_plan_file(path):
        config, source = plan_config(path, name, onnx_source=onnx_source, options=options)
        notes.append(source)
        artifact = model if isinstance(model, ModelArtifact) else ModelArtifact(path, source_framework="tensorrt")
        return artifact, [path], config, PLAN_FILENAME
    if onnx_source is not None:
        raise RepositoryError("--from-onnx describes a TensorRT engine (.plan); this model is ONNX already")
    artifact, header, files = _open_model(model)
    return artifact, files, build_config(header, name, options), MODEL_FILENAME


def _merge_with_existing(
    model_dir: Path, new: ModelConfig, version: int, replace_config: bool, notes: list[str]
) -> ModelConfig:
    """The config to write for a new version of an existing model; raises when it is incompatible."""
    hint = (
        "add it under a new --name, or pass --replace-config to write a fresh config (older versions stay "
        "on disk; with Triton's default version policy only the newest is served)"
    )
    config_path = model_dir / CONFIG_FILENAME
    if not config_path.exists():
        if version_dirs(model_dir) and not replace_config:
            raise RepositoryError(
                f"{model_dir} has versions but no {CONFIG_FILENAME}, so the new model cannot be checked "
                f"against them", hint=hint,
            )
        return new
    try:
        old = read_config(config_path)
    except ConfigParseError as exc:
        if replace_config:
            notes.append(f"replaced unparsable {config_path}")
            return new
        raise RepositoryError(f"the existing config cannot be read: {exc.message}", hint=hint) from None
    diffs = signature_differences(old, new)
    if _platform_of(old) != _platform_of(new):
        diffs.insert(0, f"platform/backend '{old.platform or old.backend or '?'}' -> '{new.platform}'")
    if diffs:
        if replace_config:
            notes.append("replaced an incompatible config: " + "; ".join(diffs))
            return new
        raise RepositoryError(
            f"the new model does not match the existing config of '{model_dir.name}' ({config_path}): "
            + "; ".join(diffs),
            hint=hint,
        )
    merged = ModelConfig()
    merged.CopyFrom(new)
    if old.HasField("version_policy"):
        merged.version_policy.CopyFrom(old.version_policy)
        policy = old.version_policy
        if policy.HasField("specific") and version not in policy.specific.versions:
            notes.append(
                f"version_policy lists only versions {list(policy.specific.versions)}; Triton will not load "
                f"version {version} until you add it there"
            )
    return merged


# --------------------------------------------------------------------------------------------------------------
# Staging and committing


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _make_staging_dir(repo: Path, model_dir: Path) -> Path:
    """A fresh temporary directory on the filesystem of the move's target that Triton will not load as a model."""
    repo_abs = repo.absolute()
    target = model_dir.absolute() if model_dir.is_dir() else repo_abs
    outside = _nearest_existing(repo_abs.parent)
    prefix = _outside_prefix(repo_abs)
    same_fs = not target.exists() or os.stat(outside).st_dev == os.stat(target).st_dev
    if same_fs:
        try:
            return make_owned_dir(prefix, outside)
        except OSError:
            pass  # not writable: stage inside the target instead
    if not target.is_dir():
        raise RepositoryError(f"cannot create {repo}: {outside} is not writable")
    try:  # inside a model directory Triton ignores non-numeric names; inside a repository it would not
        return make_owned_dir(STAGING_MARKER, target)
    except OSError as exc:
        raise _os_error(f"creating a staging directory in {target}", exc) from None


def _outside_prefix(repo_abs: Path) -> str:
    return f".{repo_abs.name or 'repo'}{STAGING_MARKER}"


def _staging_places(repo: Path) -> list[tuple[Path, str]]:
    """(directory, name prefix) of every place an add of ``repo`` stages in: beside the repository, inside it, and
    inside each of its model directories."""
    repo_abs = repo.absolute()
    places = [(_nearest_existing(repo_abs.parent), _outside_prefix(repo_abs))]
    if repo_abs.is_dir():
        places.append((repo_abs, STAGING_MARKER))
        places += [(d, STAGING_MARKER) for d in sorted(repo_abs.iterdir())
                   if d.is_dir() and STAGING_MARKER not in d.name]
    return places


def staging_leftovers(repo: str | Path) -> list[Leftover]:
    """Staging directories of interrupted adds to ``repo`` (owner gone or unknown; never those of a running add)."""
    return [left for directory, prefix in _staging_places(Path(repo)) for left in find_leftovers(directory, prefix)]


def remove_staging_leftovers(repo: str | Path) -> list[Leftover]:
    """Remove the staging directories of adds to ``repo`` whose process died; returns what was removed."""
    return [left for directory, prefix in _staging_places(Path(repo)) for left in remove_stale(directory, prefix)]


def _os_error(action: str, exc: OSError) -> RepositoryError:
    reason = exc.strerror or str(exc)
    hint = "free some disk space and retry" if exc.errno == errno.ENOSPC else None
    return RepositoryError(f"{action} failed: {reason}; the repository was left unchanged", hint=hint)


def _created_dirs(repo: Path) -> list[Path]:
    """The directories that mkdir(parents=True) on ``repo`` would create, deepest first."""
    missing = []
    for candidate in (repo, *repo.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _commit_new_model(staged_model: Path, repo: Path, model_dir: Path) -> None:
    created = _created_dirs(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
        os.rename(staged_model, model_dir)
    except OSError as exc:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise RepositoryError(
                f"{model_dir} appeared while the model was being added (is another add running?); nothing was written",
                hint="run the command again; it will add a new version",
            ) from None
        raise _os_error(f"moving the model into {model_dir}", exc) from None
    _fsync_dir(repo)


def _commit_new_version(
    staged_version: Path, staged_config: Path | None, model_dir: Path, version: int
) -> int:
    """Move the version in (taking the next free number if another add won the race), then the config."""
    for _ in range(_VERSION_RACE_RETRIES):
        target = model_dir / str(version)
        try:
            os.rename(staged_version, target)
            break
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                version = max(version + 1, next_version(model_dir))
                continue
            raise _os_error(f"moving version {version} into {model_dir}", exc) from None
    else:
        raise RepositoryError(f"could not find a free version number in {model_dir}; is another add looping?")
    if staged_config is not None:
        try:
            os.replace(staged_config, model_dir / CONFIG_FILENAME)
        except OSError as exc:
            os.rename(target, staged_version)  # roll back: the version must not be served with the old config
            raise _os_error(f"replacing {model_dir / CONFIG_FILENAME}", exc) from None
    _fsync_dir(model_dir)
    return version


# --------------------------------------------------------------------------------------------------------------
# The API


def add_model(
    model: str | Path | ModelArtifact,
    repo: str | Path,
    name: str,
    options: TritonModelOptions | None = None,
    *,
    replace_config: bool = False,
    dry_run: bool = False,
    onnx_source: str | Path | None = None,
    force_new_version: bool = False,
) -> AddResult:
    """Add an ONNX model (or a TensorRT engine, ``.plan``) as the next version of ``name`` in the repository ``repo``.

    For an engine the config's signature is read from the engine with TensorRT, or, with ``onnx_source``, from the
    ONNX model it was built from (the result's notes say which).

    Creates ``repo`` and ``repo/name`` as needed. Raises a user error (and writes nothing) for a bad name, an
    unreadable or invalid model, options that do not fit the model, or a config incompatible with the existing
    model (unless ``replace_config``). With ``dry_run`` nothing is written and the result says what would be.
    A model identical (byte for byte, external data included) to the latest version adds no version unless
    ``force_new_version``; its config is still updated when the options changed (``result.identical_to``).
    """
    check_model_name(name)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"model repository {repo} exists but is not a directory")
    model_dir = repo / name
    if model_dir.exists() and not model_dir.is_dir():
        raise RepositoryError(f"{model_dir} exists but is not a directory", hint="remove it or choose another --name")
    notes: list[str] = []
    artifact, files, config, filename = _describe_model(model, name, options, onnx_source, notes)

    removed = () if dry_run else tuple(remove_staging_leftovers(repo))
    exists = model_dir.is_dir()
    version = next_version(model_dir)
    identical_to = (None if force_new_version or not exists
                    else _identical_version(model_dir, artifact, files, filename))
    if exists:
        served = version if identical_to is None else identical_to
        config = _merge_with_existing(model_dir, config, served, replace_config, notes)
    bounds_note = max_shape_note(config)
    if bounds_note:
        notes.append(bounds_note)
    config_text = config_to_text(config)
    config_path = model_dir / CONFIG_FILENAME
    config_unchanged = exists and config_path.is_file() and config_path.read_bytes() == config_text.encode()
    changes = () if config_unchanged or not exists else tuple(_config_changes(config_path, config))
    result = dict(
        name=name, model_dir=model_dir, config_path=config_path, config=config,
        created_model=not exists, config_written=not config_unchanged, dry_run=dry_run,
        identical_to=identical_to, config_changes=changes, removed_leftovers=removed,
    )
    if identical_to is not None:
        version = identical_to
        version_dir = model_dir / str(version)
        if not dry_run and not config_unchanged:
            _replace_config(repo, model_dir, config_text)
        return AddResult(version=version, version_dir=version_dir, notes=tuple(notes),
                         files=_version_files(version_dir, artifact, files, filename), **result)
    if dry_run:
        return AddResult(version=version, version_dir=model_dir / str(version),
                         files=_version_files(model_dir / str(version), artifact, files, filename), notes=tuple(notes),
                         **result)

    staging = _make_staging_dir(repo, model_dir)
    try:
        if exists:
            staged_version = staging / "version"
            staged_config = None if config_unchanged else staging / CONFIG_FILENAME
            _stage(artifact, staged_version, staged_config, config_text, filename)
            version = _commit_new_version(staged_version, staged_config, model_dir, version)
        else:
            staged_model = staging / name
            _stage(artifact, staged_model / str(version), staged_model / CONFIG_FILENAME, config_text, filename)
            _commit_new_model(staged_model, repo, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    version_dir = model_dir / str(version)
    return AddResult(version=version, version_dir=version_dir,
                     files=_version_files(version_dir, artifact, files, filename), notes=tuple(notes), **result)


def _identical_version(model_dir: Path, artifact: ModelArtifact, files: list[Path], filename: str) -> int | None:
    """The latest version when it holds exactly these bytes (model file and every external-data file), else None."""
    versions = version_dirs(model_dir)
    if not versions:
        return None
    latest, latest_dir = max(versions.items())
    for source, stored in zip(files, _version_files(latest_dir, artifact, files, filename), strict=True):
        if not stored.is_file() or not filecmp.cmp(source, stored, shallow=False):
            return None
    return latest


def _dict_changes(old: object, new: object, path: str) -> list[str]:
    """'path: old -> new' lines for what differs between two JSON-like values; a sub-message or list present on
    one side only is one line, a changed one is followed into its fields."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(old.keys() | new.keys())
                for line in _dict_changes(old.get(key), new.get(key), f"{path}.{key}" if path else key)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and any(
            isinstance(v, dict) for v in old + new):
        return [line for i, (o, n) in enumerate(zip(old, new)) for line in _dict_changes(o, n, f"{path}[{i}]")]

    def show(value: object) -> str:
        return "(unset)" if value is None else json.dumps(value, separators=(", ", ": "))

    return [f"{path}: {show(old)} -> {show(new)}"]


def _config_changes(config_path: Path, new: ModelConfig) -> list[str]:
    """'field: old -> new' for every field the new config changes in the one at ``config_path``."""
    try:
        old = read_config(config_path)
    except (RepositoryError, ConfigParseError):
        return []

    def as_dict(config: ModelConfig) -> dict[str, object]:
        return json_format.MessageToDict(config, preserving_proto_field_name=True)

    return _dict_changes(as_dict(old), as_dict(new), "")


def _replace_config(repo: Path, model_dir: Path, config_text: str) -> None:
    """Write only config.pbtxt (no new version): staged, then ``os.replace``."""
    staging = _make_staging_dir(repo, model_dir)
    try:
        staged = staging / CONFIG_FILENAME
        try:
            _write_text(staged, config_text)
            os.replace(staged, model_dir / CONFIG_FILENAME)
        except OSError as exc:
            raise _os_error(f"replacing {model_dir / CONFIG_FILENAME}", exc) from None
        _fsync_dir(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _version_files(version_dir: Path, artifact: ModelArtifact, files: list[Path], filename: str) -> tuple[Path, ...]:
    return (version_dir / filename, *(version_dir / f.relative_to(artifact.path.parent) for f in files[1:]))


def _stage(artifact: ModelArtifact, version_dir: Path, config_file: Path | None, config_text: str,
           filename: str) -> None:
    try:
        artifact.copy_to(version_dir, filename)
        if config_file is not None:
            _write_text(config_file, config_text)
        _fsync_tree(version_dir.parent)
    except AccelserveError:
        raise
    except OSError as exc:
        raise _os_error(f"copying {artifact.path} into the repository", exc) from None


# --------------------------------------------------------------------------------------------------------------
# Listing


@dataclass
class ModelEntry:
    """One model directory of a repository, as ``accelserve repo list`` shows it."""

    name: str
    path: Path
    versions: list[int] = field(default_factory=list)
    platform: str = ""
    backend: str = ""
    max_batch_size: int | None = None
    error: str | None = None


def list_models(repo: str | Path) -> list[ModelEntry]:
    """Every model directory of ``repo`` with its versions and main config fields (errors are recorded, not raised)."""
    root = Path(repo)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    entries = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = ModelEntry(name=child.name, path=child, versions=list(version_dirs(child)))
        try:
            config = read_config(child / CONFIG_FILENAME)
            entry.platform, entry.backend, entry.max_batch_size = config.platform, config.backend, config.max_batch_size
        except RepositoryError as exc:
            entry.error = exc.message
        entries.append(entry)
    return entries
