"""``accelserve serve --model-control ... --load-model ... --no-strict`` and what ``infer`` says about models that
are not loaded.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from accelserve.cli.main import main
from tests.cli.test_serve_infer_cli import READY_TIMEOUT_S, _start_serve, _url
from tests.triton.serve_helpers import make_serving_repository
from tests.triton.test_model_control import break_config


def test_load_model_needs_explicit_control(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    assert main(["serve", str(repo), "--load-model", "fixed"]) == 1
    assert "--load-model applies to --model-control explicit only" in capsys.readouterr().err


def test_load_model_not_in_the_repository_suggests_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    assert main(["serve", str(repo), "--model-control", "explicit", "--load-model", "fixd",
                 "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]) == 1
    assert "no model 'fixd' (did you mean 'fixed'?)" in capsys.readouterr().err


@pytest.mark.e2e
def test_explicit_no_strict_serves_the_rest_and_reports_the_failure(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = make_serving_repository(tmp_path)
    break_config(repo, "fixed", "broken")
    proc, lines, ready = _start_serve(repo, "--model-control", "explicit", "--load-model", "fixed",
                                      "--load-model", "broken", "--no-strict")
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        text = "\n".join(lines)
        assert "model control: explicit, not strict" in text
        assert "  fixed (version 1) READY" in text and "  lin not loaded (POST /v2/repository/models/lin/load" in text
        assert "  broken FAILED TO LOAD: version 1: " in text and "the model expects 2 dimensions" in text
        url = _url(lines, "HTTP")
        capsys.readouterr()
        assert main(["infer", url, "fixd", "--random"]) == 1
        assert "model 'fixd' is not loaded" in (err := capsys.readouterr().err) and "did you mean 'fixed'?" in err
        assert main(["infer", url, "fixed", "--random", "--shape", "x=2x4"]) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.e2e
def test_poll_serves_a_version_added_by_repo_add(tmp_path: Path) -> None:
    import time

    from tests.graphs import make_linear_model

    repo, _ = make_serving_repository(tmp_path, batching=False)
    proc, lines, ready = _start_serve(repo, "--model-control", "poll", "--poll-interval", "1")
    try:
        assert ready.wait(READY_TIMEOUT_S) and proc.poll() is None, "\n".join(lines)
        assert "model control: poll (repository scanned every 1 s)" in "\n".join(lines)
        other = make_linear_model(tmp_path / "other.onnx", seed=3)
        assert main(["repo", "add", str(other), "--repo", str(repo), "--name", "fixed", "--max-batch-size", "0"]) == 0
        deadline = time.monotonic() + 60
        while "model fixed version 2 READY" not in lines and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "model fixed version 2 READY" in lines, "\n".join(lines)
        assert main(["infer", _url(lines, "HTTP"), "fixed", "--random", "--shape", "x=1x4",
                     "--compare", str(other)]) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
