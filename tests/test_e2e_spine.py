"""The spine's acceptance test, on real parts: PyTorch models exported with the dynamo exporter, verified, written
to a Triton model repository, served by the real tritonserver binary (from nvidia-pytriton) and queried
concurrently over HTTP and gRPC. Results must equal PyTorch within tolerance, and Triton's own statistics must show
that its dynamic batcher combined requests (fewer executions than inferences).

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. So Triton's answers are ONNX Runtime's, compared here with PyTorch; what
this proves about Triton is the repository, config, protocols and dynamic batching, not its onnxruntime backend."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")
pytest.importorskip("pytriton", reason="nvidia-pytriton (the tritonserver binary) is not installed")

from accelserve.examples import EXAMPLES, example_input_specs  # noqa: E402
from accelserve.exporters.base import ExportOptions  # noqa: E402
from accelserve.exporters.torch_exporter import TorchExporter  # noqa: E402
from accelserve.triton.client import TritonClient  # noqa: E402
from accelserve.triton.config import TritonModelOptions  # noqa: E402
from accelserve.triton.repository import add_model  # noqa: E402
from accelserve.triton.server import TritonServer  # noqa: E402
from accelserve.triton.validate import validate_repository  # noqa: E402
from accelserve.verify import compare_arrays, tolerance_for  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.torch]
TOL = tolerance_for("fp32")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("spine")
    repo = work / "repo"
    references = {}
    for example in ("small_cnn", "tiny_encoder"):
        source, _ = EXAMPLES[example]
        exporter = TorchExporter()
        result = exporter.export(source, example_input_specs(example), work / f"{example}.onnx", ExportOptions())
        assert result.verification is not None and result.verification.passed
        add_model(result.artifact.path, repo, example,
                  TritonModelOptions(max_queue_delay_us=20000, preferred_batch_sizes=[4, 8]))
        references[example] = exporter.load_reference(source)
    assert validate_repository(repo) == []
    with TritonServer(repo) as server:
        yield server, references


def _check_against_torch(outputs: dict[str, np.ndarray], reference, feed: dict[str, np.ndarray]) -> None:
    expected = reference(feed)
    assert len(outputs) == len(expected)
    for (name, actual), exp in zip(outputs.items(), expected):
        cmp = compare_arrays(name, actual, exp, TOL)
        assert cmp.passed, f"{name}: max_abs={cmp.max_abs_error} cosine={cmp.cosine}"


def _counts(client: TritonClient, model: str) -> tuple[int, int]:
    stats = client.statistics(model)["model_stats"]
    return (sum(int(s["inference_count"]) for s in stats), sum(int(s["execution_count"]) for s in stats))


def _counts_after(client: TritonClient, model: str, before: tuple[int, int], inferences: int,
                  timeout: float = 10.0) -> tuple[int, int]:
    """The counts once Triton has recorded ``inferences`` more (it records an execution's statistics after its
    responses are sent, so a client can see every answer before the counts include them)."""
    deadline = time.monotonic() + timeout
    counts = _counts(client, model)
    while counts[0] - before[0] < inferences and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = _counts(client, model)
    return counts


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_transformer_dynamic_batch_and_sequence_match_pytorch(served, protocol: str) -> None:
    server, references = served
    url = server.http_url if protocol == "http" else server.grpc_url
    rng = np.random.default_rng(1)
    with TritonClient(url) as client:
        for batch, seq in [(1, 5), (3, 16), (2, 40)]:  # shapes never seen at export time
            feed = {"input_ids": rng.integers(0, 1000, size=(batch, seq)).astype(np.int64)}
            out = client.infer("tiny_encoder", feed)
            assert next(iter(out.values())).shape[0] == batch
            _check_against_torch(out, references["tiny_encoder"], feed)


@pytest.mark.parametrize("model", ["small_cnn", "tiny_encoder"])
def test_concurrent_http_and_grpc_requests_are_batched_and_correct(served, model: str) -> None:
    server, references = served
    specs = example_input_specs(model)
    rng = np.random.default_rng(2)
    feeds = [{s.name: s.random(rng, {"batch": 1, "seq": 12}) for s in specs} for _ in range(48)]
    local = threading.local()

    def client_for(url: str) -> TritonClient:
        clients = local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = TritonClient(url)
        return clients[url]

    def send(i: int) -> tuple[int, dict[str, np.ndarray]]:
        url = server.http_url if i % 2 == 0 else server.grpc_url  # both protocols at once
        return i, client_for(url).infer(model, feeds[i])

    with TritonClient(server.http_url) as stats_client:
        before = _counts(stats_client, model)
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(send, range(len(feeds))))
        after = _counts_after(stats_client, model, before, len(feeds))
    for i, out in results:
        _check_against_torch(out, references[model], feeds[i])
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(feeds)
    assert executions < inferences, f"no batching: {executions} executions for {inferences} inferences"
