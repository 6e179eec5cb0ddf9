"""The real tritonserver reads the TensorRT configs accelserve writes: a ``tensorrt_plan`` entry and an onnxruntime
entry with the TensorRT accelerator. Neither backend exists in the pytriton build here (no GPU, no TensorRT), so
Triton must refuse them *for the backend* (after parsing and validating the config), while a config Triton finds
invalid is refused for the config itself, before any backend is looked up."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from accelserve.triton.backend_env import locate_install, prepare_backend_directory, server_environment
from accelserve.triton.config import TritonModelOptions
from accelserve.triton.repository import add_model
from accelserve.triton.server import free_ports
from tests.evaluate.models import make_cnn

pytestmark = pytest.mark.e2e


def _load_all(repo: Path, work: Path) -> tuple[dict[str, dict], str]:
    """Start tritonserver (explicit control, load everything, keep running on errors); the repository index and the
    log."""
    install = locate_install()
    backends = prepare_backend_directory(install, work)
    http, grpc, metrics = free_ports(3)
    cmd = [str(install.binary), f"--model-repository={repo}", f"--backend-directory={backends}",
           "--model-control-mode=explicit", "--load-model=*", "--exit-on-error=false", "--strict-readiness=false",
           "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc}",
           f"--metrics-port={metrics}", "--allow-metrics=false"]
    proc = subprocess.Popen(cmd, env=server_environment(install), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/live", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("tritonserver did not come up:\n" + (proc.stdout.read() if proc.stdout else ""))
                time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/repository/index", data=b"{}", method="POST")
        index = {m["name"]: m for m in json.load(urllib.request.urlopen(request, timeout=10))}
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0]
    return index, log


def test_tritonserver_parses_the_tensorrt_configs(tmp_path: Path):
    onnx_model = make_cnn(tmp_path / "cnn.onnx")
    plan = tmp_path / "cnn.plan"
    plan.write_bytes(b"engine" * 100)
    repo = tmp_path / "repo"
    add_model(plan, repo, "cnn_plan", TritonModelOptions(max_batch_size=8, preferred_batch_sizes=(4, 8)),
              onnx_source=onnx_model)
    add_model(onnx_model, repo, "cnn_ort_trt", TritonModelOptions(
        accelerator="tensorrt", precision="fp16", workspace_bytes=1 << 30, trt_engine_cache="/tmp/trt-cache",
        trt_parameters=(("trt_timing_cache_enable", "1"), ("trt_builder_optimization_level", "3"))))
    broken = add_model(plan, repo, "cnn_plan_broken", TritonModelOptions(max_batch_size=8), onnx_source=onnx_model)
    text = broken.config_path.read_text().replace("dynamic_batching {", "dynamic_batching {\n  preferred_batch_size: 64")
    broken.config_path.write_text(text)

    index, log = _load_all(repo, tmp_path / "work")
    for name, backend in (("cnn_plan", "tensorrt"), ("cnn_ort_trt", "onnxruntime")):
        assert index[name].get("state") == "UNAVAILABLE", index
        assert f"unable to find backend library for backend '{backend}'" in index[name]["reason"], index[name]
        assert f"Poll failed for model directory '{name}'" not in log
    assert "state" not in index["cnn_plan_broken"]  # refused while reading its config, never got to a backend
    assert ("Poll failed for model directory 'cnn_plan_broken': dynamic batching preferred size must be <= max batch "
            "size") in log
