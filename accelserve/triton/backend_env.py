"""Where the tritonserver binary, its backends and libraries are, and the environment it needs to run here.

Two kinds of install are supported:

* the binary shipped in the ``nvidia-pytriton`` wheel (the default): ``pytriton/tritonserver/{bin,backends,caches}``
  with shared libraries in ``nvidia_pytriton.libs`` and one Python-backend stub per Python version in
  ``python_backend_stubs/<X.Y>/``. Only the ``python`` backend ships with it.
* a full install such as NGC's ``/opt/tritonserver`` (``--tritonserver /opt/tritonserver/bin/tritonserver``),
  with ``backends/`` (onnxruntime, tensorrt, ...) and ``lib/`` beside ``bin/``.

Nothing in site-packages is modified: :func:`prepare_backend_directory` builds a private backend directory (links
to the install's backends, plus a python backend with the stub for the running interpreter).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from accelserve.errors import MissingDependencyError, ServerError

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and the directories that go with it."""

    binary: Path
    backends_dir: Path
    lib_dirs: tuple[Path, ...]
    caches_dir: Path | None
    #: the Python-backend stub built for the running interpreter (pytriton ships one per Python version)
    python_stub: Path | None

    def available_backends(self) -> set[str]:
        return available_backends(self.backends_dir)


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "serving a model repository needs the tritonserver binary from the Python package 'nvidia-pytriton', "
            "which is not installed",
            hint="pip install 'accelserve[serve]'  (or pass --tritonserver PATH to an existing Triton install)",
        )
    return Path(next(iter(spec.submodule_search_locations)))


def pytriton_install() -> TritonInstall:
    """The tritonserver shipped in the installed nvidia-pytriton wheel."""
    root = _pytriton_root()
    dist = root / "tritonserver"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(
            f"the nvidia-pytriton package at {root} has no tritonserver binary ({binary} is missing)",
            hint="reinstall it: pip install --force-reinstall nvidia-pytriton",
        )
    libs = root.parent / "nvidia_pytriton.libs"  # auditwheel's directory for a regular install
    if not libs.is_dir():
        libs = dist / "external_libs"  # an editable install of pytriton
    stub = dist / "python_backend_stubs" / PYTHON_VERSION / STUB_NAME
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist / "python_backend_stubs").glob("*") if (p / STUB_NAME).is_file())
        raise ServerError(
            f"nvidia-pytriton has no Python-backend stub for Python {PYTHON_VERSION} (it ships stubs for "
            f"{', '.join(shipped) or 'no version'}), so Triton's python backend cannot run in this interpreter",
            hint=f"use a Python version among {', '.join(shipped)}, or an nvidia-pytriton release that supports "
            f"{PYTHON_VERSION}",
        )
    caches = dist / "caches"
    return TritonInstall(binary, dist / "backends", (libs,), caches if caches.is_dir() else None, stub)


def custom_install(binary: str | Path) -> TritonInstall:
    """A tritonserver installed elsewhere (e.g. NGC's /opt/tritonserver/bin/tritonserver)."""
    path = Path(binary).expanduser()
    if path.is_dir() and (path / "bin" / "tritonserver").is_file():
        path = path / "bin" / "tritonserver"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ServerError(
            f"--tritonserver {binary}: not an executable file",
            hint="pass the tritonserver binary, e.g. /opt/tritonserver/bin/tritonserver",
        )
    home = path.resolve().parent.parent
    backends = home / "backends"
    if not backends.is_dir():
        raise ServerError(
            f"tritonserver at {path} has no backends directory ({backends} does not exist)",
            hint="a Triton install keeps its backends in <install>/backends beside <install>/bin",
        )
    libs = tuple(d for d in (home / "lib",) if d.is_dir())
    caches = home / "caches"
    stub = backends / "python" / STUB_NAME
    return TritonInstall(path, backends, libs, caches if caches.is_dir() else None, stub if stub.is_file() else None)


def locate_install(tritonserver: str | Path | None = None) -> TritonInstall:
    """``tritonserver`` if given, else the binary from nvidia-pytriton."""
    return custom_install(tritonserver) if tritonserver else pytriton_install()


def available_backends(backends_dir: Path) -> set[str]:
    """Backends in ``backends_dir``: a ``libtriton_<name>.so``, or a Python-based backend's ``model.py``."""
    found = set()
    if backends_dir.is_dir():
        for d in backends_dir.iterdir():
            if d.is_dir() and ((d / f"libtriton_{d.name}.so").exists() or (d / "model.py").exists()):
                found.add(d.name)
    return found


def prepare_backend_directory(install: TritonInstall, workdir: Path) -> Path:
    """A private backend directory under ``workdir``: links to every backend of ``install``, and a python backend
    whose stub matches the running interpreter (the install's own stub when it has one for this version)."""
    target = workdir / "backends"
    target.mkdir(parents=True, exist_ok=False)
    for backend in sorted(install.backends_dir.iterdir()):
        if backend.name != "python":
            os.symlink(backend.resolve(), target / backend.name)
    python_src = install.backends_dir / "python"
    if python_src.is_dir():
        python_dst = target / "python"
        python_dst.mkdir()
        for item in python_src.iterdir():
            if item.name not in (STUB_NAME, "__pycache__"):
                os.symlink(item.resolve(), python_dst / item.name)
        stub = install.python_stub or (python_src / STUB_NAME)
        if not stub.is_file():
            raise ServerError(
                f"Triton's python backend at {python_src} has no {STUB_NAME}",
                hint="use the tritonserver from nvidia-pytriton (the default) or a complete Triton install",
            )
        # A copy, not a link: the backend runs the stub from its own directory and some kernels refuse to
        # execute through links on noexec mounts; the stub is ~1.4 MB.
        shutil.copy2(stub, python_dst / STUB_NAME)
    return target


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its Python-backend stubs.

    * ``LD_LIBRARY_PATH``: the install's libraries, then the running interpreter's ``LIBDIR`` (the stub links
      against libpython; without it the stub can pick up another libpython on the system and fail), then whatever
      was set before.
    * ``PATH``: this interpreter's environment first, so the stub's embedded Python finds this environment's
      site-packages (numpy, onnxruntime, ...).
    """
    env = dict(os.environ if base is None else base)
    lib_dirs = [str(d) for d in install.lib_dirs]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        lib_dirs.append(str(libdir))
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    bin_dir = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    # the stub's Python must not inherit a PYTHONHOME/PYTHONPATH meant for another interpreter
    env.pop("PYTHONHOME", None)
    return env
