"""Requests encoded once, responses checked by status and a sampled full decode (no server: wire formats)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from accelserve.loadtest.encoding import ResponseCheck, ResponseError, encode_grpc, encode_http
from accelserve.loadtest.plan import RequestPlan, TensorPlan


def plan(**kw) -> RequestPlan:
    values = dict(url="http://127.0.0.1:1", protocol="http", model="m", batch_size=2, max_batch_size=8,
                  inputs=(TensorPlan("x", "FP32", (2, 4)),), outputs=("y",))
    values.update(kw)
    return RequestPlan(**values)


def arrays() -> dict[str, np.ndarray]:
    return {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}


def test_http_body_is_the_kserve_binary_request() -> None:
    request = encode_http(plan(), arrays())
    size = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(request.body[:size])
    assert request.path == "/v2/models/m/infer"
    assert header["inputs"][0]["shape"] == [2, 4] and header["inputs"][0]["datatype"] == "FP32"
    assert request.body[size:] == arrays()["x"].tobytes()
    assert request.headers["Accept-Encoding"] == "identity"
    as_json = encode_http(plan(binary_data=False), arrays())
    assert "Inference-Header-Content-Length" not in as_json.headers
    assert json.loads(as_json.body)["inputs"][0]["data"] == list(range(8))


def test_grpc_request_round_trips() -> None:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(encode_grpc(plan(protocol="grpc"), arrays()))
    assert request.model_name == "m" and [o.name for o in request.outputs] == ["y"]
    assert list(request.inputs[0].shape) == [2, 4] and request.raw_input_contents[0] == arrays()["x"].tobytes()


def http_response(outputs: list[tuple[str, str, list[int]]]) -> tuple[dict[str, str], bytes]:
    header, raw = {"outputs": []}, b""
    for name, dtype, shape in outputs:
        data = np.zeros(shape, np.float32).tobytes()
        header["outputs"].append({"name": name, "datatype": dtype, "shape": shape,
                                  "parameters": {"binary_data_size": len(data)}})
        raw += data
    head = json.dumps(header).encode()
    return {"inference-header-content-length": str(len(head))}, head + raw


def test_http_check_decodes_the_first_and_every_nth_response() -> None:
    check = ResponseCheck(plan(), every=4)
    headers, body = http_response([("y", "FP32", [2, 3])])
    for _ in range(8):
        check.http(200, headers, body)
    assert check.decoded == 3  # responses 1, 4 and 8
    bad_headers, bad_body = http_response([("y", "FP32", [2, 5])])
    check.http(200, bad_headers, bad_body)  # 9th: not sampled
    with pytest.raises(ResponseError, match="changed"):
        for _ in range(4):
            check.http(200, bad_headers, bad_body)


@pytest.mark.parametrize(("outputs", "message"), [
    ([("z", "FP32", [2, 3])], "not the requested"),
    ([("y", "FP32", [1, 3])], "batch dim"),
])
def test_http_check_rejects_wrong_outputs(outputs, message) -> None:
    headers, body = http_response(outputs)
    with pytest.raises(ResponseError, match=message):
        ResponseCheck(plan()).http(200, headers, body)


def test_http_check_rejects_error_status_and_truncated_body() -> None:
    with pytest.raises(ResponseError, match="HTTP 400: bad input"):
        ResponseCheck(plan()).http(400, {}, b'{"error": "bad input"}')
    headers, body = http_response([("y", "FP32", [2, 3])])
    with pytest.raises(ResponseError, match="announces"):
        ResponseCheck(plan()).http(200, headers, body[:-4])


def test_grpc_check() -> None:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="y", datatype="FP32", shape=[2, 3])
    response.raw_output_contents.append(b"\0" * 24)
    ResponseCheck(plan()).grpc(response.SerializeToString())
    response.outputs[0].shape[:] = [3, 3]
    with pytest.raises(ResponseError, match="batch dim"):
        ResponseCheck(plan()).grpc(response.SerializeToString())
