"""Model control: options, log parsing, the shadow following the repository, and (e2e) the real tritonserver in
none/--no-strict, explicit (load/unload API) and poll modes.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from accelserve.errors import InvalidInputError, ServerError
from accelserve.triton.client import TritonClient
from accelserve.triton.config import TritonModelOptions
from accelserve.triton.model_control import ModelControl, load_failures
from accelserve.triton.python_model.load_error import ERROR_FILENAME
from accelserve.triton.repository import add_model
from accelserve.triton.server import TritonServer
from accelserve.triton.shadow import LOAD_ERROR_SOURCE, PYTHON_MODEL_FILENAME, build_shadow_repository
from tests.graphs import make_linear_model
from tests.triton.serve_helpers import make_serving_repository, reference


def break_config(repo: Path, source: str, name: str) -> None:
    """Copy model ``source`` to ``name`` with a config whose first input dims the model cannot take."""
    import shutil

    shutil.copytree(repo / source, repo / name)
    config = repo / name / "config.pbtxt"
    text = config.read_text().replace(f'name: "{source}"', f'name: "{name}"')
    config.write_text(re.sub(r"dims: \[[^\]]*\]", "dims: [7, 7]", text, count=1))


# ------------------------------------------------------------------------------------------------------- unit


def test_options_triton_refuses_are_user_errors() -> None:
    with pytest.raises(InvalidInputError, match="applies to --model-control explicit only"):
        ModelControl(mode="poll", load_models=("a",)).check()
    with pytest.raises(InvalidInputError, match="must be the only --load-model"):
        ModelControl(mode="explicit", load_models=("*", "a")).check()
    with pytest.raises(InvalidInputError, match="unknown model control mode"):
        ModelControl(mode="lazy").check()
    with pytest.raises(InvalidInputError, match=r"no model 'resnt' \(did you mean 'resnet'\?\)"):
        ModelControl(mode="explicit", load_models=("resnt",)).check(["resnet", "bert"])


def test_triton_arguments_of_each_mode() -> None:
    assert ModelControl().triton_args() == ["--model-control-mode=none", "--exit-on-error=true",
                                            "--strict-readiness=true"]
    assert ModelControl(mode="poll", strict=False, poll_interval=3).triton_args() == [
        "--model-control-mode=poll", "--exit-on-error=false", "--strict-readiness=false", "--repository-poll-secs=3"]
    explicit = ModelControl(mode="explicit", load_models=("a", "b"))
    assert explicit.triton_args()[-2:] == ["--load-model=a", "--load-model=b"]
    assert explicit.expected(["a", "b", "c"]) == ["a", "b"]
    assert ModelControl(mode="explicit").expected(["a"]) == []
    assert ModelControl(mode="explicit", load_models=("*",)).expected(["a", "c"]) == ["a", "c"]


def test_load_failures_are_read_from_the_log() -> None:
    log = (
        'I1202 18:28:40.710560 11043 pb_stub.cc:366] "Failed to initialize Python stub: ValueError: bad"\n'
        "E1202 18:28:40.996021 11043 model_lifecycle.cc:642] \"failed to load 'broken' version 1: Internal: "
        "ValueError: model 'broken', tensor 'x': bad dims\\n\\nAt:\\n  /tmp/x.py(3): initialize\"\n"
        'I1202 18:28:40.996037 11043 model_lifecycle.cc:777] "failed to load \'broken\'"\n'
        "E1202 18:39:08.543227 15215 model_repository_manager.cc:1460] \"Poll failed for model directory 'prio': "
        'default priority level must be in range [1, 3] for prio"\n'
        "E1202 19:35:18.663877 19019 model_repository_manager.cc:724] \"failed to load model 'densenet_onnx': "
        "at least one version must be available under the version policy of model 'densenet_onnx'\"\n"
    )
    assert load_failures(log) == {"broken": "version 1: Internal: ValueError: model 'broken', tensor 'x': bad dims",
                                  "prio": "default priority level must be in range [1, 3] for prio",
                                  "densenet_onnx": "at least one version must be available under the version "
                                                   "policy of model 'densenet_onnx'"}


def test_shadow_follows_new_versions_changed_configs_and_removed_models(tmp_path: Path) -> None:
    repo, onnx_path = make_serving_repository(tmp_path)
    shadow = build_shadow_repository(repo, tmp_path / "shadow", {"python"}, always=True)
    assert shadow is not None and set(shadow.stand_ins) == {"lin", "fixed"}
    first = (shadow.path / "lin").resolve()
    assert shadow.refresh() == []  # nothing changed

    add_model(onnx_path, repo, "lin", force_new_version=True)  # version 2
    assert shadow.refresh() == ["lin"]
    second = (shadow.path / "lin").resolve()
    assert second != first and (shadow.path / "lin" / "2" / "model.onnx").resolve() == \
        (repo / "lin" / "2" / "model.onnx").resolve()

    break_config(repo, "fixed", "broken")  # a new model the onnxruntime backend would refuse
    assert shadow.refresh() == ["broken"]
    version_dir = shadow.path / "broken" / "1"
    assert (version_dir / PYTHON_MODEL_FILENAME).resolve() == LOAD_ERROR_SOURCE.resolve()
    assert "the model expects 2 dimensions" in (version_dir / ERROR_FILENAME).read_text()

    import shutil

    shutil.rmtree(repo / "broken")
    assert shadow.refresh() == ["broken"] and not (shadow.path / "broken").exists()


def test_unservable_backend_is_linked_when_not_strict(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "engine"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.plan").write_bytes(b"ftrt")
    (model_dir / "config.pbtxt").write_text('name: "engine"\nplatform: "tensorrt_plan"\nmax_batch_size: 1\n')
    shadow = build_shadow_repository(tmp_path / "repo", tmp_path / "shadow", {"python"}, always=True, strict=False)
    assert shadow is not None and "engine" in shadow.unservable
    assert (shadow.path / "engine").resolve() == model_dir.resolve()


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.e2e
def test_no_strict_serves_the_good_models_and_reports_the_broken_one(tmp_path: Path) -> None:
    repo, onnx_path = make_serving_repository(tmp_path, batching=False)
    break_config(repo, "fixed", "broken")
    import shutil

    shutil.copytree(repo / "fixed", repo / "refused")  # a config Triton's core refuses before any backend runs
    config = repo / "refused" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "fixed"', 'name: "refused"')
                      + "max_batch_size: -1\n")
    with TritonServer(repo, model_control=ModelControl(strict=False)) as server:
        assert set(server.failed_models) == {"broken", "refused"}
        assert "'max_batch_size' must be non-negative value" in server.failed_models["refused"]
        assert "tensor 'x': the model expects 2 dimensions (shape [-1,4]) but the model configuration specifies " \
               "2 dimensions (shape [7,7])" in server.failed_models["broken"]
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        with TritonClient(server.http_url) as client:
            out = client.infer("fixed", {"x": x})
            with pytest.raises(ServerError, match=r"model 'broken' is not loaded .*state UNAVAILABLE"):
                client.model_info("broken")
    np.testing.assert_allclose(out["y"], reference(onnx_path, {"x": x})["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_strict_start_names_the_model_that_failed_with_its_reason(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    break_config(repo, "fixed", "broken")
    server = TritonServer(repo)
    with pytest.raises(ServerError) as info:
        server.start()
    assert re.search(r"model 'broken' failed to load: version 1: .*the model expects 2 dimensions", str(info.value))
    assert "--no-strict" in (info.value.hint or "")
    assert not server.is_alive()
    kept = re.search(r"full log: (\S+)\)", str(info.value))
    if kept:
        Path(kept.group(1)).unlink()


@pytest.mark.e2e
def test_explicit_loads_only_what_is_asked_and_the_api_loads_and_unloads(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    break_config(repo, "fixed", "broken")
    control = ModelControl(mode="explicit", load_models=("fixed",))
    with TritonServer(repo, model_control=control) as server:
        with TritonClient(server.http_url) as client:
            assert client.ready_models() == ["fixed"]
            with pytest.raises(ServerError, match=r"model 'broken' failed to load: .*the model expects 2 dimensions"):
                server.load_model("broken")
            assert "At:" not in str(server.failed_models)
            server.unload_model("fixed")
            deadline = time.monotonic() + 30
            while client.ready_models() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.ready_models() == []
            server.load_model("fixed")
            assert client.ready_models() == ["fixed"]


@pytest.mark.e2e
def test_poll_picks_up_a_version_added_while_serving(tmp_path: Path) -> None:
    repo, _ = make_serving_repository(tmp_path, batching=False)
    control = ModelControl(mode="poll", poll_interval=1)
    with TritonServer(repo, model_control=control) as server, TritonClient(server.http_url) as client:
        assert [m.version for m in client.models() if m.name == "fixed"] == ["1"]
        other = make_linear_model(tmp_path / "other.onnx", seed=7)
        add_model(other, repo, "fixed", TritonModelOptions(max_batch_size=0))  # version 2, other weights
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {m.version: m.state for m in client.models() if m.name == "fixed"}
            if states.get("2") == "READY":
                break
            time.sleep(0.5)
        assert states.get("2") == "READY", states
        x = np.ones((1, 4), dtype=np.float32)
        out = client.infer("fixed", {"x": x})
    np.testing.assert_allclose(out["y"], reference(other, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_index_changes_name_new_failed_and_unloaded_versions() -> None:
    from accelserve.triton.model_control import index_changes

    before = {("m", "1"): ("READY", ""), ("old", "1"): ("READY", "")}
    after = {("m", "1"): ("UNAVAILABLE", "unloaded"), ("m", "2"): ("READY", ""),
             ("bad", "1"): ("UNAVAILABLE", "Internal: short"), ("old", "1"): ("READY", "")}
    assert index_changes(before, after, {"bad": "version 1: the full reason"}) == [
        "model bad version 1 failed to load: version 1: the full reason",
        "model m version 1 unloaded",
        "model m version 2 READY",
    ]
    assert index_changes(after, after) == []


def test_unknown_model_name_suggests_the_closest_known_one() -> None:
    from accelserve.triton.client import _did_you_mean

    assert _did_you_mean("resnt", ["resnet", "bert"]) == " (did you mean 'resnet'?)"
    assert _did_you_mean("Bert", ["resnet", "bert"]) == " (did you mean 'bert'?)"
    assert _did_you_mean("llama", ["resnet", "bert"]) == ""
