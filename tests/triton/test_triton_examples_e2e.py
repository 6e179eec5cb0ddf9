"""Triton's example repository contract on `accelserve serve`'s server (real tritonserver + ONNX Runtime stand-in):
the protocol features Triton's own Python example clients use, through tritonclient, with answers checked. The
models are generated (tests/triton/example_repository.py); one server for the module."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from functools import partial

import numpy as np
import pytest

from accelserve.triton.server import TritonServer
from tests.triton import example_repository

pytestmark = pytest.mark.e2e

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = example_repository.write(tmp_path_factory.mktemp("triton_examples") / "repo")
    with TritonServer(repo, timeout=180) as server:
        yield server


def _hostport(url: str) -> str:
    return url.split("://", 1)[1]


def _client(served: TritonServer, protocol: str):  # noqa: ANN202
    return (httpclient.InferenceServerClient(_hostport(served.http_url)) if protocol == "http"
            else grpcclient.InferenceServerClient(_hostport(served.grpc_url)))


def _inputs(module, arrays: dict[str, np.ndarray]) -> list:  # noqa: ANN001
    made = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        made.append(tensor)
    return made


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_and_metadata(served: TritonServer, protocol: str) -> None:
    client = _client(served, protocol)
    assert client.is_server_live() and client.is_server_ready()
    assert all(client.is_model_ready(name) for name in example_repository.MODELS)
    server = client.get_server_metadata(as_json=True) if protocol == "grpc" else client.get_server_metadata()
    assert server["name"] == "triton"  # Triton's example clients check this
    meta = client.get_model_metadata("simple", as_json=True) if protocol == "grpc" else \
        client.get_model_metadata("simple")
    assert meta["name"] == "simple"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == \
        [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    config = client.get_model_config("simple_dyna_sequence", as_json=True) if protocol == "grpc" else \
        client.get_model_config("simple_dyna_sequence")
    config = config.get("config", config)
    assert [c["name"] for c in config["sequence_batching"]["control_input"]] == ["START", "END", "READY", "CORRID"]
    with pytest.raises(InferenceServerException, match="wrong_model"):
        client.get_model_metadata("wrong_model")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_sync_and_async(served: TritonServer, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = _client(served, protocol)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", _inputs(module, {"INPUT0": A, "INPUT1": B}), outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)

    pairs = [(A * k, B + k) for k in range(4)]
    if protocol == "http":
        pending = [client.async_infer("simple", _inputs(module, {"INPUT0": a, "INPUT1": b})) for a, b in pairs]
        results = [p.get_result() for p in pending]
    else:
        done: queue.Queue = queue.Queue()
        for k, (a, b) in enumerate(pairs):
            client.async_infer("simple", _inputs(module, {"INPUT0": a, "INPUT1": b}),
                               partial(lambda k, result, error: done.put((k, result, error)), k))
        got = sorted((done.get(timeout=30) for _ in pairs), key=lambda item: item[0])
        assert all(error is None for _, _, error in got)
        results = [r for _, r, _ in got]
    for (a, b), r in zip(pairs, results, strict=True):
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)


def test_simple_aio_http_and_grpc(served: TritonServer) -> None:
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    async def run() -> list:
        http = http_aio.InferenceServerClient(_hostport(served.http_url))
        grpc = grpc_aio.InferenceServerClient(_hostport(served.grpc_url))
        try:
            assert await http.is_server_live() and await grpc.is_model_ready("simple")
            return await asyncio.gather(
                http.infer("simple", _inputs(http_aio, {"INPUT0": A, "INPUT1": B})),
                grpc.infer("simple", _inputs(grpc_aio, {"INPUT0": B, "INPUT1": A})))
        finally:
            await http.close()
            await grpc.close()

    via_http, via_grpc = asyncio.run(run())
    np.testing.assert_array_equal(via_http.as_numpy("OUTPUT1"), A - B)
    np.testing.assert_array_equal(via_grpc.as_numpy("OUTPUT1"), B - A)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_strings_and_int8(served: TritonServer, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = _client(served, protocol)
    a = np.array([[str(x).encode() for x in A[0]]], dtype=np.object_)
    b = np.array([[b"-7"] * 16], dtype=np.object_)
    result = client.infer("simple_string", _inputs(module, {"INPUT0": a, "INPUT1": b}))
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == list(A[0] - 7)
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == list(A[0] + 7)

    words = np.array([["Hello".encode(), "wörld".encode(), b""]], dtype=np.object_)
    echoed = client.infer("simple_identity", _inputs(module, {"INPUT0": words})).as_numpy("OUTPUT0")
    assert echoed.tolist() == words.tolist()

    x = np.arange(-8, 8, dtype=np.int8).reshape(1, 16)
    y = np.full((1, 16), 5, dtype=np.int8)
    result = client.infer("simple_int8", _inputs(module, {"INPUT0": x, "INPUT1": y}))
    assert result.as_numpy("OUTPUT0").dtype == np.int8
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + y)


def test_grpc_explicit_tensor_contents(served: TritonServer) -> None:
    """Inputs in the typed ``contents`` fields (not raw bytes), as Triton's grpc_explicit_*_content clients send."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(_hostport(served.grpc_url)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple_int8")
        for name, values in (("INPUT0", [1, -2, 3] + [0] * 13), ("INPUT1", [10] * 16)):
            tensor = request.inputs.add(name=name, datatype="INT8", shape=[1, 16])
            tensor.contents.int_contents.extend(values)
        response = stub.ModelInfer(request, timeout=30)
        by_name = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))
        assert np.frombuffer(by_name["OUTPUT0"], np.int8)[:4].tolist() == [11, 8, 13, 10]

        request = service_pb2.ModelInferRequest(model_name="simple_string")
        for name, text in (("INPUT0", b"40"), ("INPUT1", b"2")):
            request.inputs.add(name=name, datatype="BYTES", shape=[1, 16]).contents.bytes_contents.extend([text] * 16)
        response = stub.ModelInfer(request, timeout=30)
        raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))["OUTPUT1"]
        assert raw[4:6] == b"38"  # BYTES raw output: 4-byte length then the string


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory(served: TritonServer, protocol: str) -> None:
    import tritonclient.utils.shared_memory as shm

    module = httpclient if protocol == "http" else grpcclient
    client = _client(served, protocol)
    client.unregister_system_shared_memory()
    size = A.nbytes
    key = f"/accelserve_test_{protocol}_{served.pid}"
    inputs_handle = shm.create_shared_memory_region(f"in_{protocol}", key + "_in", 2 * size)
    outputs_handle = shm.create_shared_memory_region(f"out_{protocol}", key + "_out", 2 * size)
    try:
        shm.set_shared_memory_region(inputs_handle, [A, B])
        client.register_system_shared_memory(f"in_{protocol}", key + "_in", 2 * size)
        client.register_system_shared_memory(f"out_{protocol}", key + "_out", 2 * size)
        status = client.get_system_shared_memory_status(as_json=True) if protocol == "grpc" else \
            client.get_system_shared_memory_status()
        assert f"in_{protocol}" in str(status) and f"out_{protocol}" in str(status)
        inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory(f"in_{protocol}", size)
        inputs[1].set_shared_memory(f"in_{protocol}", size, offset=size)
        outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory(f"out_{protocol}", size)
        outputs[1].set_shared_memory(f"out_{protocol}", size, offset=size)
        result = client.infer("simple", inputs, outputs=outputs)
        out0 = result.get_output("OUTPUT0")
        assert out0 is not None  # the answer is in the region, not in the response body
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16]), A + B)
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16], offset=size), A - B)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs_handle)
        shm.destroy_shared_memory_region(outputs_handle)


def _expected(values: list[int], corrid: int | None) -> list[int]:
    """simple_sequence: INPUT + START; simple_dyna_sequence also + CORRID on the last request (END)."""
    out = [v + (1 if i == 0 else 0) for i, v in enumerate(values)]
    if corrid is not None:
        out[-1] += corrid
    return out


def test_sequence_sync_http(served: TritonServer) -> None:
    client = _client(served, "http")
    values = [0, 11, 7, 5]
    got = []
    for model, seq_id in (("simple_sequence", 1000), ("simple_sequence", "seq-as-string"),
                          ("simple_dyna_sequence", 1001)):
        answers = []
        for i, v in enumerate(values):
            result = client.infer(model, _inputs(httpclient, {"INPUT": np.array([[v]], dtype=np.int32)}),
                                  sequence_id=seq_id, sequence_start=i == 0, sequence_end=i == len(values) - 1)
            answers.append(int(result.as_numpy("OUTPUT")[0][0]))
        got.append(answers)
    assert got == [_expected(values, None), _expected(values, None), _expected(values, 1001)]


def test_sequence_stream_grpc_interleaved(served: TritonServer) -> None:
    client = _client(served, "grpc")
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    values = {2001: [0, 1, 2, 3], 2002: [100, -1, -2, -3]}
    try:
        for i in range(4):
            for seq_id, seq in values.items():
                client.async_stream_infer(
                    "simple_dyna_sequence", _inputs(grpcclient, {"INPUT": np.array([[seq[i]]], dtype=np.int32)}),
                    request_id=f"{seq_id}-{i}", sequence_id=seq_id, sequence_start=i == 0, sequence_end=i == 3)
        got: dict[int, dict[int, int]] = {2001: {}, 2002: {}}
        for _ in range(8):
            result, error = answers.get(timeout=30)
            assert error is None, error
            seq_id, i = map(int, result.get_response().id.split("-"))
            got[seq_id][i] = int(result.as_numpy("OUTPUT")[0][0])
    finally:
        client.stop_stream()
    assert {s: [got[s][i] for i in range(4)] for s in got} == {s: _expected(v, s) for s, v in values.items()}

