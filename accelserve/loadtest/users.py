"""The Locust user that sends inference requests to Triton over HTTP or gRPC.

Import this module only in a process that runs load: it imports Locust first (which monkey-patches the process
with gevent), then tritonclient. ``tritonclient.http`` runs on geventhttpclient and cooperates with gevent;
``tritonclient.grpc`` does after ``grpc.experimental.gevent.init_gevent()``, called here.

One :class:`TritonUser` is one closed-loop client: it sends a request, waits for the answer, and sends the next
(concurrency mode), or paces itself to a share of a target request rate (rate mode, :func:`set_pacing`).
"""

from __future__ import annotations

import locust  # first: gevent must patch the process before anything opens a socket

# isort: split
import itertools
import random
import time
from typing import Any

import grpc.experimental.gevent as grpc_gevent
import locust.runners
import locust.stats
from locust import User, task

from accelserve.errors import AccelserveError
from accelserve.loadtest.histogram import bucket_ms
from accelserve.loadtest.plan import RequestPlan, build_plan, parse_ranges, payloads

grpc_gevent.init_gevent()

#: custom messages from the master to its workers
MSG_PLAN = "accelserve_plan"
MSG_PACING = "accelserve_pacing"
#: seconds between worker -> master stats reports (Locust's default is 3)
REPORT_INTERVAL_S = 1.0
#: seconds between CPU usage samples of each Locust process (Locust's default is 10)
CPU_MONITOR_INTERVAL_S = 1.0

_plan: RequestPlan | None = None
_pacing: dict[str, Any] = {"interval": None, "version": 0}
_user_ids = itertools.count()


def tune_locust() -> None:
    """Finer latency buckets (3 significant digits, not whole ms) and faster worker reports.

    Both are module-level settings Locust documents as replaceable; call this in every Locust process
    (master, workers, local) before the run.
    """
    locust.stats.bucket_response_time = bucket_ms  # type: ignore[assignment]
    locust.runners.WORKER_REPORT_INTERVAL = REPORT_INTERVAL_S
    locust.runners.CPU_MONITOR_INTERVAL = CPU_MONITOR_INTERVAL_S


def configure(plan: RequestPlan | dict[str, Any]) -> None:
    """Set what every TritonUser of this process sends."""
    global _plan
    _plan = plan if isinstance(plan, RequestPlan) else RequestPlan.from_dict(plan)


def current_plan() -> RequestPlan | None:
    return _plan


def set_pacing(interval_s: float | None) -> None:
    """Each user starts one request every ``interval_s`` seconds (None: back to back)."""
    _pacing["interval"] = interval_s
    _pacing["version"] += 1


class _HttpInfer:
    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        import tritonclient.http as httpclient

        self.client = httpclient.InferenceServerClient(
            plan.host_port, connection_timeout=min(5.0, plan.request_timeout_s), network_timeout=plan.request_timeout_s
        )
        self.model = plan.model
        self.requests = []
        for arrays in requests:
            inputs = []
            for t in plan.inputs:
                tensor = httpclient.InferInput(t.name, list(arrays[t.name].shape), t.datatype)
                tensor.set_data_from_numpy(arrays[t.name], binary_data=plan.binary_data)
                inputs.append(tensor)
            self.requests.append(inputs)
        self.outputs = [httpclient.InferRequestedOutput(n, binary_data=plan.binary_data) for n in plan.outputs]

    def infer(self, i: int) -> None:
        self.client.infer(self.model, self.requests[i % len(self.requests)], outputs=self.outputs)

    def close(self) -> None:
        self.client.close()


class _GrpcInfer:
    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(plan.host_port)
        self.model = plan.model
        self.timeout = plan.request_timeout_s
        self.requests = []
        for arrays in requests:
            inputs = []
            for t in plan.inputs:
                tensor = grpcclient.InferInput(t.name, list(arrays[t.name].shape), t.datatype)
                tensor.set_data_from_numpy(arrays[t.name])
                inputs.append(tensor)
            self.requests.append(inputs)
        self.outputs = [grpcclient.InferRequestedOutput(n) for n in plan.outputs]

    def infer(self, i: int) -> None:
        self.client.infer(self.model, self.requests[i % len(self.requests)], outputs=self.outputs, client_timeout=self.timeout)

    def close(self) -> None:
        self.client.close()  # without this, Locust hangs at exit waiting for the gRPC channel


class TritonUser(User):
    """Sends the configured request (see :func:`configure`) to Triton, back to back or paced."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._client: _HttpInfer | _GrpcInfer | None = None
        self._n = 0
        self._next_start: float | None = None
        self._pacing_version = -1

    def wait_time(self) -> float:
        interval = _pacing["interval"]
        if not interval:
            return 0.0
        now = time.perf_counter()
        if self._next_start is None or self._pacing_version != _pacing["version"]:
            self._pacing_version = _pacing["version"]
            self._next_start = now + random.uniform(0.0, interval)  # spread users over the interval
        else:
            self._next_start = max(self._next_start + interval, now)  # late: start now, do not burst to catch up
        return max(0.0, self._next_start - now)

    def on_start(self) -> None:
        plan = _plan
        if plan is None:
            raise RuntimeError("TritonUser started before accelserve.loadtest.users.configure(plan) was called")
        index = next(_user_ids)
        requests = payloads(plan, user_index=index)
        self._client = _GrpcInfer(plan, requests) if plan.protocol == "grpc" else _HttpInfer(plan, requests)
        if plan.sequence_length:  # sequence models: correlation IDs and START/END flags (loadtest/sequences.py)
            from accelserve.loadtest.sequences import SequenceInfer

            self._client.close()
            self._client = SequenceInfer(plan, requests)  # type: ignore[assignment]
        self._name = f"{plan.model} infer"
        self._type = "gRPC" if plan.protocol == "grpc" else "HTTP"
        self._n = index  # users start at different requests of the pool

    def on_stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @task
    def infer(self) -> None:
        assert self._client is not None
        exception: BaseException | None = None
        start = time.perf_counter()
        try:
            self._client.infer(self._n)
        except Exception as exc:  # noqa: BLE001 -- every failed request is counted as an error by Locust
            exception = exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self._n += 1
        self.environment.events.request.fire(
            request_type=self._type, name=self._name, response_time=elapsed_ms, response_length=0,
            exception=exception, context={},
        )


# ------------------------------------------------------------------------- plain `locust -f` use (the locustfile)


def add_arguments(parser: Any) -> None:
    """Locust command-line options of the Triton locustfile (shown in ``locust --help``; sent to workers)."""
    group = parser.add_argument_group("Triton (accelserve)")
    group.add_argument("--triton-url", default="", help="Triton URL, http://H:P or grpc://H:P (default: --host)")
    group.add_argument("--triton-model", default="", help="model name (required)")
    group.add_argument("--triton-protocol", default="", choices=["", "http", "grpc"], help="for a URL without scheme")
    group.add_argument("--triton-batch", type=int, default=0, help="batch size (default 1)")
    group.add_argument("--triton-shape", default="", help="full input shapes, NAME=DIMS;NAME=DIMS (dynamic dims)")
    group.add_argument("--triton-range", default="", help="random data range, [NAME=]LOW:HIGH;... (default -1:1)")
    group.add_argument("--triton-data", default="", help=".npz with one array per input (real samples)")
    group.add_argument("--triton-json", action="store_true", default=False, help="HTTP: JSON tensors, not binary")
    group.add_argument("--triton-seed", type=int, default=0, help="random data seed")
    group.add_argument("--triton-timeout", type=float, default=30.0, help="request timeout, seconds")


def plan_from_options(options: Any, host: str | None) -> RequestPlan:
    """Build (and check against the server) the plan from the locustfile's options."""
    from accelserve.errors import InvalidInputError
    from accelserve.triton.client import TritonClient, parse_shape_overrides

    url = options.triton_url or host or ""
    if not url or not options.triton_model:
        raise InvalidInputError("the Triton locustfile needs --triton-url (or --host) and --triton-model")
    shapes = parse_shape_overrides([s for s in options.triton_shape.split(";") if s])
    ranges = parse_ranges([r for r in options.triton_range.split(";") if r])
    with TritonClient(url, options.triton_protocol or None, timeout=5.0) as client:
        return build_plan(
            client, options.triton_model, batch=options.triton_batch or None, shapes=shapes, ranges=ranges,
            data_file=options.triton_data or None, binary_data=not options.triton_json, seed=options.triton_seed,
            request_timeout_s=options.triton_timeout,
        )


def configure_from_options(environment: Any) -> None:
    """``test_start`` hook of the locustfile: build the plan once per process, or stop Locust with the reason."""
    if _plan is not None:
        return
    try:
        configure(plan_from_options(environment.parsed_options, environment.host))
    except AccelserveError as exc:
        import sys

        sys.stderr.write(f"error: {exc}\n")
        environment.process_exit_code = 1
        if environment.runner is not None:
            environment.runner.quit()
        raise SystemExit(1) from None
