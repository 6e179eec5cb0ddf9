"""Turn what a user names into a PyTorch model, without running pickled code, and run it as a reference.

Accepted sources: an in-memory ``nn.Module`` / ``torch.jit.ScriptModule`` / ``torch.export.ExportedProgram``;
``MODULE:ATTR`` naming an instance, a class or a zero-argument factory (``MODULE`` is a dotted module name or a
path to a ``.py`` file); a TorchScript archive (``torch.jit.save``); a ``torch.export`` archive (``.pt2``); a
state-dict checkpoint (``torch.save(model.state_dict())``) together with a factory that builds the model.
Checkpoints are read with ``torch.load(weights_only=True)``: one that needs pickled code is refused. TorchScript
and .pt2 archives are inspected before loading and refused when they carry pickled objects or code with effects
outside the model (see :mod:`accelserve.exporters.torch_archive_safety`), unless ``trust_source=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelserve._lazy import require
from accelserve.errors import InvalidInputError
from accelserve.exporters.torch_archive_safety import (
    check_exported_program_archive,
    check_torchscript_archive,
    safe_torch_load_guard,
)
from accelserve.specs import InputSpec

_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


@dataclass
class LoadedTorchModel:
    """A model ready to run: ``module`` is callable in eval mode (an ``nn.Module``, a ``ScriptModule``, or the
    module of an ``ExportedProgram``)."""

    module: Any
    kind: str  #: "module", "torchscript", "exported_program" or "checkpoint"
    description: str  #: where it came from, for messages


def _torch() -> Any:
    return require("torch", "exporting a PyTorch model")


# --------------------------------------------------------------------------------------------------------------
# MODULE:ATTR


@contextlib.contextmanager
def on_sys_path(directory: str | Path) -> Iterator[None]:
    """``directory`` (resolved) first on ``sys.path`` for the block, so MODULE:ATTR specs resolve against it."""
    d = str(Path(directory).resolve())
    added = d not in sys.path
    if added:
        sys.path.insert(0, d)
    try:
        yield
    finally:
        if added and d in sys.path:
            sys.path.remove(d)


def _user_module_name(path: Path) -> str:
    """The name a user's model file is imported under. It ends up in the ONNX nodes' metadata (the module path of
    each layer), so it must not vary between runs (no per-process ``hash()``): ``_accelserve_user_<stem>``, with a
    digest of the path only when another file of the same stem is already imported in this process."""
    resolved = path.resolve()
    name = "_accelserve_user_" + re.sub(r"\W", "_", path.stem)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != resolved:
        name += "_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return name


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise InvalidInputError(f"Python file {path} does not exist")
    name = _user_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with on_sys_path(str(path.resolve().parent)):  # so the file can import its neighbours
            spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise InvalidInputError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> Any:
    try:
        with on_sys_path(os.getcwd()):  # like `python -m`: modules in the working directory are found
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise InvalidInputError(
                f"no Python module named '{name}' (looked in the working directory and installed packages)",
                hint="check the spelling, run from the directory that holds it, or give a file: path/to/model.py:Net",
            ) from exc
        raise InvalidInputError(f"importing module '{name}' failed: {exc}") from exc
    except Exception as exc:
        raise InvalidInputError(f"importing module '{name}' failed: {type(exc).__name__}: {exc}") from exc


def resolve_object(ref: str, *, what: str = "model") -> Any:
    """Return the object ``MODULE:ATTR`` names (``ATTR`` may be dotted; ``MODULE`` may be a ``.py`` path)."""
    module_part, sep, attr = ref.rpartition(":")
    if not sep or not module_part or not attr:
        raise InvalidInputError(
            f"{what} '{ref}' is not MODULE:ATTR", hint="examples: mypkg.models:Net, path/to/model.py:build_model"
        )
    if module_part.endswith(".py") or "/" in module_part or os.sep in module_part:
        module = _import_file(Path(module_part))
    else:
        module = _import_module(module_part)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = module_part if i == 0 else f"{module_part}:{'.'.join(attr.split('.')[:i])}"
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise InvalidInputError(
                f"'{owner}' has no attribute '{part}' (from {what} '{ref}')",
                hint=f"it has: {', '.join(public) or 'no public names'}",
            )
        obj = getattr(obj, part)
    return obj


def required_params(fn: Any) -> list[str]:
    """Names of the parameters of ``fn`` that have no default (empty when it has no inspectable signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [
        p.name for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def build_module(obj: Any, ref: str) -> Any:
    """An ``nn.Module`` from an instance, a class or a zero-argument factory."""
    torch = _torch()
    if isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram)):
        return obj
    if not callable(obj):
        raise InvalidInputError(f"'{ref}' is a {type(obj).__name__}, not a torch.nn.Module, class or factory")
    required = required_params(obj)
    if required:
        raise InvalidInputError(
            f"'{ref}' needs argument(s) {', '.join(required)} to build the model",
            hint="point at a zero-argument factory function that builds and returns the model",
        )
    try:
        built = obj()
    except Exception as exc:
        raise InvalidInputError(f"building the model with {ref}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(built, (torch.nn.Module, torch.export.ExportedProgram)):
        raise InvalidInputError(f"{ref}() returned a {type(built).__name__}, not a torch.nn.Module")
    return built


# --------------------------------------------------------------------------------------------------------------
# files


def archive_kind(path: Path) -> str:
    """``torchscript``, ``exported_program``, ``checkpoint`` or ``onnx``/``unknown`` by looking inside the file."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "exported_program"
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "checkpoint"
        return "unknown"
    if head.startswith(_PICKLE_MAGIC):
        return "checkpoint"  # the legacy (non-zip) torch.save format
    if path.suffix == ".onnx":
        return "onnx"
    return "unknown"


def _is_tensor_mapping(obj: Any) -> bool:
    torch = _torch()
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if _is_tensor_mapping(obj):
        sd = dict(obj)
    elif isinstance(obj, Mapping):
        key = next((k for k in _STATE_DICT_KEYS if _is_tensor_mapping(obj.get(k))), None)
        if key is None:
            raise InvalidInputError(
                f"{path} holds a {type(obj).__name__} with keys {sorted(map(str, obj))[:10]}, none of them a state dict",
                hint=f"save the weights with torch.save(model.state_dict(), ...) or under one of: {', '.join(_STATE_DICT_KEYS)}",
            )
        sd = dict(obj[key])
    else:
        raise InvalidInputError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for prefix in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _load_checkpoint(path: Path, factory: str | None) -> Any:
    torch = _torch()
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f"it refers to {found.group(1)}" if found else "torch.load(weights_only=True) refused it"
        raise InvalidInputError(
            f"{path} holds pickled Python objects, not just tensors ({detail}); "
            "accelserve loads checkpoints with weights_only=True and never runs pickled code",
            hint="save the weights only: torch.save(model.state_dict(), 'weights.pt'), then pass "
            "--factory MODULE:FN naming a function or class that builds the model",
        ) from exc
    except Exception as exc:
        raise InvalidInputError(f"{path} cannot be read as a PyTorch checkpoint: {type(exc).__name__}: {exc}") from exc
    state = _state_dict(obj, path)
    if factory is None:
        raise InvalidInputError(
            f"{path} is a state-dict checkpoint (weights only): the model's code is needed to rebuild it",
            hint="pass --factory MODULE:FN naming a function or class that builds the model, e.g. "
            "--factory mypkg.models:build_net",
        )
    model = build_module(resolve_object(factory, what="factory"), factory)
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(f"factory {factory} must build a torch.nn.Module")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise InvalidInputError(
            f"the weights in {path} do not fit the model built by {factory}: {' '.join(lines)[:800]}",
            hint="check that the factory builds the same architecture the checkpoint was saved from",
        ) from exc
    return model


def _load_file(path: Path, factory: str | None, trust_source: bool = False) -> LoadedTorchModel:
    torch = _torch()
    kind = archive_kind(path)
    if factory is not None and kind != "checkpoint":
        raise InvalidInputError(f"--factory is only used with a state-dict checkpoint, and {path} is not one ({kind})")
    if kind == "onnx":
        raise InvalidInputError(f"{path} looks like an ONNX model already", hint="check it with `accelserve verify`")
    if kind == "unknown":
        raise InvalidInputError(
            f"{path} is neither a TorchScript archive, a torch.export (.pt2) archive nor a torch.save checkpoint"
        )
    if not trust_source:  # a crafted archive must not run its own code: look inside before torch does
        if kind == "torchscript":
            check_torchscript_archive(path)
        elif kind == "exported_program":
            check_exported_program_archive(path)
    guard = contextlib.nullcontext() if trust_source else safe_torch_load_guard(torch)
    try:
        with guard:
            if kind == "torchscript":
                module = torch.jit.load(str(path), map_location="cpu").eval()
                return LoadedTorchModel(module, kind, f"TorchScript {path}")
            if kind == "exported_program":
                program = torch.export.load(str(path))
                return LoadedTorchModel(program.module(), kind, f"torch.export archive {path}")
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"{path} cannot be loaded as a {kind} archive: {type(exc).__name__}: {exc}") from exc
    model = _load_checkpoint(path, factory)
    return LoadedTorchModel(model.eval(), "checkpoint", f"checkpoint {path} + {factory}")


def load_torch_model(source: Any, *, factory: str | None = None, trust_source: bool = False) -> LoadedTorchModel:
    """Load ``source`` (see the module docstring) into a :class:`LoadedTorchModel` in eval mode.

    Archives are checked first (:mod:`accelserve.exporters.torch_archive_safety`) and refused when loading them
    could run code they carry; ``trust_source=True`` skips that for files the user vouches for."""
    torch = _torch()
    if isinstance(source, torch.export.ExportedProgram):
        return LoadedTorchModel(source.module(), "exported_program", "torch.export program")
    if isinstance(source, torch.jit.ScriptModule):
        return LoadedTorchModel(source.eval(), "torchscript", f"TorchScript {type(source).__name__}")
    if isinstance(source, torch.nn.Module):
        return LoadedTorchModel(source.eval(), "module", type(source).__name__)
    if not isinstance(source, (str, Path)):
        raise InvalidInputError(
            f"cannot export a {type(source).__name__}: give a torch.nn.Module, MODULE:ATTR or a model file"
        )
    path = Path(source)
    if path.is_file():
        return _load_file(path, factory, trust_source)
    text = str(source)
    if ":" in text:
        if factory is not None:
            raise InvalidInputError("--factory is only used with a state-dict checkpoint file, not with MODULE:ATTR")
        module = build_module(resolve_object(text), text)
        if isinstance(module, torch.export.ExportedProgram):
            return LoadedTorchModel(module.module(), "exported_program", text)
        kind = "torchscript" if isinstance(module, torch.jit.ScriptModule) else "module"
        return LoadedTorchModel(module.eval(), kind, text)
    if path.suffix:
        raise InvalidInputError(f"model file {path} does not exist")
    raise InvalidInputError(
        f"'{source}' is neither MODULE:ATTR nor an existing file",
        hint="examples: mypkg.models:Net, path/to/model.py:Net, model.pt2, scripted.pt, weights.pt --factory mypkg:build",
    )


# --------------------------------------------------------------------------------------------------------------
# error text


def summarize_error(exc: BaseException, max_lines: int = 12) -> str:
    """The useful head of a (often very long) torch error message."""
    lines = [re.sub(r"\s*For more information, run with TORCH_LOGS=\S*", "", ln).rstrip()
             for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln.strip() and "draft_export" not in ln]
    text = "\n    ".join(lines[:max_lines]) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" + ("\n    ..." if len(lines) > max_lines else "")


def describe_feed(feed: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}[{'x'.join(map(str, v.shape))} {v.dtype}]" for k, v in feed.items())


# --------------------------------------------------------------------------------------------------------------
# running the PyTorch model


def _flatten_outputs(out: Any, torch: Any) -> tuple[list[Any], list[str] | None]:
    """Tensors of a forward() result in torch.export's order, and names when it returned a dict."""
    if isinstance(out, torch.Tensor):
        return [out], None
    if isinstance(out, Mapping):
        tensors: list[Any] = []
        for v in out.values():
            tensors.extend(_flatten_outputs(v, torch)[0])
        names = [str(k) for k in out] if len(tensors) == len(out) else None
        return tensors, names
    if isinstance(out, (list, tuple)):
        tensors = []
        for v in out:
            tensors.extend(_flatten_outputs(v, torch)[0])
        return tensors, None
    if out is None:
        return [], None
    raise InvalidInputError(f"the model returned a {type(out).__name__}; only tensors (and tuples/dicts of them) export")


class TorchReference:
    """``feeds -> outputs`` running the PyTorch model in eval mode under ``torch.no_grad()``."""

    def __init__(self, loaded: LoadedTorchModel, input_names: Sequence[str] | None = None) -> None:
        self.loaded = loaded
        self.input_names = list(input_names) if input_names is not None else None
        self.output_names: list[str] | None = None  #: dict keys when forward() returns a dict

    def forward_args(self, feed: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        torch = _torch()
        names = self.input_names or list(feed)
        params = forward_parameters(self.loaded.module)
        if params and set(names) <= set(params):  # feeds named like forward()'s parameters: use its order
            names = [p for p in params if p in set(names)]
        return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)

    def __call__(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = _torch()
        args = self.forward_args(feed)
        try:
            with torch.no_grad():
                out = self.loaded.module(*args)
        except Exception as exc:
            raise InvalidInputError(
                f"the PyTorch model ({self.loaded.description}) failed on inputs {describe_feed(feed)}: {summarize_error(exc, 4)}",
                hint="check the --input shapes and dtypes against the model's forward()",
            ) from exc
        tensors, names = _flatten_outputs(out, torch)
        self.output_names = names
        return [t.detach().cpu().numpy() for t in tensors]


def forward_parameters(module: Any) -> list[str]:
    """Positional parameter names of ``module.forward`` (empty when it cannot be inspected or takes *args)."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError, AttributeError):
        return []
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_arity(module: Any, specs: Sequence[InputSpec]) -> None:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError, AttributeError):
        return
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        return
    required = [p.name for p in params if p.default is p.empty]
    if len(specs) < len(required) or len(specs) > len(params):
        raise InvalidInputError(
            f"the model's forward({', '.join(p.name for p in params)}) takes {len(required)}"
            f"{'' if len(required) == len(params) else f' to {len(params)}'} tensor(s), but {len(specs)} input(s) "
            f"were given ({', '.join(s.name for s in specs) or 'none'})",
            hint="give one --input NAME:SHAPE:DTYPE per forward() argument, in order",
        )
