"""The plugin registry, exercised with the real out-of-tree example plugin package in plugins/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from accelserve import plugins
from accelserve.artifact import ModelArtifact
from accelserve.errors import PluginError
from accelserve.passes.base import PassContext
from tests.graphs import make_linear_model

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "plugins" / "accelserve-example-plugin"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plugin into a private target directory (not into the venv)."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(PLUGIN_SRC)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture
def plugin_on_path(installed_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(installed_plugin))
    return installed_plugin


def test_builtins_register_through_entry_points() -> None:
    infos = {(i.group, i.name): i for i in plugins.list_plugins()}
    assert ("exporters", "torch") in infos and infos[("exporters", "torch")].builtin
    assert ("runtimes", "onnxruntime") in infos
    assert ("reporters", "json") in infos


def test_unknown_plugin_names_the_available_ones() -> None:
    with pytest.raises(PluginError) as err:
        plugins.load("exporters", "caffe")
    assert "caffe" in str(err.value) and "torch" in str(err.value)


def test_unknown_group_is_a_user_error() -> None:
    with pytest.raises(PluginError):
        plugins.list_plugins("widgets")


def test_third_party_pass_is_listed_loaded_and_runs(plugin_on_path: Path, tmp_path: Path) -> None:
    names = plugins.names("passes")
    assert "strip-identity" in names and "broken-example" in names
    src = make_linear_model(tmp_path / "m.onnx", with_identity=True)
    pass_cls = plugins.load("passes", "strip-identity")
    ctx = PassContext(work_dir=tmp_path)
    out = pass_cls({}).run(ModelArtifact.from_onnx(src), tmp_path / "out.onnx", ctx)
    ops = [n.op_type for n in onnx.load(str(out.path)).graph.node]
    assert "Identity" not in ops
    assert out.history == ("strip-identity",)
    assert ctx.report["strip-identity"]["removed_identity_nodes"] == 1
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    before = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    after = ort.InferenceSession(str(out.path)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_third_party_reporter_renders(plugin_on_path: Path) -> None:
    from accelserve.reporting.reporters import render

    class R:
        def to_dict(self) -> dict:
            return {"model": "a|b", "passed": True}

    text = render(R(), "markdown")
    assert "| model | a\\|b |" in text and "| passed | true |" in text


def test_broken_plugin_fails_only_when_used(plugin_on_path: Path) -> None:
    # Listing and loading other plugins still works ...
    assert "broken-example" in plugins.names("passes")
    plugins.load("passes", "strip-identity")
    # ... using the broken one names it, its distribution and the import error.
    with pytest.raises(PluginError) as err:
        plugins.load("passes", "broken-example")
    msg = str(err.value)
    assert "broken-example" in msg and "accelserve-example-plugin" in msg and "not_installed_dependency" in msg


def test_plugins_cli_lists_third_party_and_check_reports_broken(installed_plugin: Path) -> None:
    env_path = f"{installed_plugin}"
    base = [sys.executable, "-m", "accelserve", "plugins"]
    env = {**__import__("os").environ, "PYTHONPATH": env_path}
    listed = subprocess.run(base, capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "strip-identity" in listed.stdout and "from accelserve-example-plugin" in listed.stdout
    checked = subprocess.run([*base, "--check"], capture_output=True, text=True, env=env)
    assert checked.returncode == 1
    assert "broken-example" in checked.stdout and "FAILED" in checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr


def test_third_party_pass_runs_through_the_optimize_cli(installed_plugin: Path, tmp_path: Path) -> None:
    import os

    src = make_linear_model(tmp_path / "m.onnx", with_identity=True)
    env = {**os.environ, "PYTHONPATH": str(installed_plugin)}
    base = [sys.executable, "-m", "accelserve", "optimize", str(src), "--no-evaluate"]
    ok = subprocess.run([*base, "--recipe", "strip-identity", "-o", str(tmp_path / "out.onnx")],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "removed 1 Identity" in ok.stdout
    assert [n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node] == ["MatMul", "Add", "Relu"]
    broken = subprocess.run([*base, "--recipe", "broken-example", "-o", str(tmp_path / "b.onnx")],
                            capture_output=True, text=True, env=env)
    assert broken.returncode == 1
    assert "broken-example" in broken.stderr and "Traceback" not in broken.stderr
    assert not (tmp_path / "b.onnx").exists()
