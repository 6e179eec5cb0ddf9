"""Put a candidate config on the server and measure it.

:class:`Target` is the server tune works against. For a model repository it stages a copy (the model's
``config.pbtxt`` copied, every other entry a symlink to the user's files, which are never written), starts the
local tritonserver on the stage in explicit model-control mode, and writes each candidate's config into the stage
before loading it. For a URL it uses that server's model-control API (the server must run with
``--model-control-mode=explicit``) and loads the model's config as it was at the start again at the end.

Loading goes through Triton's repository API: ``POST v2/repository/models/<m>/load`` with a ``config`` parameter
(the config as JSON) overrides the config file without rewriting it. Models served by accelserve's ONNX Runtime
stand-in get the stand-in's translation of the candidate config (``shadow.stand_in_config``).

:func:`measure_points` runs one fixed-duration load step per concurrency level (ascending), each in its own load
process, and stops early when a latency bound fails (more concurrency only queues more) or throughput stops
growing (< 5% over the best so far).
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidInputError, ServerError
from accelserve.loadtest.gates import Slo
from accelserve.loadtest.results import GENERATOR_LIMIT_PERCENT, StepResult, SweepSettings
from accelserve.loadtest.runner import RequestOptions, looks_like_path, prepare, run_sweep
from accelserve.triton.config import CONFIG_FILENAME, config_to_text, read_config

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
#: a concurrency step must add this much throughput over the best so far, or the sweep of a config stops
MIN_GAIN = 0.05


@dataclass
class Point:
    """One concurrency level of one config."""

    concurrency: int
    throughput: float  # inferences/s
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    avg_ms: float
    error_rate: float
    queue_ms: float | None
    compute_ms: float | None
    generator_cpu_percent: float | None
    workers: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return not self.violations

    @property
    def generator_limited(self) -> bool:
        return (self.generator_cpu_percent or 0.0) > GENERATOR_LIMIT_PERCENT

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passes": self.passes, "generator_limited": self.generator_limited}


def point_of(step: StepResult, slos: list[Slo], max_error_rate: float) -> Point:
    server = step.server or {}
    compute = None
    if server:
        parts = ("compute_input_ms", "compute_infer_ms", "compute_output_ms")
        compute = sum(float(server.get(k) or 0.0) for k in parts)
    point = Point(
        concurrency=int(step.level), throughput=step.inferences_per_s, requests_per_s=step.requests_per_s,
        p50_ms=step.latency_ms.get("p50", 0.0), p99_ms=step.latency_ms.get("p99", 0.0),
        avg_ms=step.latency_ms.get("avg", 0.0), error_rate=step.error_rate,
        queue_ms=server.get("queue_ms"), compute_ms=compute, generator_cpu_percent=step.load_generator_cpu_percent,
        workers=step.workers,
    )
    point.violations = violations(step, slos, max_error_rate)
    return point


def violations(step: StepResult, slos: list[Slo], max_error_rate: float) -> list[str]:
    out = []
    if step.requests == 0:
        out.append("no request completed")
    if step.error_rate > max_error_rate:
        out.append(f"error rate {step.error_rate:.2%} > {max_error_rate:.2%}")
    for slo in slos:
        value = step.metric(slo.metric)
        if not _OPS[slo.op](value, slo.value):
            out.append(f"{slo.metric} {value:.3g} (bound {slo.op}{slo.value:g})")
    return out


def violation_size(step_point: Point, slos: list[Slo], max_error_rate: float) -> float:
    """How far a point lies outside its bounds, relative to each bound (0 when it passes)."""
    total = 0.0
    values = {"p50_ms": step_point.p50_ms, "p99_ms": step_point.p99_ms, "avg_ms": step_point.avg_ms,
              "throughput": step_point.throughput, "rps": step_point.requests_per_s,
              "error_rate": step_point.error_rate}
    for slo in slos:
        value = values.get(slo.metric)
        if value is None or slo.value == 0:
            continue
        excess = (value - slo.value) / slo.value if slo.upper_bound else (slo.value - value) / slo.value
        total += max(0.0, excess)
    if step_point.error_rate > max_error_rate:
        total += step_point.error_rate - max_error_rate
    return total


def measure_points(
    url: str, protocol: str | None, model: str, levels: list[int], *, request: RequestOptions, slos: list[Slo],
    max_error_rate: float, warmup_s: float, duration_s: int, workers: int, workers_auto: bool, work_dir: Path,
    log: Callable[[str], None],
) -> list[Point]:
    """Measure the loaded model at each concurrency of ``levels`` (ascending), stopping early as described above."""
    plan = prepare(url, protocol, model, request, 10.0)
    latency_bounds = [s for s in slos if s.upper_bound and s.metric != "error_rate"]
    points: list[Point] = []
    for c in sorted(set(levels)):
        settings = SweepSettings(levels=(c,), warmup_s=warmup_s, window_s=1, fixed_duration_s=duration_s,
                                 workers=workers, workers_auto=workers_auto,
                                 request_timeout_s=request.request_timeout_s)
        step_dir = work_dir / f"c{c}"
        step_dir.mkdir(parents=True, exist_ok=True)
        with _quiet_stderr(step_dir / "load.log"):
            result, _ = run_sweep(plan, settings, step_dir)
        if not result.steps:
            raise ServerError(f"the load process measured nothing at concurrency {c}: {result.abort_reason}")
        point = point_of(result.steps[0], slos, max_error_rate)
        points.append(point)
        limited = " (generator CPU-bound: may limit the result)" if point.generator_limited else ""
        log(f"    concurrency {c}: {point.throughput:.1f} inf/s, p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms"
            f"{'' if point.passes else ' -- ' + '; '.join(point.violations)}{limited}")
        if any(v.split(" ", 1)[0] in {s.metric for s in latency_bounds} for v in point.violations):
            break
        best_before = max((p.throughput for p in points[:-1]), default=0.0)
        if best_before > 0 and point.throughput < best_before * (1.0 + MIN_GAIN):
            break
    return points


@contextlib.contextmanager
def _quiet_stderr(path: Path) -> Iterator[None]:
    """The load process's own progress lines go to a log file (tune prints one line per level instead)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class Target:
    """The server and model being tuned; use as a context manager (stages and starts a local server if needed)."""

    def __init__(self, target: str, model: str, protocol: str | None, *, server_timeout_s: float = 180.0) -> None:
        self.target, self.model, self.protocol = target, model, protocol
        self.local = looks_like_path(target)
        self.server_timeout_s = server_timeout_s
        self.server: Any = None
        self.stage: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.url = "" if self.local else target
        self.repository = Path(target).resolve() if self.local else None
        self.base_config: mc.ModelConfig | None = None

    # -------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Target:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        if self.local:
            assert self.repository is not None
            model_dir = self.repository / self.model
            if not (model_dir / CONFIG_FILENAME).is_file():
                raise InvalidInputError(
                    f"{self.repository} has no model '{self.model}' with a {CONFIG_FILENAME}",
                    hint="give the repository root and the name of one of its model directories",
                )
            self.base_config = read_config(model_dir / CONFIG_FILENAME)
            self._tmp = tempfile.TemporaryDirectory(prefix="accelserve-tune-")
            self.stage = Path(self._tmp.name) / "repository"
            stage_model = self.stage / self.model
            stage_model.mkdir(parents=True)
            for entry in model_dir.iterdir():
                if entry.name != CONFIG_FILENAME:
                    os.symlink(entry.resolve(), stage_model / entry.name, target_is_directory=entry.is_dir())
            shutil.copyfile(model_dir / CONFIG_FILENAME, stage_model / CONFIG_FILENAME)
            from accelserve.triton.model_control import ModelControl
            from accelserve.triton.server import TritonServer

            control = ModelControl(mode="explicit", load_models=(self.model,))
            self.server = TritonServer(self.stage, timeout=self.server_timeout_s, model_control=control)
            self.server.start()
            self.url = self.server.grpc_url if self.protocol == "grpc" else self.server.http_url
        else:
            self.base_config = self._remote_config()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        elif not self.local and self.base_config is not None:
            with contextlib.suppress(ServerError):
                # back to the config the model had (a load without override keeps the last override: Triton
                # reloads only when the repository's files changed)
                self._post_load(self.base_config)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------------------------------------- http
    @property
    def http_url(self) -> str:
        if self.server is not None:
            return str(self.server.http_url)
        if self.url.startswith("grpc://"):
            raise InvalidInputError("tune talks to Triton's model-control API over HTTP: give the http:// URL")
        return self.url if "://" in self.url else f"http://{self.url}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 300.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.http_url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise ServerError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(f"cannot reach Triton at {self.http_url}: {exc}") from None
        return json.loads(text) if text else None

    def _remote_config(self) -> mc.ModelConfig:
        data = self._request("GET", f"/v2/models/{self.model}/config", timeout=10.0)
        config = mc.ModelConfig()
        json_format.ParseDict(data, config, ignore_unknown_fields=True)
        return config

    def _post_load(self, config: mc.ModelConfig | None) -> None:
        body: dict[str, Any] = {}
        if config is not None:
            body = {"parameters": {"config": json_format.MessageToJson(config, preserving_proto_field_name=True)}}
        self._request("POST", f"/v2/repository/models/{self.model}/load", body)

    # ------------------------------------------------------------------------------------------------ apply
    def load(self, config: mc.ModelConfig) -> None:
        """Write ``config`` into the stage (local) and (re)load the model with it; ServerError when it fails."""
        served = config
        if self.stage is not None:
            (self.stage / self.model / CONFIG_FILENAME).write_text(config_to_text(config), encoding="utf-8")
            if self.server is not None and self.model in self.server.stand_ins:
                from accelserve.triton.shadow import DEFAULT_ONNX_FILENAME, stand_in_config

                served, _ = stand_in_config(config, config.default_model_filename or DEFAULT_ONNX_FILENAME)
        self._post_load(served)
        live = self._remote_config()
        want = (config.max_batch_size, sum(max(g.count, 1) for g in config.instance_group),
                config.HasField("dynamic_batching"))
        got = (live.max_batch_size, sum(max(g.count, 1) for g in live.instance_group),
               live.HasField("dynamic_batching"))
        if got != want:
            raise ServerError(f"the server reports (max_batch_size, instances, dynamic batching) {got} after loading "
                              f"{want}: the config override did not take")
