"""The load process: ``python -m accelserve.loadtest.driver JOB.json``.

Runs the sweep with Locust as a library and writes a :class:`~accelserve.loadtest.results.RunResult` JSON after
every step (so a crash or a dead server leaves what was measured). Locust is imported first: it monkey-patches
the process with gevent, which must happen before anything else opens sockets or imports ssl.

Per step: set the load (users, or pacing for a request rate), wait until spawned, warm up, then measure in
windows between whole-second boundaries. At each boundary Triton's statistics are read, and the aggregated
Locust stats are snapshotted (in distributed mode one worker-report interval later, so the workers' reports for
the window have arrived). A step ends when the last windows are stable (see :mod:`.stability`), at
``max_step_s``, or after ``fixed_duration_s``.

Exit status: 0 complete, 4 aborted (result marked incomplete), anything else a crash.

SIGINT and SIGTERM stop the sweep the same way (the CLI forwards its own signal as SIGINT; a terminal's Ctrl-C
reaches both processes): the first one raises KeyboardInterrupt in the main greenlet, later ones are ignored so
the result file is always written. Both are installed explicitly: a load test started in the background of a
script inherits SIGINT ignored. gevent's hub does not print the KeyboardInterrupt as an error.
"""

from __future__ import annotations

import locust  # first, see above

# isort: split
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust.env import Environment
from locust.runners import MasterRunner, Runner

from accelserve.loadtest import users
from accelserve.loadtest.histogram import ClientSnapshot, WindowStats, window
from accelserve.loadtest.plan import RequestPlan
from accelserve.loadtest.progress import Progress
from accelserve.loadtest.results import RunResult, StepResult, SweepSettings
from accelserve.loadtest.server_stats import ServerBreakdown, ServerCounters, parse_statistics
from accelserve.loadtest.stability import StabilityRule, is_stable

EXIT_ABORTED = 4
SPAWN_TIMEOUT_S = 30.0
WORKER_CONNECT_TIMEOUT_S = 30.0
MAX_SPAWN_RATE = 100.0  # Locust warns above this


class Aborted(Exception):
    """The run cannot go on (server gone, worker gone, time limit, interrupted)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        gevent.sleep(delay)


class Sweep:
    def __init__(
        self,
        env: Environment,
        runner: Runner,
        plan: RequestPlan,
        settings: SweepSettings,
        result: RunResult,
        result_path: Path,
        read_server: Callable[[], ServerCounters | None],
        progress: Progress,
        deadline: float,
    ) -> None:
        self.env, self.runner, self.plan, self.settings = env, runner, plan, settings
        self.result, self.result_path = result, result_path
        self.read_server, self.progress, self.deadline = read_server, progress, deadline
        self.distributed = isinstance(runner, MasterRunner)
        # distributed: wait one report interval (plus a margin) after a boundary before snapshotting
        self.lag_s = users.REPORT_INTERVAL_S + 0.4 if self.distributed else 0.0
        self.rule = StabilityRule(settings.stability_tolerance, settings.stability_windows)
        self._spawned = gevent.event.Event()
        env.events.spawning_complete.add_listener(lambda user_count, **_: self._spawned.set())

    # ------------------------------------------------------------------------------------------------ helpers
    def _check_deadline(self) -> None:
        if time.time() > self.deadline:
            raise Aborted("the run exceeded its time limit")

    def _check_workers(self) -> None:
        if self.distributed:
            assert isinstance(self.runner, MasterRunner)
            if self.runner.worker_count < self.settings.workers:
                raise Aborted(
                    f"a load-generator worker stopped ({self.runner.worker_count} of {self.settings.workers} left)"
                )

    def _cpu_sample(self) -> tuple[float, float]:
        """(wall time, CPU measure) at a boundary: this process's CPU seconds when the users run here (exact),
        else the busiest worker's CPU percent from its last heartbeat (Locust samples it every second)."""
        if self.distributed:
            assert isinstance(self.runner, MasterRunner)
            return time.time(), max((float(c.cpu_usage) for c in self.runner.clients.all), default=0.0)
        return time.time(), time.process_time()

    def _cpu_percent(self, samples: list[tuple[float, float]]) -> float | None:
        if not samples:
            return None
        if self.distributed:
            return sum(v for _, v in samples) / len(samples)
        (w0, c0), (w1, c1) = samples[0], samples[-1]
        return 100.0 * (c1 - c0) / (w1 - w0) if w1 > w0 else None

    def _set_users(self, count: int) -> None:
        self._spawned.clear()
        self.runner.start(count, spawn_rate=min(float(count), MAX_SPAWN_RATE))
        if not self._spawned.wait(timeout=SPAWN_TIMEOUT_S + count / MAX_SPAWN_RATE):
            raise Aborted(f"Locust did not finish spawning {count} users within {SPAWN_TIMEOUT_S:.0f} s")

    def _server(self, label: str) -> ServerCounters | None:
        try:
            return self.read_server()
        except Exception as exc:  # noqa: BLE001 -- the server is gone or broken: stop here, keep what was measured
            reason = getattr(exc, "message", None) or str(exc)
            raise Aborted(f"Triton at {self.plan.url} stopped answering during {label}: {reason}") from None

    # -------------------------------------------------------------------------------------------------- sweep
    def run(self) -> None:
        s = self.settings
        if s.mode == "rate":
            self._set_users(s.rate_users)
        for index, level in enumerate(s.levels):
            label = f"{s.mode} {level:g}"
            self.progress.step_started(index, len(s.levels), label)
            if s.mode == "rate":
                interval = s.rate_users / float(level)
                users.set_pacing(interval)
                if self.distributed:
                    self.runner.send_message(users.MSG_PACING, {"interval": interval})
                user_count = s.rate_users
            else:
                user_count = int(level)
                self._set_users(user_count)
            sleep_until(time.time() + s.warmup_s)
            self._check_deadline()
            step = self._measure(level, user_count, label)
            self.result.steps.append(step)
            self.result.save(self.result_path)
            self.progress.step_done(step)

    def _measure(self, level: float, user_count: int, label: str) -> StepResult:
        s = self.settings
        fixed = s.fixed_duration_s
        width = 1 if fixed else s.window_s
        t0 = math.ceil(time.time())
        servers: dict[int, ServerCounters | None] = {}
        snaps: list[tuple[int, ClientSnapshot]] = []
        windows: list[WindowStats] = []
        cpu: list[tuple[float, float]] = []  # one sample per boundary
        next_server = next_client = 0
        try:
            while True:
                t_server = t0 + next_server * width
                t_client = t0 + next_client * width + self.lag_s
                if t_server <= t_client:
                    sleep_until(t_server)
                    servers[next_server] = self._server(label)
                    next_server += 1
                    continue
                sleep_until(t_client)
                self._check_workers()
                self._check_deadline()
                t_k = t0 + next_client * width
                snaps.append((t_k, ClientSnapshot.of_entry(self.env.stats.total)))
                cpu.append(self._cpu_sample())
                next_client += 1
                if len(snaps) < 2:
                    continue
                (t_a, a), (t_b, b) = snaps[-2], snaps[-1]
                windows.append(window(t_a, a, t_b, b))
                elapsed = t_b - t0
                if fixed:
                    self.progress.window(label, windows[-1], elapsed, fixed)
                    if elapsed >= fixed:
                        return self._step(level, user_count, windows, servers, t0, width, None, True, cpu)
                    continue
                stable = is_stable(
                    [w.requests_per_s for w in windows], [w.latency_ms(0.95) for w in windows], self.rule
                )
                self.progress.window(label, windows[-1], elapsed, s.max_step_s, stable=stable)
                if stable or elapsed >= s.max_step_s:
                    used = windows[-self.rule.windows:]
                    return self._step(level, user_count, used, servers, t0, width, stable, True, cpu)
        except Aborted:
            # keep the windows measured before the failure as an incomplete step, then stop the run
            if windows:
                used = windows if fixed else windows[-self.rule.windows:]
                self.result.steps.append(self._step(level, user_count, used, servers, t0, width, None, False, cpu))
            raise

    def _step(
        self, level: float, user_count: int, used: list[WindowStats], servers: dict[int, ServerCounters | None],
        t0: int, width: int, stable: bool | None, complete: bool, cpu: list[tuple[float, float]],
    ) -> StepResult:
        first, last = (used[0].start_s - t0) // width, (used[-1].end_s - t0) // width
        begin, end = servers.get(first), servers.get(last)
        breakdown = ServerBreakdown.of_delta(end - begin) if begin is not None and end is not None else None
        return StepResult.of_windows(
            mode=self.settings.mode, level=level, users=user_count, batch_size=self.plan.batch_size,
            windows=used, server=breakdown, stable=stable, complete=complete,
            cpu_percent=self._cpu_percent(cpu[first:last + 1]),
        )


# ------------------------------------------------------------------------------------------------- processes


class WorkerPool:
    """N local ``accelserve.loadtest.worker_main`` processes connected to this master."""

    def __init__(self, count: int, master_port: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "accelserve.loadtest.worker_main",
                 "--master-host", "127.0.0.1", "--master-port", str(master_port)],
                stdin=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]

    def wait_connected(self, runner: MasterRunner, count: int) -> None:
        deadline = time.time() + WORKER_CONNECT_TIMEOUT_S
        while runner.worker_count < count:
            dead = [p.pid for p in self.procs if p.poll() is not None]
            if dead:
                raise Aborted(f"load-generator worker process(es) {dead} exited before connecting")
            if time.time() > deadline:
                raise Aborted(f"only {runner.worker_count} of {count} workers connected within {WORKER_CONNECT_TIMEOUT_S:.0f} s")
            gevent.sleep(0.1)

    def close(self, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerReader:
    """Reads the model's Triton statistics; close() it (an open gRPC channel keeps a gevent process from exiting)."""

    def __init__(self, plan: RequestPlan) -> None:
        from accelserve.triton.client import TritonClient

        self.model = plan.model
        self.client: Any = TritonClient(plan.url, timeout=5.0)

    def __call__(self) -> ServerCounters:
        return parse_statistics(self.client.statistics(self.model), self.model)

    def close(self) -> None:
        # drop the client now, while gevent's hub runs: tritonclient.grpc closes its channel again in __del__, and
        # a close left to garbage collection at interpreter exit can hang the process
        if self.client is not None:
            self.client.close()
            self.client = None


def install_stop_signals() -> None:
    """SIGINT/SIGTERM: KeyboardInterrupt once, then ignored; gevent's hub passes it on without a traceback."""
    stopping = {"yes": False}

    def on_signal(signum: int, frame: object) -> None:
        if not stopping["yes"]:
            stopping["yes"] = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)  # still raised in the main greenlet, just not printed


def run(job: dict[str, Any]) -> int:
    install_stop_signals()
    plan = RequestPlan.from_dict(job["plan"])
    settings = SweepSettings.from_dict(job["settings"])
    result_path = Path(job["result_path"])
    deadline = time.time() + float(job["time_limit_s"])
    progress = Progress(sys.stderr)
    users.tune_locust()
    users.configure(plan)
    result = RunResult(
        target={
            "url": plan.url, "protocol": plan.protocol, "model": plan.model, "batch_size": plan.batch_size,
            "max_batch_size": plan.max_batch_size, "binary_data": plan.binary_data, "data_file": plan.data_file,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in plan.inputs],
        },
        settings=settings,
        started_at=utc_now(),
        load_generator={"workers": settings.workers, "locust_version": locust.__version__},
    )
    result.save(result_path)

    env = Environment(user_classes=[users.TritonUser], stop_timeout=0.0)
    worker_requests: dict[str, int] = {}
    pool: WorkerPool | None = None
    if settings.workers:
        port = _free_port()
        runner: Runner = env.create_master_runner("127.0.0.1", port)
        env.events.worker_report.add_listener(
            lambda client_id, data, **_: worker_requests.__setitem__(client_id, int(data.get("accelserve_requests", 0)))
        )
        pool = WorkerPool(settings.workers, port)
    else:
        runner = env.create_local_runner()

    code = 0
    reader = ServerReader(plan)
    try:
        if pool is not None:
            assert isinstance(runner, MasterRunner)
            pool.wait_connected(runner, settings.workers)
            runner.send_message(users.MSG_PLAN, plan.to_dict())
        Sweep(env, runner, plan, settings, result, result_path, reader, progress, deadline).run()
        result.complete = True
    except Aborted as exc:
        result.abort_reason = str(exc)
        code = EXIT_ABORTED
    except KeyboardInterrupt:
        result.abort_reason = "interrupted"
        code = EXIT_ABORTED
    finally:
        runner.stop()
        if pool is not None:
            gevent.sleep(users.REPORT_INTERVAL_S + 0.5)  # the workers' last reports
        total = env.stats.total
        result.load_generator.update({
            "total_requests": int(total.num_requests),
            "total_failures": int(total.num_failures),
            "worker_requests": sorted(worker_requests.values()) if pool is not None else None,
        })
        result.finished_at = utc_now()
        result.save(result_path)
        runner.quit()
        reader.close()
        if pool is not None:
            pool.close()
    progress.finished(result)
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m accelserve.loadtest.driver JOB.json\n")
        return 2
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(job)


def exit_now(code: int) -> None:
    """Exit without running finalizers: everything is written and closed by now, and a gRPC channel finalized by
    the garbage collector at interpreter exit can hang a gevent process."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
