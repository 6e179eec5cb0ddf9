"""The Locust user that sends inference requests to Triton over HTTP or gRPC.

Import this module only in a process that runs load: it imports Locust first (which monkey-patches the process
with gevent), then the clients: a minimal keep-alive HTTP/1.1 connection on gevent's sockets for HTTP
(:mod:`.rawhttp`, half the client CPU of geventhttpclient, which Locust's FastHttpUser uses), grpc for gRPC
(cooperating with gevent after ``grpc.experimental.gevent.init_gevent()``, called here). Each user encodes its
requests once (:mod:`accelserve.loadtest.encoding`) and re-sends the bytes; responses are checked by status, and
a sample of them fully decoded (output names, shapes, datatypes).

One :class:`TritonUser` is one closed-loop client: it sends a request, waits for the answer, and sends the next
(concurrency mode), or paces itself to a share of a target request rate (rate mode, :func:`set_pacing`).
"""

from __future__ import annotations

import locust  # first: gevent must patch the process before anything opens a socket

# isort: split
import itertools
import os
import random
import time
from typing import Any

import grpc.experimental.gevent as grpc_gevent
import locust.runners
import locust.stats
from locust import User, task

from accelserve.errors import AccelserveError
from accelserve.loadtest import encoding, rawhttp
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
#: environment variable choosing the request sender: unset = pre-encoded bytes over rawhttp / raw gRPC calls;
#: "geventhttpclient" (HTTP) or "tritonclient" (encoding every request): only to measure the difference
#: (bench/loadtest_vs_wrk.py --tools)
CLIENT_ENV = "ACCELSERVE_LOADTEST_CLIENT"


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
    """One HTTP/1.1 keep-alive connection posting pre-encoded requests (:mod:`accelserve.loadtest.rawhttp`)."""

    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        host, _, port = plan.host_port.rpartition(":")
        host = host.strip("[]")
        self.connection = rawhttp.Connection(host, int(port), connect_timeout=min(5.0, plan.request_timeout_s),
                                             timeout=plan.request_timeout_s)
        self.requests = []
        for arrays in requests:
            encoded = encoding.encode_http(plan, arrays)
            self.requests.append(rawhttp.message(host, int(port), encoded.path, encoded.headers, encoded.body))
        self.check = encoding.ResponseCheck(plan)

    def infer(self, i: int) -> int:
        response = self.connection.request(self.requests[i % len(self.requests)])
        self.check.http(response.status, response.headers, response.body)
        return len(response.body)

    def close(self) -> None:
        self.connection.close()


class _GeventHttp:
    """geventhttpclient (as Locust's FastHttpUser) posting the same pre-encoded bodies: kept to measure against."""

    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        from geventhttpclient import HTTPClient

        host, _, port = plan.host_port.rpartition(":")
        self.client = HTTPClient(host.strip("[]"), int(port), connection_timeout=min(5.0, plan.request_timeout_s),
                                 network_timeout=plan.request_timeout_s, concurrency=1)
        self.requests = [encoding.encode_http(plan, arrays) for arrays in requests]
        self.check = encoding.ResponseCheck(plan)

    def infer(self, i: int) -> int:
        request = self.requests[i % len(self.requests)]
        response = self.client.post(request.path, body=request.body, headers=request.headers)
        try:
            body = response.read()
        finally:
            response.release()
        self.check.http(response.status_code, response, body)
        return len(body)

    def close(self) -> None:
        self.client.close()


class _GrpcInfer:
    """A gRPC channel of its own sending pre-serialized ``ModelInferRequest`` bytes through a generic call."""

    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        import grpc

        options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                   ("grpc.use_local_subchannel_pool", 1)]  # one connection per user, as with HTTP
        self.channel = grpc.insecure_channel(plan.host_port, options=options)
        self.call = self.channel.unary_unary(encoding.GRPC_INFER_METHOD)  # no (de)serializers: bytes in, bytes out
        self.timeout = plan.request_timeout_s
        self.requests = [encoding.encode_grpc(plan, arrays) for arrays in requests]
        self.check = encoding.ResponseCheck(plan)

    def infer(self, i: int) -> int:
        data = self.call(self.requests[i % len(self.requests)], timeout=self.timeout)
        self.check.grpc(data)
        return len(data)

    def close(self) -> None:
        self.channel.close()  # without this, Locust hangs at exit waiting for the gRPC channel


class _TritonclientHttp:
    """tritonclient.http per request (encodes and decodes every request): kept to measure against, see CLIENT_ENV."""

    def __init__(self, plan: RequestPlan, requests: list[dict[str, Any]]) -> None:
        import tritonclient.http as httpclient

        self.client = httpclient.InferenceServerClient(
            plan.host_port, connection_timeout=min(5.0, plan.request_timeout_s), network_timeout=plan.request_timeout_s
        )
        self.model = plan.model
        self.requests = [encoding._http_inputs(plan, arrays) for arrays in requests]

    def infer(self, i: int) -> int:
        inputs, outputs = self.requests[i % len(self.requests)]
        self.client.infer(self.model, inputs, outputs=outputs)
        return 0

    def close(self) -> None:
        self.client.close()


class _TritonclientGrpc:
    """tritonclient.grpc per request: kept to measure against, see CLIENT_ENV."""

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

    def infer(self, i: int) -> int:
        self.client.infer(self.model, self.requests[i % len(self.requests)], outputs=self.outputs,
                          client_timeout=self.timeout)
        return 0

    def close(self) -> None:
        self.client.close()


def make_client(plan: RequestPlan, requests: list[dict[str, Any]]) -> Any:
    """The request sender of one user: pre-encoded bytes (default), or to measure against (``CLIENT_ENV``):
    ``geventhttpclient`` (HTTP, the same bytes) or ``tritonclient`` (encoding every request)."""
    grpc_ = plan.protocol == "grpc"
    if os.environ.get(CLIENT_ENV, "") == "geventhttpclient" and not grpc_:
        return _GeventHttp(plan, requests)
    if os.environ.get(CLIENT_ENV, "") == "tritonclient":
        return _TritonclientGrpc(plan, requests) if grpc_ else _TritonclientHttp(plan, requests)
    return _GrpcInfer(plan, requests) if grpc_ else _HttpInfer(plan, requests)


class TritonUser(User):
    """Sends the configured request (see :func:`configure`) to Triton, back to back or paced."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._client: Any = None
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
        if plan.sequence_length:  # sequence models: correlation IDs and START/END flags (loadtest/sequences.py)
            from accelserve.loadtest.sequences import SequenceInfer

            self._client = SequenceInfer(plan, requests)
        else:
            self._client = make_client(plan, requests)
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
        length = 0
        start = time.perf_counter()
        try:
            length = self._client.infer(self._n) or 0
        except Exception as exc:  # noqa: BLE001 -- every failed request is counted as an error by Locust
            exception = exc
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self._n += 1
        self.environment.events.request.fire(
            request_type=self._type, name=self._name, response_time=elapsed_ms, response_length=length,
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
