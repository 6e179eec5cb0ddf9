"""Triton's model control, as ``accelserve serve`` offers it (server ``docs/user_guide/model_management.md``).

* ``none`` (Triton's default): every model of the repository is loaded at start-up; later changes are ignored.
* ``poll``: as ``none``, and Triton re-reads the repository every ``poll_interval`` seconds, loading new models and
  versions (``--repository-poll-secs``). Models served through the ONNX Runtime stand-in live in a shadow
  repository, so :class:`ShadowSync` mirrors the user's repository into the shadow on the same clock.
* ``explicit``: only the models named with ``load_models`` (``*`` = all) are loaded at start-up; the load/unload
  API (``POST v2/repository/models/<name>/load|unload``) loads others later. A repository with a broken model can
  so still serve the rest.

``strict`` mirrors Triton's ``--exit-on-error`` (and ``--strict-readiness``): on, a model that fails to load at
start-up stops the server; off, the server serves the models that loaded, and each failure is reported with
Triton's own reason for it (:func:`load_failures`, the repository index).
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accelserve.errors import AccelserveError, InvalidInputError, ServerError

if TYPE_CHECKING:
    from accelserve.triton.shadow import ShadowRepository

MODES = ("none", "poll", "explicit")
DEFAULT_POLL_INTERVAL_S = 2.0
_FAILED_LOAD = re.compile(r"failed to load \\?'(?P<name>[^'\\]+)\\?' version (?P<version>\d+): (?P<reason>.*?)\"?\s*$")
#: a config Triton's core refuses: the model never gets to a version load
_POLL_FAILED = re.compile(r"Poll failed for model directory \\?'(?P<name>[^'\\]+)\\?': (?P<reason>.*?)\"?\s*$")
#: a model Triton's repository manager refuses before any version load (e.g. no version directory)
_MODEL_FAILED = re.compile(r"failed to load model \\?'(?P<name>[^'\\]+)\\?': (?P<reason>.*?)\"?\s*$")


@dataclass(frozen=True)
class ModelControl:
    mode: str = "none"
    load_models: tuple[str, ...] = ()
    strict: bool = True
    poll_interval: float = DEFAULT_POLL_INTERVAL_S

    def check(self, repository_models: Iterable[str] | None = None) -> None:
        """InvalidInputError for options Triton would refuse, and for --load-model names not in the repository."""
        if self.mode not in MODES:
            raise InvalidInputError(f"unknown model control mode '{self.mode}'", hint=f"use one of: {', '.join(MODES)}")
        if self.load_models and self.mode != "explicit":
            raise InvalidInputError("--load-model applies to --model-control explicit only (Triton loads every model "
                                    f"in '{self.mode}' mode)", hint="add --model-control explicit")
        if "*" in self.load_models and len(self.load_models) > 1:
            raise InvalidInputError("--load-model '*' (load every model) must be the only --load-model")
        if self.poll_interval <= 0:
            raise InvalidInputError(f"--poll-interval must be > 0 seconds, got {self.poll_interval}")
        if repository_models is not None and "*" not in self.load_models:
            known = sorted(repository_models)
            for name in self.load_models:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    raise InvalidInputError(
                        f"--load-model {name}: the repository has no model '{name}'"
                        + (f" (did you mean '{close[0]}'?)" if close else ""),
                        hint=f"models in the repository: {', '.join(known) or 'none'}",
                    )

    def triton_args(self) -> list[str]:
        args = [f"--model-control-mode={self.mode}",
                f"--exit-on-error={'true' if self.strict else 'false'}",
                f"--strict-readiness={'true' if self.strict else 'false'}"]
        if self.mode == "poll":
            args.append(f"--repository-poll-secs={max(1, round(self.poll_interval))}")
        args += [f"--load-model={name}" for name in self.load_models]
        return args

    def expected(self, repository_models: Sequence[str]) -> list[str]:
        """The models Triton loads at start-up."""
        if self.mode != "explicit" or "*" in self.load_models:
            return list(repository_models)
        return list(self.load_models)


def load_failures(log: str) -> dict[str, str]:
    """Model name -> Triton's reason, for every "failed to load 'M' version N: reason" line of a server log and
    every "Poll failed for model directory 'M': reason" line (a config Triton's core refuses) and every
    "failed to load model 'M': reason" line (refused before any version loads, e.g. no version directory);
    the last one wins."""
    failures: dict[str, str] = {}
    for line in log.splitlines():
        match = _FAILED_LOAD.search(line) or _POLL_FAILED.search(line) or _MODEL_FAILED.search(line)
        if match:
            reason = match.group("reason").split("\\n\\nAt:", 1)[0].replace("\\'", "'").replace('\\"', '"')
            version = match.groupdict().get("version")
            failures[match.group("name")] = f"version {version}: {reason}" if version else reason
    return failures


def _post(url: str, body: dict, timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read() or b"{}").get("error", "")
        except ValueError:
            error = ""
        raise ServerError(error or f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"cannot reach the server at {url}: {exc}") from None


def load_model(http_url: str, name: str, *, timeout: float = 120.0) -> None:
    """Load (or reload) ``name`` through Triton's repository API; a failure is a ServerError with Triton's reason."""
    try:
        _post(f"{http_url}/v2/repository/models/{name}/load", {}, timeout)
    except ServerError as exc:
        reason = exc.message.split("\n\nAt:", 1)[0].strip()  # drop the python stub's traceback
        raise ServerError(f"model '{name}' failed to load: {reason}",
                          hint="fix the model (`accelserve repo validate` shows what Triton will reject)") from None


def unload_model(http_url: str, name: str, *, timeout: float = 60.0) -> None:
    try:
        _post(f"{http_url}/v2/repository/models/{name}/unload", {}, timeout)
    except ServerError as exc:
        raise ServerError(f"unloading model '{name}' failed: {exc.message}") from None


@dataclass
class ShadowSync:
    """Keeps a shadow repository in step with the user's repository while the server runs (poll/explicit modes)."""

    shadow: ShadowRepository
    interval: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the thread and load_model() both refresh
    _thread: threading.Thread | None = None
    #: the last error a refresh raised (a config being written, a model directory vanishing): retried next round
    last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="accelserve-shadow-sync", daemon=True)
        self._thread.start()

    def refresh(self) -> list[str]:
        try:
            with self._lock:
                changed = self.shadow.refresh()
        except (OSError, AccelserveError) as exc:
            self.last_error = str(exc)
            return []
        self.last_error = None
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def index_changes(before: dict[tuple[str, str], tuple[str, str]], after: dict[tuple[str, str], tuple[str, str]],
                  failures: dict[str, str] | None = None) -> list[str]:
    """Lines saying what changed between two repository indexes ((name, version) -> (state, reason)): versions
    that became ready, failed to load (with ``failures`` from the log when it has the full reason), or went away."""
    lines = []
    for key in sorted(after.keys() | before.keys()):
        name, version = key
        old, new = before.get(key), after.get(key)
        if new == old:
            continue
        label = f"model {name}" + (f" version {version}" if version else "")
        state, reason = new or ("", "unloaded")
        if state == "READY":
            lines.append(f"{label} READY")
        elif state == "UNAVAILABLE" and reason and reason != "unloaded":
            lines.append(f"{label} failed to load: {(failures or {}).get(name) or reason}")
        elif state in ("", "UNAVAILABLE") and old is not None and old[0] == "READY":
            lines.append(f"{label} unloaded")
    return lines


def index_snapshot(models: Iterable) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (state, reason) of ``ModelStatus`` entries."""
    return {(m.name, m.version): (m.state, m.reason) for m in models}
