"""The ONNX Runtime stand-in on the real tritonserver: BYTES tensors, sequence batching with implicit state
(direct and oldest, several sequences and instances at once, idle timeout), optional inputs, known dim bounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from accelserve.errors import ServerError
from accelserve.triton.client import TritonClient
from accelserve.triton.server import TritonServer
from tests.triton import onnx_builders as ob
from tests.triton.sequence_helpers import add_accumulator, add_string_models

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("standin") / "repo"
    add_string_models(repo)
    add_accumulator(repo, "acc_direct")
    add_accumulator(repo, "acc_oldest", strategy="oldest", instances=2)
    add_accumulator(repo, "acc_plain", ready=False, corrid=False)  # no READY: the shadow adds one
    add_accumulator(repo, "acc_idle", idle_us=300_000)
    ob.save(ob.add_with_default(), repo / "optional" / "1" / "model.onnx")
    (repo / "optional" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }, '
        '{ name: "bias" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n'
        'parameters { key: "accelserve_max_shape" value { string_value: "{\\"x\\": [3, -1]}" } }\n'
    )
    ob.save(ob.running_sum(), repo / "from_file" / "1" / "model.onnx")
    (repo / "from_file" / "initial_state").mkdir()
    (repo / "from_file" / "initial_state" / "start.bin").write_bytes(np.array([100], dtype=np.int32).tobytes())
    (repo / "from_file" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'sequence_batching { oldest { max_candidate_sequences: 4 }\n'
        '  state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]\n'
        '            initial_state: { data_type: TYPE_INT32 dims: [ 1 ] data_file: "start.bin"\n'
        '                             name: "hundred" } } ] }\n'
    )
    ob.save(ob.ragged_last(), repo / "ragged" / "1" / "model.onnx")
    (repo / "ragged" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'
        'batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "INDEX" data_type: TYPE_INT32 '
        'source_input: "INPUT" } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] },\n'
        '         { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'dynamic_batching { max_queue_delay_microseconds: 200000 }\n'
    )
    with TritonServer(repo, timeout=180) as server:
        yield server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_strings_round_trip_as_bytes(served: TritonServer, protocol: str) -> None:
    words = np.array([["Hello", "wörld", ""], ["a b", "日本", "x" * 300]])
    with TritonClient(served.http_url if protocol == "http" else served.grpc_url) as client:
        out = client.infer("strings", {"INPUT0": words})["OUTPUT0"]
    assert out.dtype == object and out.shape == words.shape
    assert out.tolist() == [[w.encode() for w in row] for row in words.tolist()]


def test_string_arithmetic_casts_like_onnxruntime(served: TritonServer) -> None:
    a = np.arange(16).reshape(1, 16)
    with TritonClient(served.grpc_url) as client:
        out = client.infer("simple_string", {"INPUT0": a.astype(str), "INPUT1": np.full((1, 16), "3")})
    assert [int(v) for v in out["OUTPUT0"][0]] == list(range(3, 19))
    assert [int(v) for v in out["OUTPUT1"][0]] == list(range(-3, 13))


def test_non_utf8_bytes_get_a_clear_error(served: TritonServer) -> None:
    with TritonClient(served.http_url) as client, pytest.raises(ServerError, match="not UTF-8"):
        client.infer("strings", {"INPUT0": np.array([[b"\xff\xfe"]], dtype=object)})
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    raw = httpclient.InferenceServerClient(served.http_url.split("://")[1])
    tensor = httpclient.InferInput("INPUT0", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"\xff"]], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        raw.infer("strings", [tensor])
    raw.close()
    assert info.value.status() == "400"  # the request's fault (INVALID_ARG), not the server's


def _run_sequence(url: str, model: str, seq_id: int, values: list[int], results: dict, errors: list,
                  pause_s: float = 0.0) -> None:
    try:
        with TritonClient(url, infer_timeout=60) as client:
            outs = []
            for i, v in enumerate(values):
                got = client.infer(model, {"INPUT": np.array([[v]], dtype=np.int32)}, sequence_id=seq_id,
                                   sequence_start=i == 0, sequence_end=i == len(values) - 1)
                outs.append((int(got["OUTPUT"].reshape(-1)[0]),
                             int(got["CORRID_OUT"].reshape(-1)[0]) if "CORRID_OUT" in got else None))
                time.sleep(pause_s)
            results[seq_id] = outs
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


@pytest.mark.parametrize("model", ["acc_direct", "acc_oldest", "acc_plain"])
def test_interleaved_sequences_carry_their_own_state(served: TritonServer, model: str) -> None:
    sequences = {101 + k: [k * 10 + i for i in range(1, 6)] for k in range(5)}  # 5 sequences in flight at once
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_run_sequence,
                         args=(served.grpc_url if sid % 2 else served.http_url, model, sid, values, results, errors))
        for sid, values in sequences.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for sid, values in sequences.items():
        sums = [int(v) for v in np.cumsum(values)]
        assert [o for o, _ in results[sid]] == sums, (sid, results[sid])
        if model != "acc_plain":
            assert {c for _, c in results[sid]} == {sid}  # the CORRID control carries the sequence's ID


def test_a_new_start_resets_the_state(served: TritonServer) -> None:
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    _run_sequence(served.http_url, "acc_direct", 7, [5, 6], results, errors)
    _run_sequence(served.http_url, "acc_direct", 7, [1, 2], results, errors)
    assert not errors and [o for o, _ in results[7]] == [1, 3]


def test_the_initial_state_comes_from_its_data_file_then_the_state_is_carried(served: TritonServer) -> None:
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    _run_sequence(served.grpc_url, "from_file", 77, [1, 2, 3], results, errors)
    assert not errors and [o for o, _ in results[77]] == [101, 103, 106]


def test_a_sequence_idle_past_its_timeout_is_ended(served: TritonServer) -> None:
    with TritonClient(served.http_url) as client:
        one = {"INPUT": np.array([[4]], dtype=np.int32)}
        assert client.infer("acc_idle", one, sequence_id=55, sequence_start=True)["OUTPUT"].item() == 4
        time.sleep(1.5)  # > max_sequence_idle_microseconds 300 ms: Triton's reaper ends the sequence
        with pytest.raises(ServerError, match="START"):
            client.infer("acc_idle", one, sequence_id=55)
        assert client.infer("acc_idle", one, sequence_id=55, sequence_start=True)["OUTPUT"].item() == 4


def test_optional_input_left_out_uses_the_models_default(served: TritonServer) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    with TritonClient(served.http_url) as client:
        np.testing.assert_array_equal(client.infer("optional", {"x": x})["y"], x + 10)
        bias = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(client.infer("optional", {"x": x, "bias": bias})["y"], x + bias)


def test_a_request_over_a_known_bound_gets_a_clear_error(served: TritonServer) -> None:
    with TritonClient(served.http_url) as client, pytest.raises(ServerError, match="at most 3 there"):
        client.infer("optional", {"x": np.ones((5, 4), dtype=np.float32)})


def test_ragged_requests_are_concatenated_with_their_batch_input(served: TritonServer) -> None:
    before = served.statistics("ragged")["model_stats"][0]
    lengths = [3, 4, 5, 2]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(lengths))

    def send(k: int) -> None:
        try:
            with TritonClient(served.grpc_url) as client:
                barrier.wait(timeout=30)
                x = (np.arange(lengths[k], dtype=np.float32) + 100 * k)[None]
                results[k] = client.infer("ragged", {"INPUT": x})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(lengths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for k, n in enumerate(lengths):
        assert results[k]["OUTPUT"].tolist() == [[100 * k + n - 1]]  # its own last element, wherever it sat
    after = served.statistics("ragged")["model_stats"][0]
    assert after["execution_count"] - before["execution_count"] < len(lengths)  # some shapes shared a batch
    assert any(results[k]["COUNT"].item() > lengths[k] for k in range(len(lengths)))
