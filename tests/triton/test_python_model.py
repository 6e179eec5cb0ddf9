"""The ONNX Runtime stand-in's batching logic, run without Triton (triton_python_backend_utils exists only inside
the backend stub; the end-to-end tests in test_server.py run the model inside the real tritonserver)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from accelserve.triton.python_model import model as pm
from tests.graphs import make_linear_model
from tests.triton.serve_helpers import reference


def _feeds(rng: np.random.Generator, batch_sizes: list[int], features: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.standard_normal((b, features)).astype(np.float32)} for b in batch_sizes]


class CountingRun:
    """An ONNX Runtime session that counts its calls."""

    def __init__(self, onnx_path: Path) -> None:
        self.path = onnx_path
        self.calls: list[int] = []

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(int(feeds["x"].shape[0]))
        return reference(self.path, feeds)


_IMPORTS_OF = r"""
import importlib.util, json, sys
before = set(sys.modules)
if sys.argv[1] == "--file":  # load the file by path, the way Triton's python-backend stub does
    spec = importlib.util.spec_from_file_location("stand_in_model", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [n for n in ("initialize", "execute", "finalize") if callable(getattr(module.TritonPythonModel, n, None))]
else:
    for name in sys.argv[2:]:
        importlib.import_module(name)
    names = []
print(json.dumps({"new": sorted({m.split(".")[0] for m in set(sys.modules) - before}), "methods": names}))
"""


def _imports_of(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-I", "-c", _IMPORTS_OF, *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stand_in_file_loads_alone_with_only_numpy_and_the_standard_library() -> None:
    # Triton's stub loads the file by path in its own interpreter: no accelserve package, no
    # triton_python_backend_utils at import time (it exists only inside the stub and is imported in the methods)
    loaded = _imports_of("--file", pm.__file__)
    assert loaded["methods"] == ["initialize", "execute", "finalize"]
    allowed = set(sys.stdlib_module_names) | set(_imports_of("--modules", "numpy", "onnxruntime")["new"])
    assert "accelserve" not in loaded["new"] and "triton_python_backend_utils" not in loaded["new"]
    assert set(loaded["new"]) - allowed - {"stand_in_model"} == set()
    assert "numpy" in loaded["new"]


def test_concat_then_split_restores_each_request() -> None:
    feeds = _feeds(np.random.default_rng(0), [1, 3, 2])
    batch, sizes = pm.concat_requests(feeds)
    assert sizes == [1, 3, 2]
    assert batch["x"].shape == (6, 4)
    parts = pm.split_outputs({"y": batch["x"] * 2}, sizes)
    for feed, part in zip(feeds, parts, strict=True):
        np.testing.assert_array_equal(part["y"], feed["x"] * 2)


def test_batched_requests_run_in_one_call_and_match_single_runs(tmp_path: Path) -> None:
    run = CountingRun(make_linear_model(tmp_path / "m.onnx"))
    feeds = _feeds(np.random.default_rng(1), [1, 2, 1, 4])
    results = pm.run_requests(run, feeds, batching=True)
    assert run.calls == [8]  # one ONNX Runtime call for the whole batch
    for feed, result in zip(feeds, results, strict=True):
        assert not isinstance(result, Exception)
        np.testing.assert_allclose(result["y"], reference(run.path, feed)["y"], rtol=1e-6, atol=1e-6)


def test_requests_with_different_trailing_shapes_run_in_separate_groups() -> None:
    calls = []

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(feeds["x"].shape)
        return {"y": feeds["x"].sum(axis=1, keepdims=True)}

    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 4))}, {"x": rng.standard_normal((2, 5))}, {"x": rng.standard_normal((1, 4))}]
    results = pm.run_requests(run, feeds, batching=True)
    assert sorted(calls) == [(2, 4), (2, 5)]
    for feed, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result["y"], feed["x"].sum(axis=1, keepdims=True))


def test_without_batching_each_request_runs_alone(tmp_path: Path) -> None:
    run = CountingRun(make_linear_model(tmp_path / "m.onnx"))
    feeds = _feeds(np.random.default_rng(3), [2, 2, 3])
    results = pm.run_requests(run, feeds, batching=False)
    assert run.calls == [2, 2, 3]
    for feed, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result["y"], reference(run.path, feed)["y"], rtol=1e-6, atol=1e-6)


def test_a_failure_is_returned_for_the_requests_it_concerns() -> None:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds["x"].shape[1] == 5:
            raise RuntimeError("bad width")
        return {"y": feeds["x"]}

    feeds = [{"x": np.ones((1, 4))}, {"x": np.ones((1, 5))}, {"x": np.ones((2, 4))}]
    results = pm.run_requests(run, feeds, batching=True)
    assert isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[0]["y"], feeds[0]["x"])
    np.testing.assert_array_equal(results[2]["y"], feeds[2]["x"])


def test_output_without_batch_dim_is_an_error_for_every_request_of_the_batch() -> None:
    feeds = [{"x": np.ones((1, 4))}, {"x": np.ones((2, 4))}]
    results = pm.run_requests(lambda f: {"y": np.ones(4)}, feeds, batching=True)
    assert all(isinstance(r, ValueError) and "batch size 3" in str(r) for r in results)


def test_inputs_of_one_request_must_agree_on_the_batch_size() -> None:
    with pytest.raises(ValueError, match="disagree"):
        pm.concat_requests([{"a": np.ones((2, 1)), "b": np.ones((3, 1))}])


@pytest.mark.parametrize(
    ("groups", "cpus", "expected"),
    [
        ([{"count": 1, "kind": "KIND_CPU"}], 8, 8),
        ([{"count": 2, "kind": "KIND_CPU"}, {"count": 2, "kind": "KIND_CPU"}], 8, 2),
        ([{"count": 3, "kind": "KIND_CPU"}], 2, 1),
        ([{"count": 1, "kind": "KIND_GPU", "gpus": [0, 1]}], 4, 2),
        ([], 3, 3),
    ],
)
def test_default_intra_op_threads_share_the_cpus_between_instances(groups: list, cpus: int, expected: int) -> None:
    assert pm.intra_op_threads({"instance_group": groups}, cpu_count=cpus) == expected


def test_intra_op_thread_count_parameter_wins() -> None:
    config = {"instance_group": [{"count": 4}], "parameters": {"intra_op_thread_count": {"string_value": "3"}}}
    assert pm.intra_op_threads(config, cpu_count=1) == 3
    with pytest.raises(ValueError, match="intra_op_thread_count"):
        pm.intra_op_threads({"parameters": {"intra_op_thread_count": {"string_value": "-1"}}})


def test_onnx_model_path_resolves_links_and_names_a_missing_file(tmp_path: Path) -> None:
    real = make_linear_model(tmp_path / "real.onnx")
    version = tmp_path / "shadow" / "1"
    version.mkdir(parents=True)
    os.symlink(real, version / "net.onnx")
    config = {"parameters": {pm.ONNX_FILE_PARAMETER: {"string_value": "net.onnx"}}}
    assert pm.onnx_model_path(config, str(tmp_path / "shadow"), "1") == str(real.resolve())
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        pm.onnx_model_path({}, str(tmp_path / "shadow"), "1")
