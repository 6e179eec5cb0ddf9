"""Run a load test from a process that must not be gevent-patched (the accelserve CLI, a test, a notebook).

:func:`run_loadtest` checks everything it can before the load starts (server, model, request shapes), starts a
local Triton when given a model repository, runs the sweep in a separate load process
(``python -m accelserve.loadtest.driver``) and reads its result file back. Locust is never imported here.

Stopped by Ctrl-C or SIGTERM (a KeyboardInterrupt; SIGTERM is :class:`accelserve.errors.Terminated` under the
CLI), the load process is stopped too and what it measured is read back: the exception that propagates carries
it as ``partial_result`` (a RunResult marked incomplete, with the reason), for the caller to report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelserve.errors import InternalError, InvalidInputError, MissingDependencyError, interruption_reason
from accelserve.loadtest.plan import RequestPlan, build_plan
from accelserve.loadtest.results import GENERATOR_LIMIT_PERCENT, RunResult, SweepSettings

#: driver exit status for "stopped early, result marked incomplete"
DRIVER_ABORTED = 4
#: seconds added to the sweep's budget for process start, spawning and teardown
OVERHEAD_S = 60.0


@dataclass
class RequestOptions:
    """What to send (see :func:`accelserve.loadtest.plan.build_plan`)."""

    batch: int | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ranges: dict[str | None, tuple[float, float]] = field(default_factory=dict)
    data_file: str | None = None
    binary_data: bool = True
    seed: int = 0
    request_timeout_s: float = 30.0
    string_length: int = 16
    string_data: str | None = None
    sequence_length: int | None = None


def looks_like_path(target: str) -> bool:
    return "://" not in target and (os.sep in target or target.startswith(".") or Path(target).exists())


def time_limit_s(settings: SweepSettings) -> float:
    steps = len(settings.levels)
    return steps * settings.step_budget_s() + OVERHEAD_S


def check_locust_installed() -> None:
    """Locust must be importable by the load process; find it without importing it (importing patches gevent)."""
    if importlib.util.find_spec("locust") is None:
        raise MissingDependencyError(
            "load testing needs the Python package 'locust', which is not installed",
            hint="pip install 'accelserve[loadtest]'",
        )


@contextlib.contextmanager
def served(target: str, protocol: str | None, *, server_timeout_s: float = 120.0) -> Iterator[tuple[str, Any]]:
    """Yield ``(url, server)``: the URL as given (server None), or a local Triton started on a repository."""
    if not looks_like_path(target):
        yield target, None
        return
    repo = Path(target)
    if not repo.is_dir():
        raise InvalidInputError(
            f"'{target}' is neither a Triton URL nor an existing model repository directory",
            hint="give http://HOST:PORT, grpc://HOST:PORT, or the path of a model repository",
        )
    from accelserve.triton.server import TritonServer

    sys.stderr.write(f"starting tritonserver on {repo} for the load test ...\n")
    with TritonServer(repo, timeout=server_timeout_s) as server:
        yield (server.grpc_url if protocol == "grpc" else server.http_url), server


def prepare(url: str, protocol: str | None, model: str, request: RequestOptions, timeout_s: float) -> RequestPlan:
    """Every check that can fail before the load starts: reachable, model loaded, shapes and batch valid."""
    from accelserve.triton.client import TritonClient

    with TritonClient(url, protocol, timeout=timeout_s) as client:
        return build_plan(
            client, model, batch=request.batch, shapes=request.shapes, ranges=request.ranges,
            data_file=request.data_file, binary_data=request.binary_data, seed=request.seed,
            request_timeout_s=request.request_timeout_s, string_length=request.string_length,
            string_data=request.string_data, sequence_length=request.sequence_length,
        )


def run_load_process(plan: RequestPlan, settings: SweepSettings, work_dir: Path) -> tuple[RunResult, int]:
    """Run the driver in a child process; returns the result it wrote and its exit status."""
    result_path = work_dir / "result.json"
    job_path = work_dir / "job.json"
    limit = time_limit_s(settings)
    job = {"plan": plan.to_dict(), "settings": settings.to_dict(), "result_path": str(result_path), "time_limit_s": limit}
    job_path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "accelserve.loadtest.driver", str(job_path)], env=env)
    try:
        code = proc.wait(timeout=limit + 30.0)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # lets the driver write what it measured
        try:
            code = proc.wait(timeout=20.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    except KeyboardInterrupt as exc:
        _stop(proc)
        partial = _read_partial(result_path)
        if partial is not None:
            partial.complete = False
            partial.abort_reason = interruption_reason(exc)
        exc.partial_result = partial  # type: ignore[attr-defined]
        raise
    if not result_path.exists():
        raise InternalError(f"the load process exited with status {code} without writing {result_path}")
    result = RunResult.load(result_path)
    if code not in (0, DRIVER_ABORTED) and result.complete is False and not result.abort_reason:
        result.abort_reason = f"the load process failed (exit status {code}); see its output above"
    return result, code


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the driver writes its result and exits), then SIGKILL if it does not within 30 s."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30.0)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_partial(result_path: Path) -> RunResult | None:
    try:
        return RunResult.load(result_path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def max_auto_workers() -> int:
    """Worker processes ``--workers auto`` may grow to: one per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def run_sweep(plan: RequestPlan, settings: SweepSettings, work_dir: Path,
              log: Any = None) -> tuple[RunResult, int]:
    """:func:`run_load_process`, and with ``settings.workers_auto``: while a step's generator process passed
    ``GENERATOR_LIMIT_PERCENT`` of a core, re-measure those steps with more local worker processes (2, then one more
    each round, up to one per core), keeping the re-measured steps. ``load_generator["auto_workers"]`` records
    each round; a step still over the limit at the maximum stays marked ``generator_limited``."""
    result, code = run_load_process(plan, settings, work_dir)
    for step in result.steps:
        step.workers = settings.workers
    if not settings.workers_auto:
        return result, code
    rounds = [{"workers": settings.workers, "levels": list(settings.levels)}]
    workers = settings.workers
    while result.complete:
        limited = [s.level for s in result.steps if s.generator_limited]
        if not limited or workers >= max_auto_workers():
            break
        workers = min(max_auto_workers(), max(2, workers + 1))
        if log is not None:
            levels = ", ".join(f"{v:g}" for v in limited)
            log(f"load generator above {GENERATOR_LIMIT_PERCENT:.0f}% of a core at {levels}: "
                f"measuring again with {workers} worker processes\n")
        again_dir = work_dir / f"workers{workers}"
        again_dir.mkdir(parents=True, exist_ok=True)
        again, code = run_load_process(plan, dataclasses.replace(settings, levels=tuple(limited), workers=workers),
                                       again_dir)
        rounds.append({"workers": workers, "levels": limited})
        by_level = {s.level: s for s in again.steps}
        for step in again.steps:
            step.workers = workers
        result.steps = [by_level.get(s.level, s) for s in result.steps]
        result.complete, result.abort_reason = again.complete, again.abort_reason
    result.load_generator["auto_workers"] = rounds
    result.load_generator["workers"] = workers
    return result, code


def run_loadtest(
    target: str,
    model: str,
    settings: SweepSettings,
    *,
    protocol: str | None = None,
    request: RequestOptions | None = None,
    connect_timeout_s: float = 5.0,
    server_timeout_s: float = 120.0,
    work_dir: str | Path | None = None,
) -> RunResult:
    """Check, run and return the result (``result.complete`` is False when the run stopped early)."""
    check_locust_installed()
    request = request or RequestOptions()
    with served(target, protocol, server_timeout_s=server_timeout_s) as (url, server):
        plan = prepare(url, protocol, model, request, connect_timeout_s)
        sys.stderr.write(f"load test: {plan.describe()}\n")
        for note in plan.notes:
            sys.stderr.write(f"note: {note}\n")
        with tempfile.TemporaryDirectory(prefix="accelserve-loadtest-") as tmp:
            directory = Path(work_dir) if work_dir is not None else Path(tmp)
            directory.mkdir(parents=True, exist_ok=True)
            try:
                result, _ = run_sweep(plan, settings, directory, log=sys.stderr.write)
            except KeyboardInterrupt as exc:
                partial = getattr(exc, "partial_result", None)
                if partial is not None and server is not None:
                    partial.target["served_from"] = str(Path(target).resolve())
                raise
        if server is not None:
            result.target["served_from"] = str(Path(target).resolve())
            if not server.is_alive() and result.complete is False and result.abort_reason:
                result.abort_reason += " (the local tritonserver exited)"
    return result
