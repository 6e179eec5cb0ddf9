"""Run a model repository on the real tritonserver binary, as a context manager.

    with TritonServer("model_repository") as server:      # ports 0: free ports are picked
        server.http_url, server.grpc_url, server.metrics_url
        server.models(); server.statistics("resnet")

The server runs in its own process group with its output in a log file (``server.log_path``). Models whose
backend is not available locally run through accelserve's ONNX Runtime stand-in (see ``shadow.py``). Start-up
waits until the server and every model are ready; if that fails, the ServerError quotes the relevant log lines.
Stopping sends SIGTERM, waits, then kills the whole process group, and removes the temporary directory.

Ready means *this* process is ready, never another server on the same port: the server gets a unique token in
its (unused, tracing stays off) trace file name, which the HTTP endpoint must report in ``/v2/trace/setting``
(its ``--id`` stays Triton's ``triton``, which clients check in the server metadata), and its own log (from this start on) must show every endpoint started on
the requested port. The python backend's shared-memory segments (/dev/shm) are made private (0600) before ready.
The temporary directory names its owner (``accelserve.leftovers``): a start removes those of killed runs.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelserve.errors import ServerError
from accelserve.leftovers import Leftover, make_owned_dir, remove_stale
from accelserve.triton.backend_env import (
    TritonInstall,
    locate_install,
    prepare_backend_directory,
    server_environment,
)
from accelserve.triton.model_control import ModelControl, ShadowSync, load_failures, load_model, unload_model
from accelserve.triton.shadow import ShadowRepository, build_shadow_repository, model_directories

if TYPE_CHECKING:
    from accelserve.triton.client import ModelStatus

#: seconds between SIGTERM and SIGKILL when stopping: `serve` must be gone within 5 s of a signal. Triton checks
#: every second whether its models have unloaded (each python-backend stub takes ~1 s to finish), so a clean exit
#: takes 2-3 s; whatever is left after the grace (server, stubs) is killed and its shared memory removed, so
#: `serve` exits within 5 s even on a busy machine (python start-up and teardown take the rest)
STOP_GRACE_S = 2.5
#: seconds Triton waits for in-flight requests and model unloads on shutdown before it exits anyway
EXIT_TIMEOUT_S = 3
#: Triton log lines worth quoting when start-up fails
_RELEVANT = re.compile(
    r"failed to load|error|failed|unavailable|already in use|cannot|could not|no such|not found|invalid|"
    r"traceback|exception|^E\d{4} ",
    re.IGNORECASE,
)
#: lines every CPU-only tritonserver writes; never the reason for a failure
_NOISE = re.compile(
    r"CudaDriverHelper has not been initialized|Unable to allocate pinned system memory|CUDA memory pool disabled"
)
_PORT_IN_USE = re.compile(r"already in use|address in use|failed to start (HTTP|GRPC|Metrics) service", re.IGNORECASE)
_START_ATTEMPTS = 3
WORKDIR_PREFIX = "accelserve-triton-"
#: the log line each endpoint writes once it listens, per endpoint name
_STARTED = {"grpc": "Started GRPCInferenceService at", "http": "Started HTTPService at",
            "metrics": "Started Metrics Service at"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still take it before the server binds it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that are free right now (all bound at once, so none repeats)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _shorten(line: str, width: int = 400) -> str:
    line = line.split("\\n\\nAt:", 1)[0]  # Triton escapes newlines: drop the Python traceback of a stub error
    return line if len(line) <= width else line[: width - 3] + "..."


def relevant_log_lines(text: str, limit: int = 25) -> list[str]:
    """The log lines that explain a failure (errors, failed loads), shortened, else the last lines."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    picked = [line for line in lines if _RELEVANT.search(line) and not _NOISE.search(line)]
    return [_shorten(line) for line in (picked or lines)[-limit:]]


def _ports_in_use(log: str) -> set[int]:
    """Ports that the log says could not be bound."""
    ports: set[int] = set()
    for line in log.splitlines():
        if _PORT_IN_USE.search(line):
            ports.update(int(p) for p in re.findall(r":(\d{1,5})\b", line.split("]", 1)[-1]))
    return ports


def _failure_hint(log: str) -> str:
    if _PORT_IN_USE.search(log):
        return "another process uses one of the ports: pick others (--http-port/--grpc-port/--metrics-port, 0 = any)"
    if "failed to load" in log:
        return ("fix the model(s) named above, or serve the others: --no-strict, or --model-control explicit "
                "--load-model NAME; `accelserve repo validate` shows what Triton rejects")
    return "see the full log; --log-verbose 1 logs more"


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (all threads), from /proc; empty where /proc is not available."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return kids


def _wait_for_shutdown(popen: subprocess.Popen[bytes], grace: float) -> None:
    """Wait until the server has exited, ``grace`` has passed, or -- when it had python-backend stubs -- every stub
    has exited: then the models are unloaded and Triton only waits for its next once-a-second check, which the
    caller's SIGKILL cuts short."""
    deadline = time.monotonic() + grace
    had_stubs = bool(_children(popen.pid))
    while popen.poll() is None and time.monotonic() < deadline:
        if had_stubs and not _children(popen.pid):
            return
        time.sleep(0.05)


class _Process:
    """The server process and its temporary directory; cleaned up by stop() or, as a last resort, at exit."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.shm_prefix: str | None = None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, grace: float = STOP_GRACE_S) -> None:
        popen = self.popen
        if popen is not None:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)  # Triton unloads models and stops its stubs
                _wait_for_shutdown(popen, grace)
            try:  # whatever is left of the group (the server, python-backend stubs)
                os.killpg(popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            popen.wait()
            self.popen = None
        if self.shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                leftover.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class TritonServer:
    """The real Triton Inference Server serving ``repository`` on ``host`` (127.0.0.1 by default).

    Port 0 picks a free port. ``tritonserver`` is a binary of a full Triton install (default: the one in
    nvidia-pytriton). ``log_file`` keeps the server log there (default: a temporary file removed on stop).
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        tritonserver: str | Path | None = None,
        timeout: float = 120.0,
        log_verbose: int = 0,
        log_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        model_control: ModelControl | None = None,
    ) -> None:
        self.repository = Path(repository).expanduser().resolve()
        self.host = host
        self.timeout = timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self._requested_ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        for name, port in self._requested_ports.items():
            if not 0 <= port <= 65535:
                raise ServerError(f"--{name}-port {port} is not a TCP port (0-65535; 0 picks a free one)")
        self.ports: dict[str, int] = {}
        self._tritonserver = tritonserver
        self._log_file = Path(log_file).expanduser().resolve() if log_file else None
        self._proc = _Process()
        self._finalizer = weakref.finalize(self, self._proc.terminate, 2.0)
        self.install: TritonInstall | None = None
        self.served_repository: Path | None = None
        #: models run through the ONNX Runtime stand-in -> what was changed in their config
        self.stand_ins: dict[str, list[str]] = {}
        self.log_path: Path | None = None
        self._kept_log: Path | None = None
        self._log_offset = 0
        #: the ``--id`` this server reports in its metadata (unique per start; None when extra_args set one)
        self.server_id: str | None = None
        #: temporary directories of killed runs that start() removed
        self.removed_leftovers: list[Leftover] = []
        self.control = model_control or ModelControl()
        self.control.check()
        self._shadow: ShadowRepository | None = None
        self._sync: ShadowSync | None = None
        #: models that failed to load at start-up (with --no-strict) -> Triton's reason
        self.failed_models: dict[str, str] = {}

    # ----------------------------------------------------------------------------------------------------- urls
    @property
    def _client_host(self) -> str:
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    def _port(self, name: str) -> int:
        if name not in self.ports:
            raise ServerError("the Triton server is not started", hint="use `with TritonServer(...) as server:`")
        return self.ports[name]

    @property
    def http_url(self) -> str:
        """``http://host:port`` (tritonclient.http wants it without the scheme; accelserve's client takes both)."""
        return f"http://{self._client_host}:{self._port('http')}"

    @property
    def grpc_url(self) -> str:
        """``grpc://host:port`` (tritonclient.grpc wants ``host:port``; accelserve's client takes both)."""
        return f"grpc://{self._client_host}:{self._port('grpc')}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self._port('metrics')}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.popen.pid if self._proc.popen is not None else None

    # ---------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def is_alive(self) -> bool:
        return self._proc.alive()

    def start(self) -> TritonServer:
        """Start the server and wait (up to ``timeout``) until it and all its models are ready."""
        if self.is_alive():
            raise ServerError(f"this TritonServer is already running (pid {self.pid})")
        if not self.repository.is_dir():
            raise ServerError(
                f"model repository {self.repository} is not a directory",
                hint="pass the repository root (the directory holding <model>/config.pbtxt)",
            )
        self.install = locate_install(self._tritonserver)
        self.removed_leftovers = remove_stale(tempfile.gettempdir(), WORKDIR_PREFIX)
        self.control.check(d.name for d in model_directories(self.repository))
        auto_ports = [name for name, port in self._requested_ports.items() if port == 0]
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._launch()
                self.wait_ready(self.timeout)
                return self
            except ServerError:
                log = self.log_text()
                self._stop_sync()
                self._proc.terminate()
                picked = {self.ports[name] for name in auto_ports if name in self.ports}
                if attempt < _START_ATTEMPTS and picked & _ports_in_use(log):
                    if self._kept_log is not None:
                        self._kept_log.unlink(missing_ok=True)
                    continue  # another process took a port we picked between picking and binding: pick again
                raise
            except BaseException:  # Ctrl-C, SIGTERM, a bug: leave nothing running
                self._stop_sync()
                self._proc.terminate()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        assert self.install is not None
        workdir = make_owned_dir(WORKDIR_PREFIX)
        self._proc.workdir = workdir
        self._proc.shm_prefix = f"accelserve{os.getpid()}_{secrets.token_hex(4)}"
        backends = prepare_backend_directory(self.install, workdir)
        shadow = self._build_shadow(workdir)
        self.served_repository = shadow.path if shadow else self.repository
        self.stand_ins = dict(shadow.stand_ins) if shadow else {}
        auto = [name for name, port in self._requested_ports.items() if port == 0]
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        picked = dict(zip(auto, free_ports(len(auto), probe_host), strict=True))
        self.ports = {name: port or picked[name] for name, port in self._requested_ports.items()}
        if len(set(self.ports.values())) < 3:
            raise ServerError(f"the HTTP, gRPC and metrics ports must differ, got {self.ports}")
        self.log_path = self._log_file or workdir / "tritonserver.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # --log-file appends
        own_id = not any(a.startswith(("--trace-config", "--trace-file")) for a in self.extra_args)
        self.server_id = f"accelserve-{os.getpid()}-{secrets.token_hex(6)}" if own_id else None
        self._trace_file = workdir / f"{self.server_id}.trace" if own_id else None
        args = [
            str(self.install.binary),
            f"--model-repository={self.served_repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}", f"--http-port={self.ports['http']}",
            f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
            f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *self.control.triton_args(),
            # a private shared-memory prefix: python-backend regions of servers running side by side must not clash
            f"--backend-config=python,shm-region-prefix-name={self._proc.shm_prefix}",
        ]
        if self._trace_file is not None:  # identifies this server; tracing stays off (Triton's default level)
            args.append(f"--trace-config=triton,file={self._trace_file}")
        if self.install.caches_dir is not None:
            args.append(f"--cache-directory={self.install.caches_dir}")
        args += self.extra_args
        with open(self.log_path, "ab") as log:
            try:
                self._proc.popen = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=server_environment(self.install), start_new_session=True,
                    preexec_fn=_parent_death_signal(),
                )
            except OSError as exc:
                self._proc.terminate()
                raise ServerError(f"cannot run {self.install.binary}: {exc}") from exc

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the server (SIGTERM, then SIGKILL to its process group after ``grace`` s) and remove temp files."""
        self._stop_sync()
        self._proc.terminate(grace)

    # ------------------------------------------------------------------------------------------- model control
    def _build_shadow(self, workdir: Path) -> ShadowRepository | None:
        """The shadow repository (stand-ins for missing backends), and its sync thread under poll/explicit control."""
        assert self.install is not None
        dynamic = self.control.mode != "none"
        self._shadow = build_shadow_repository(
            self.repository, workdir / "repository", self.install.available_backends(),
            always=dynamic, strict=self.control.strict and not dynamic,
        )
        if self._shadow is not None and dynamic:
            self._sync = ShadowSync(self._shadow, interval=min(self.control.poll_interval / 2, 1.0))
            self._sync.start()
        return self._shadow

    def _stop_sync(self) -> None:
        if self._sync is not None:
            self._sync.stop()
            self._sync = None

    def load_model(self, name: str) -> None:
        """Load (or reload) a model through Triton's repository API, after syncing the shadow with the repository;
        a model that fails to load is a ServerError with Triton's reason."""
        if self._sync is not None:
            self._sync.refresh()
        try:
            load_model(self.http_url, name, timeout=self.timeout)
        except ServerError as exc:
            # a config Triton's core refuses answers only "failed to poll from model repository": the log has why
            reason = load_failures(self._own_log()).get(name)
            if reason and reason not in exc.message:
                raise ServerError(f"model '{name}' failed to load: {reason}", hint=exc.hint) from None
            raise
        self.failed_models.pop(name, None)

    def unload_model(self, name: str) -> None:
        unload_model(self.http_url, name)

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def check_alive(self, *, during: str = "") -> None:
        """Raise a ServerError quoting the log when the server process has exited; keep new shared memory private."""
        if not self.is_alive():
            code = self._proc.popen.returncode if self._proc.popen is not None else None
            raise self._failure(f"tritonserver exited{' ' + during if during else ''} (exit code {code})")
        self.protect_shared_memory()

    def protect_shared_memory(self) -> list[Path]:
        """Make this server's python-backend shared-memory segments readable by this user only (0600; the backend
        creates them 0644: request and response tensors pass through them). Returns the segments changed."""
        changed = []
        if self._proc.shm_prefix:
            for segment in Path("/dev/shm").glob(f"{self._proc.shm_prefix}*"):
                try:
                    if segment.stat().st_mode & 0o077:
                        segment.chmod(0o600)
                        changed.append(segment)
                except OSError:
                    pass  # removed meanwhile
        return changed

    def _own_log(self) -> str:
        """The log written since this start (a --log-file is appended to)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def endpoints_not_started(self) -> list[str]:
        """The endpoints (http, grpc, metrics) whose 'Started ... at HOST:PORT' line this server has not logged."""
        log = self._own_log()
        return [name for name, text in _STARTED.items()
                if not re.search(re.escape(text) + r" \S*:" + str(self.ports.get(name, -1)) + r"\b", log)]

    def answering_server_id(self) -> str | None:
        """The id of whatever server answers on our HTTP port (the stem of the trace file it reports in
        ``/v2/trace/setting``; its name otherwise), or None when none answers."""
        import json

        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/trace/setting", timeout=2) as response:
                trace_file = str(json.loads(response.read()).get("trace_file") or "")
            if trace_file:
                return Path(trace_file).stem
            with urllib.request.urlopen(f"{self.http_url}/v2", timeout=2) as response:
                return str(json.loads(response.read()).get("name"))
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return None

    def _failure(self, what: str) -> ServerError:
        text = self.log_text()
        quoted = "\n".join(f"    {line}" for line in relevant_log_lines(text)) or "    (the server wrote nothing)"
        failed = load_failures(text)
        if failed:  # name each model that failed, with Triton's own reason, before the log lines
            what += ": a model failed to load (Triton stops on a load error with --strict)" + "".join(
                f"\n  model '{name}' failed to load: {reason}" for name, reason in failed.items())
        where = self.log_path
        if self._log_file is None and text:  # the temporary log goes with the server: keep a copy for the user
            fd, kept = tempfile.mkstemp(prefix="accelserve-tritonserver-", suffix=".log")
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            where = self._kept_log = Path(kept)
        sep = "\n" if failed else ". "
        return ServerError(
            f"{what}{sep}tritonserver log (full log: {where}):\n{quoted}",
            hint=_failure_hint(text),
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the server answers ready and every model of the repository is READY."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        expected = self.control.expected([d.name for d in model_directories(self.served_repository or self.repository)])
        settled = ("READY",) if self.control.strict else ("READY", "UNAVAILABLE")
        ready_url = f"{self.http_url}/v2/health/ready"
        waiting_for = "the server to answer"
        while True:
            self.check_alive(during="before it was ready")
            not_started = self.endpoints_not_started()
            if not_started:
                waiting_for = f"this server's {', '.join(not_started)} endpoint(s) to start"
                other = self.answering_server_id()
                if other is not None and other != self.server_id and self.server_id:
                    waiting_for += f" (another server, '{other}', answers on {self.http_url})"
            elif self.server_id and self.answering_server_id() != self.server_id:
                waiting_for = f"this server (id {self.server_id}) to answer on {self.http_url}"
            elif _http_ok(ready_url):
                index = self._index()
                states = {m["name"]: m for m in index if not m.get("version")}
                states.update({m["name"]: m for m in index if m.get("version")})
                refused = set() if self.control.strict else set(load_failures(self._own_log()))
                not_ready = [n for n in expected if states.get(n, {}).get("state") not in settled and n not in refused]
                if not not_ready:
                    self.protect_shared_memory()
                    self._record_failures(n for n in expected if states.get(n, {}).get("state") != "READY")
                    return
                waiting_for = "model(s) " + ", ".join(
                    f"{n} ({states.get(n, {}).get('state') or 'not listed'})" for n in not_ready
                )
            if time.monotonic() > deadline:
                raise self._failure(
                    f"Triton was not ready within {timeout if timeout is not None else self.timeout:.0f} s "
                    f"(still waiting for {waiting_for} at {ready_url})"
                )
            time.sleep(0.2)

    def _record_failures(self, names: Any) -> None:
        """Each model that did not load, with Triton's reason (from the log, else the repository index)."""
        from_log = load_failures(self._own_log())
        index = {m["name"]: m for m in self._index()}
        self.failed_models = {
            name: from_log.get(name) or index.get(name, {}).get("reason") or "failed to load (see the server log)"
            for name in names
        }

    def _index(self) -> list[dict[str, Any]]:
        import json

        request = urllib.request.Request(f"{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return []

    # ------------------------------------------------------------------------------------------------ queries
    def models(self) -> list[ModelStatus]:
        """The repository index: one entry per model version (``name``, ``version``, ``state``, ``reason``)."""
        from accelserve.triton.client import TritonClient

        with TritonClient(self.http_url) as client:
            return client.models()

    def statistics(self, model: str = "") -> dict[str, Any]:
        """Triton's inference statistics for ``model`` (all models when empty), as returned over HTTP."""
        from accelserve.triton.client import TritonClient

        with TritonClient(self.http_url) as client:
            return client.statistics(model)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _parent_death_signal() -> Any:
    """A preexec_fn that makes the server get SIGTERM when the thread that started it dies (Linux prctl
    PR_SET_PDEATHSIG), or None where that is unavailable or would fire too early: the signal follows the *thread*
    that forked, so it is only used from the main thread. libc is resolved here, in the parent, not after fork."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec
