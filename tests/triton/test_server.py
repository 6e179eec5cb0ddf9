"""TritonServer on the real tritonserver from nvidia-pytriton (end-to-end), and the environment it runs in.

ONNX models run on it through accelserve's ONNX Runtime stand-in (a python-backend model,
accelserve/triton/python_model/model.py), because the native onnxruntime backend is missing from the
nvidia-pytriton tritonserver. Comparisons with local ONNX Runtime here compare ONNX Runtime with itself; they
check the serving path (shadow repository, batching, tensor names and types), not a second runtime."""

from __future__ import annotations

import os
import re
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from accelserve.errors import ServerError
from accelserve.triton.backend_env import (
    PYTHON_VERSION,
    STUB_NAME,
    available_backends,
    prepare_backend_directory,
    pytriton_install,
    server_environment,
)
from accelserve.triton.client import TritonClient
from accelserve.triton.server import TritonServer, free_port, relevant_log_lines
from accelserve.verify import compare_arrays, tolerance_for
from tests.triton.serve_helpers import make_serving_repository, pid_alive, port_is_free, reference

FP32 = tolerance_for("fp32")


# ------------------------------------------------------------------------------------------- environment (unit)


def test_private_backend_directory_has_the_stub_for_this_python(tmp_path: Path) -> None:
    install = pytriton_install()
    backends = prepare_backend_directory(install, tmp_path)
    stub = backends / "python" / STUB_NAME
    shipped = install.backends_dir.parent / "python_backend_stubs" / PYTHON_VERSION / STUB_NAME
    assert stub.read_bytes() == shipped.read_bytes()
    assert os.access(stub, os.X_OK)
    assert (backends / "python" / "libtriton_python.so").resolve() == (install.backends_dir / "python" /
                                                                       "libtriton_python.so").resolve()
    assert available_backends(backends) == available_backends(install.backends_dir) == {"python"}
    assert not (install.backends_dir / "python" / STUB_NAME).exists()  # site-packages untouched


def test_server_environment_puts_bundled_libs_libpython_and_this_env_first() -> None:
    install = pytriton_install()
    env = server_environment(install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x", "PYTHONHOME": "/elsewhere"})
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == str(install.lib_dirs[0]) and install.lib_dirs[0].name == "nvidia_pytriton.libs"
    assert str(sysconfig.get_config_var("LIBDIR")) in libs and libs[-1] == "/opt/x"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "bin")
    assert "PYTHONHOME" not in env


def test_relevant_log_lines_skip_cpu_only_noise() -> None:
    log = (
        'E1123 16:31:43.749516 9070 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'I1123 16:31:43.750451 9070 model_lifecycle.cc:472] "loading: m:1"\n'
        'E1123 16:31:44.000000 9070 model_lifecycle.cc:654] "failed to load \'m\' version 1: Invalid argument"\n'
    )
    assert relevant_log_lines(log) == [log.splitlines()[2]]


def test_unreachable_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach a Triton server"):
        TritonClient(url, timeout=2).models()
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    repo, onnx_path = make_serving_repository(tmp_path_factory.mktemp("serve"))
    with TritonServer(repo, timeout=180) as server:
        yield server, onnx_path


@pytest.mark.e2e
def test_models_are_ready_through_the_stand_in(served: tuple[TritonServer, Path]) -> None:
    server, _ = served
    states = {(m.name, m.state) for m in server.models()}
    assert states == {("lin", "READY"), ("fixed", "READY")}
    assert set(server.stand_ins) == {"lin", "fixed"}
    log = server.log_text()
    assert re.search(r"Started HTTPService at 127\.0\.0\.1:" + str(server.ports["http"]), log)
    assert "accelserve stand-in: lin runs" in log


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("model", "shape"), [("lin", (3, 4)), ("fixed", (5, 4))])
def test_infer_matches_onnxruntime(served: tuple[TritonServer, Path], protocol: str, model: str,
                                   shape: tuple[int, ...]) -> None:
    server, onnx_path = served
    x = np.random.default_rng(len(protocol) + shape[0]).standard_normal(shape).astype(np.float32)
    with TritonClient(server.http_url if protocol == "http" else server.grpc_url) as client:
        out = client.infer(model, {"x": x})
    expected = reference(onnx_path, {"x": x})["y"]
    assert out["y"].shape == expected.shape
    assert compare_arrays("y", out["y"], expected, FP32).passed


@pytest.mark.e2e
def test_concurrent_requests_are_batched_by_triton(served: tuple[TritonServer, Path]) -> None:
    server, onnx_path = served
    before = server.statistics("lin")["model_stats"][0]
    requests = 12
    xs = [np.random.default_rng(100 + i).standard_normal((1, 4)).astype(np.float32) for i in range(requests)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(requests)

    def send(i: int) -> None:
        try:
            with TritonClient(server.grpc_url if i % 2 else server.http_url, infer_timeout=60) as client:
                barrier.wait(timeout=30)
                results[i] = client.infer("lin", {"x": xs[i]})["y"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, x in enumerate(xs):
        assert compare_arrays("y", results[i], reference(onnx_path, {"x": x})["y"], FP32).passed

    deadline = time.monotonic() + 10  # Triton records an execution's statistics after sending its responses
    after = server.statistics("lin")["model_stats"][0]
    while after["inference_count"] - before["inference_count"] < requests and time.monotonic() < deadline:
        time.sleep(0.05)
        after = server.statistics("lin")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == requests
    assert 0 < executions < inferences  # Triton's dynamic batcher merged requests into shared executions


@pytest.mark.e2e
def test_unknown_model_lists_the_loaded_ones(served: tuple[TritonServer, Path]) -> None:
    server, _ = served
    with TritonClient(server.http_url) as client, pytest.raises(ServerError) as info:
        client.model_info("nope")
    assert "'nope' is not loaded" in str(info.value) and "fixed, lin" in str(info.value)


@pytest.mark.e2e
def test_metrics_endpoint_counts_inferences(served: tuple[TritonServer, Path]) -> None:
    server, _ = served
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert re.search(r'nv_inference_count\{model="lin",version="1"\} \d+', text)


@pytest.mark.e2e
def test_broken_model_fails_start_with_the_log_line(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, fixed=False)
    model_file = repo / "lin" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:40])  # truncated
    server = TritonServer(repo, timeout=120)
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    assert re.search(r"failed to load 'lin'", message), message
    assert "ONNX Runtime" in message or "onnxruntime" in message.lower()
    assert not server.is_alive()
    kept = re.search(r"full log: (\S+)\)", message)
    assert kept and "failed to load" in Path(kept.group(1)).read_text()
    Path(kept.group(1)).unlink()


@pytest.mark.e2e
def test_server_is_gone_after_the_context_exits(tmp_path: Path) -> None:
    repo, onnx_path = make_serving_repository(tmp_path, batching=False)
    with TritonServer(repo, timeout=120) as server:
        pid = server.pid
        ports = dict(server.ports)
        workdir = server.served_repository.parent
        with TritonClient(server.http_url) as client:
            assert client.infer("fixed", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
        assert pid is not None and pid_alive(pid)
    assert not server.is_alive() and not pid_alive(pid)
    assert all(port_is_free(p) for p in ports.values()), ports
    assert not workdir.exists()
