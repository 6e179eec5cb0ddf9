"""Requests encoded once and responses checked cheaply: the per-request work of a load-test user.

A load generator written in Python spends most of its time per request building the request (tritonclient encodes
every tensor, builds the JSON header or the protobuf message) and decoding the response. Neither is what a load
test measures, so both are done once here (as perf_analyzer prepares its inputs once and swaps prepared buffers):

* :func:`encode_http` -> the KServe v2 body (binary tensor extension, or JSON tensors) and its headers, posted as
  bytes for every request;
* :func:`encode_grpc` -> a serialized ``inference.ModelInferRequest``, sent through a raw generic gRPC call;
* :class:`ResponseCheck` checks every response's status (HTTP code, gRPC status) and fully decodes a sample of
  them (the first, then one in ``every``), verifying output names, shapes and datatypes against the plan.

No Locust import here: the functions are plain and usable from any process (the bench uses :func:`encode_http` to
give wrk the very bytes the users send).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from accelserve.loadtest.plan import RequestPlan

#: gRPC method of Triton's inference service (the service name is in grpc_service.proto)
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: fully decode one response in this many (and always the first)
CHECK_EVERY = 64


class ResponseError(Exception):
    """A response that is not the answer to the request (wrong status, outputs, shapes or datatypes)."""


@dataclass(frozen=True)
class HttpRequest:
    path: str
    body: bytes
    headers: dict[str, str]


def _http_inputs(plan: RequestPlan, arrays: dict[str, np.ndarray]) -> tuple[list[Any], list[Any]]:
    import tritonclient.http as httpclient

    inputs = []
    for t in plan.inputs:
        tensor = httpclient.InferInput(t.name, list(arrays[t.name].shape), t.datatype)
        tensor.set_data_from_numpy(arrays[t.name], binary_data=plan.binary_data)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=plan.binary_data) for n in plan.outputs]
    return inputs, outputs


def encode_http(plan: RequestPlan, arrays: dict[str, np.ndarray]) -> HttpRequest:
    """The body and headers of one KServe v2 HTTP inference request (tritonclient's own encoder, run once)."""
    import tritonclient.http as httpclient

    inputs, outputs = _http_inputs(plan, arrays)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    headers = {"Content-Type": "application/octet-stream" if json_size is not None else "application/json",
               "Accept-Encoding": "identity"}  # no compressed answers: decoding them is client cost, not server
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    data = body if isinstance(body, bytes) else body.encode("utf-8")
    return HttpRequest(path=f"/v2/models/{plan.model}/infer", body=data, headers=headers)


def encode_grpc(plan: RequestPlan, arrays: dict[str, np.ndarray]) -> bytes:
    """One serialized ``ModelInferRequest`` (raw tensor contents), ready for a generic unary call."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=plan.model)
    for t in plan.inputs:
        array = arrays[t.name]
        tensor = request.inputs.add(name=t.name, datatype=t.datatype)
        tensor.shape.extend(int(d) for d in array.shape)
        request.raw_input_contents.append(_raw_bytes(array, t.datatype))
    for name in plan.outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        from tritonclient.utils import serialize_byte_tensor

        serialized = serialize_byte_tensor(array)
        return serialized.item() if serialized.size > 0 else b""
    return np.ascontiguousarray(array).tobytes()


@dataclass
class ResponseCheck:
    """Checks responses against the plan: the status of every one, the full content of a sample.

    The expected outputs are the plan's output names; the first decoded response fixes each output's datatype and
    non-batch dims, and every later sampled response must agree (and batching models must answer the batch size
    that was sent).
    """

    plan: RequestPlan
    every: int = CHECK_EVERY
    seen: int = 0
    decoded: int = 0
    expected: dict[str, tuple[str, tuple[int, ...]]] | None = None

    def _due(self) -> bool:
        self.seen += 1
        return self.seen == 1 or self.seen % self.every == 0

    def _check_outputs(self, outputs: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        self.decoded += 1
        want = set(self.plan.outputs)
        if set(outputs) != want:
            raise ResponseError(f"response outputs {sorted(outputs)} are not the requested {sorted(want)}")
        if self.plan.max_batch_size > 0:
            for name, (_, shape) in outputs.items():
                if not shape or shape[0] != self.plan.batch_size:
                    raise ResponseError(
                        f"output {name} has shape {list(shape)}: its batch dim is not the {self.plan.batch_size} sent"
                    )
        if self.expected is None:
            self.expected = outputs
        elif outputs != self.expected:
            raise ResponseError(f"response outputs changed: {outputs} after {self.expected}")

    def http(self, status: int, headers: Any, body: bytes) -> None:
        if status != 200:
            raise ResponseError(f"HTTP {status}: {_error_text(body)}")
        if not self._due():
            return
        header_length = headers.get("inference-header-content-length")  # lower case: rawhttp's keys
        end = int(header_length) if header_length is not None else len(body)
        try:
            header = json.loads(body[:end])
            outputs = {o["name"]: (o["datatype"], tuple(int(d) for d in o["shape"])) for o in header["outputs"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ResponseError(f"undecodable inference response ({exc})") from None
        binary = sum(int((o.get("parameters") or {}).get("binary_data_size", 0)) for o in header["outputs"])
        if end + binary != len(body):
            raise ResponseError(f"response body is {len(body)} bytes, its header announces {end + binary}")
        self._check_outputs(outputs)

    def grpc(self, data: bytes) -> None:
        if not self._due():
            return
        from tritonclient.grpc import service_pb2

        try:
            response = service_pb2.ModelInferResponse.FromString(data)
        except Exception as exc:  # noqa: BLE001 -- protobuf raises DecodeError (a plain Exception subclass)
            raise ResponseError(f"undecodable inference response ({exc})") from None
        outputs = {o.name: (o.datatype, tuple(int(d) for d in o.shape)) for o in response.outputs}
        if response.raw_output_contents and len(response.raw_output_contents) != len(response.outputs):
            raise ResponseError("response carries a different number of raw contents than outputs")
        self._check_outputs(outputs)


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")
