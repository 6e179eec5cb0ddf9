"""Temporary directories that name the process that owns them, so a later run can remove those of dead processes.

A process killed with SIGKILL (an OOM kill, ``kill -9``, a CI runner torn down) runs no cleanup: its staging and
work directories stay. Every such directory accelserve creates is named ``PREFIX<pid>-<start>-<host>-<random>``:
the owner's PID, its start time (clock ticks since boot, from /proc: a reused PID has another) and a short hash of
the host name (a directory shared between machines or containers is never judged by the wrong process table).
:func:`remove_stale` deletes those whose owner is gone and says what it removed; :func:`find_leftovers` lists
them, and also those of unknown owner (older names, other hosts), which are only reported, never removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (field 22 of /proc/PID/stat), or None where /proc does not say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":  # a zombie has finished: it owns nothing any more
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def owner_tag() -> str:
    """``<pid>-<start>-<host>`` of this process."""
    pid = os.getpid()
    return f"{pid}-{_start_ticks(pid) or 0}-{_host_hash()}"


def make_owned_dir(prefix: str, parent: str | Path | None = None) -> Path:
    """``tempfile.mkdtemp`` with this process's owner tag in the name (mode 0700, as mkdtemp makes it)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}-", dir=parent))


@dataclass(frozen=True)
class Leftover:
    """A directory left by a process that no longer runs (``pid`` None: the owner cannot be told)."""

    path: Path
    pid: int | None
    size_bytes: int

    def owner(self) -> str:
        """'process N, no longer running; 1.2 MB' (or 'owner unknown; ...')."""
        owner = f"process {self.pid}, no longer running" if self.pid is not None else "owner unknown"
        return f"{owner}; {self.size_bytes / 1e6:.1f} MB"

    def describe(self) -> str:
        return f"{self.path} ({self.owner()})"


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _owner_state(name: str, prefix: str) -> tuple[str, int | None]:
    """('alive'|'dead'|'unknown', pid) for a directory named by :func:`make_owned_dir` with ``prefix``."""
    m = re.fullmatch(re.escape(prefix) + r"(\d+)-(\d+)-([0-9a-f]{6})-.+", name)
    if not m:
        return "unknown", None
    pid, start, host = int(m.group(1)), int(m.group(2)), m.group(3)
    if host != _host_hash():
        return "unknown", pid
    if pid == os.getpid():
        return "alive", pid
    ticks = _start_ticks(pid)
    if ticks is None:
        if Path("/proc/self/stat").exists():  # /proc works: the process is gone (or a zombie)
            return "dead", pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead", pid
        except PermissionError:
            return "alive", pid
        return "alive", pid
    return ("alive" if start in (0, ticks) else "dead"), pid


def find_leftovers(directory: str | Path, prefix: str, *, include_unknown: bool = True) -> list[Leftover]:
    """Directories in ``directory`` named ``prefix*`` whose owner is gone (and, with ``include_unknown``, those
    whose owner cannot be told). Directories of running processes are never listed."""
    root = Path(directory)
    out = []
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    for child in children:
        if not child.name.startswith(prefix) or not child.is_dir() or child.is_symlink():
            continue
        state, pid = _owner_state(child.name, prefix)
        if state == "dead" or (state == "unknown" and include_unknown):
            out.append(Leftover(child, pid if state == "dead" else None, _tree_size(child)))
    return out


def remove_stale(directory: str | Path, prefix: str) -> list[Leftover]:
    """Remove the directories of ``prefix`` in ``directory`` whose owner process is gone; returns what went."""
    removed = []
    for leftover in find_leftovers(directory, prefix, include_unknown=False):
        shutil.rmtree(leftover.path, ignore_errors=True)
        if not leftover.path.exists():
            removed.append(leftover)
    return removed
