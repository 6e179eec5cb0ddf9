"""`accelserve export` and `accelserve verify` end to end (in-process through cli.main, plus a subprocess run
that proves user errors print no traceback)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from accelserve.artifact import ModelArtifact
from accelserve.cli.main import main
from tests.graphs import make_linear_model

REPO = Path(__file__).resolve().parents[2]
TORCH_MODELS = REPO / "tests" / "exporters" / "torch_models.py"
CNN = "accelserve.examples.models:small_cnn"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _user_error(rc: int, err: str, *phrases: str) -> None:
    assert rc == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err


@pytest.fixture(scope="module")
def torch_mod():  # noqa: ANN201
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")


@pytest.fixture(scope="module")
def cnn_export(torch_mod, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("cli_export")
    out, report = d / "cnn.onnx", d / "export.json"
    rc, stdout, stderr = _run(["export", "torch", CNN, "--input", "input:1x3x32x32:float32", "-o", out,
                               "--verify-samples", "1", "--json", report])
    assert rc == 0, stderr
    return out, stdout, report


@pytest.fixture(scope="module")
def cnn_data(cnn_export: tuple[Path, str, Path], torch_mod) -> tuple[Path, Path]:  # noqa: ANN001
    """An input file and the PyTorch model's outputs for it."""
    from accelserve.examples.models import small_cnn

    d = cnn_export[0].parent
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch_mod.no_grad():
        y = small_cnn()(torch_mod.from_numpy(x)).numpy()
    np.savez(d / "feeds.npz", input=x)
    np.savez(d / "expected.npz", output=y)
    return d / "feeds.npz", d / "expected.npz"


# --------------------------------------------------------------------------------------------------------------
# export


def test_export_prints_what_it_wrote(cnn_export: tuple[Path, str, Path]) -> None:
    out, stdout, report = cnn_export
    artifact = ModelArtifact(out)
    assert f"wrote {out}" in stdout
    assert f"sha256 {artifact.sha256()[:12]}" in stdout
    assert "IR version 10, opset 20 (within what the installed ONNX Runtime loads)" in stdout
    assert "input  input: float32 [batch, 3, 32, 32]  (dynamic: batch)" in stdout
    assert "output output: float32 [batch, 10]  (dynamic: batch)" in stdout
    assert "2 input set(s)" in stdout and "PASS" in stdout
    info = json.loads(report.read_text())
    assert info["sha256"] == artifact.sha256() and info["size_bytes"] == out.stat().st_size
    assert info["verification"]["passed"] is True
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_export_user_errors(tmp_path: Path, torch_mod) -> None:  # noqa: ANN001
    out = tmp_path / "m.onnx"
    rc, _, err = _run(["export", "torch", "accelserve.examples.models:nope", "--input", "x:1x3", "-o", out])
    _user_error(rc, err, "has no attribute 'nope'")
    rc, _, err = _run(["export", "torch", CNN, "--input", "input:2x32", "-o", out])
    _user_error(rc, err, "failed on inputs input[2x32 float32]")
    rc, _, err = _run(["export", "torch", CNN, "-o", out])
    _user_error(rc, err, "needs one --input")
    rc, _, err = _run(["export", "torch", CNN, "--input", "input:1x3x32x32", "--value-range", "input=5", "-o", out])
    _user_error(rc, err, "NAME=LOW:HIGH")
    rc, _, err = _run(["export", "nosuchframework", CNN, "--input", "x:1x3", "-o", out])
    _user_error(rc, err, "no exporter named 'nosuchframework'")
    assert not out.exists()


def test_export_verification_failure_exits_1_with_the_table(tmp_path: Path, torch_mod) -> None:  # noqa: ANN001
    out = tmp_path / "noisy.onnx"
    rc, _, err = _run(["export", "torch", f"{TORCH_MODELS}:Noisy", "--input", "x:2x8", "-o", out,
                       "--verify-samples", "1"])
    _user_error(rc, err, "was not written", "max_abs_err", "FAIL")
    assert list(tmp_path.iterdir()) == []
    rc, stdout, _ = _run(["export", "torch", f"{TORCH_MODELS}:Noisy", "--input", "x:2x8", "-o", out, "--no-verify"])
    assert rc == 0 and "verification skipped" in stdout and out.exists()


def test_usage_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "torch", CNN])  # no -o
    assert info.value.code == 1
    assert "required" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# verify


def test_verify_against_torch(cnn_export: tuple[Path, str, Path]) -> None:
    rc, stdout, err = _run(["verify", cnn_export[0], "--torch", CNN, "--random", "1"])
    assert rc == 0, err
    assert f"reference: torch: {CNN}" in stdout and "PASS" in stdout and "2 input set(s)" in stdout


def test_verify_expected_outputs(cnn_export: tuple[Path, str, Path], cnn_data: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    feeds, expected = cnn_data
    rc, stdout, err = _run(["verify", cnn_export[0], "--data", feeds, "--expected", expected])
    assert rc == 0, err
    assert "1 input set(s)" in stdout
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, output=np.load(expected)["output"] + 0.05)
    report = tmp_path / "report.json"
    rc, _, err = _run(["verify", cnn_export[0], "--data", feeds, "--expected", wrong, "--json", report])
    _user_error(rc, err, "differs from the reference", "FAIL")
    assert json.loads(report.read_text())["passed"] is False
    # a looser tolerance accepts the same difference
    rc, _, err = _run(["verify", cnn_export[0], "--data", feeds, "--expected", wrong, "--atol", "0.1", "--min-cosine", "0.9"])
    assert rc == 0, err


def test_verify_against_another_onnx_model(cnn_export: tuple[Path, str, Path], tmp_path: Path) -> None:
    rc, stdout, err = _run(["verify", cnn_export[0], "--reference-onnx", cnn_export[0], "--random", "2"])
    assert rc == 0, err
    assert "3 input set(s)" in stdout
    # the same graph (same input and output names and shapes) with one weight changed: a purely numerical mismatch
    perturbed = onnx.load(str(cnn_export[0]))
    weight = max(perturbed.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array((arr * 1.5 + 0.05).astype(arr.dtype), weight.name))
    onnx.save(perturbed, str(tmp_path / "perturbed.onnx"))
    report = tmp_path / "report.json"
    rc, _, err = _run(["verify", cnn_export[0], "--reference-onnx", tmp_path / "perturbed.onnx", "--random", "1",
                       "--json", report])
    _user_error(rc, err, "differs from the reference", "FAIL")
    assert json.loads(report.read_text())["passed"] is False
    # a model with other inputs is refused for that reason, not compared
    other = make_linear_model(tmp_path / "lin.onnx")
    rc, _, err = _run(["verify", cnn_export[0], "--reference-onnx", other])
    _user_error(rc, err)
    assert "input" in err and "differs from the reference" not in err


def test_verify_input_errors(cnn_export: tuple[Path, str, Path], cnn_data: tuple[Path, Path], tmp_path: Path) -> None:
    model, feeds_file = cnn_export[0], cnn_data[0]
    bad = tmp_path / "bad_rank.npz"
    np.savez(bad, input=np.zeros((3, 32, 32), np.float32))
    rc, _, err = _run(["verify", model, "--reference-onnx", model, "--data", bad])
    _user_error(rc, err, "rank 3", "expects rank 4")
    rc, _, err = _run(["verify", model, "--reference-onnx", model, "--input", "input:1x32x32"])
    _user_error(rc, err, "--input 'input' has rank 3, the model expects rank 4")
    rc, _, err = _run(["verify", model, "--reference-onnx", model, "--input", "input:1x3x16x16"])
    _user_error(rc, err, "has size 16 on axis 2, the model expects 32")
    rc, _, err = _run(["verify", model])
    _user_error(rc, err, "give exactly one reference")
    rc, _, err = _run(["verify", model, "--expected", cnn_data[1], "--data", feeds_file, "--random", "2"])
    _user_error(rc, err, "random inputs have none")
    rc, _, err = _run(["verify", model, "--reference-onnx", model, "--data", tmp_path / "none.npz"])
    _user_error(rc, err, "does not exist")


def _broken_models(d: Path) -> dict[str, Path]:
    good = make_linear_model(d / "good.onnx", in_features=64, out_features=64)
    data = good.read_bytes()
    out = {"truncated": d / "truncated.onnx", "zip": d / "zip.onnx", "empty": d / "empty.onnx"}
    out["truncated"].write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(out["zip"], "w") as zf:
        zf.writestr("m/data.pkl", b"x")
    out["empty"].write_bytes(b"")
    model = onnx.load(str(good))
    for name, location in (("missing_data", "missing_data.onnx.data"), ("escaping", "../escaping.data")):
        path = d / f"{name}.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.onnx.data", size_threshold=0)
        if name == "missing_data":
            (d / f"{name}.onnx.data").unlink()
        else:
            header = onnx.load(str(path), load_external_data=False)
            for t in header.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = location
            onnx.save(header, str(path))
        out[name] = path
    return out


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [("truncated", "truncated"), ("zip", "ZIP archive"), ("empty", "empty (0 bytes)"),
     ("missing_data", "missing_data.onnx.data"), ("escaping", "outside the model's directory")],
)
def test_verify_broken_models(tmp_path: Path, kind: str, phrase: str) -> None:
    models = _broken_models(tmp_path)
    rc, _, err = _run(["verify", models[kind], "--reference-onnx", tmp_path / "good.onnx"])
    _user_error(rc, err, phrase)
    # a broken reference model is reported the same way
    rc, _, err = _run(["verify", tmp_path / "good.onnx", "--reference-onnx", models[kind]])
    _user_error(rc, err, phrase)


def test_subprocess_user_errors_print_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + b"\xff" * 10)
    cases = [
        (["export", "torch", "accelserve.examples.models:nope", "--input", "x:1x3", "-o", str(tmp_path / "m.onnx")],
         "has no attribute 'nope'"),
        (["verify", str(bad), "--reference-onnx", str(bad)], "cannot be parsed as ONNX"),
    ]
    for argv, phrase in cases:
        if argv[0] == "export":
            pytest.importorskip("torch", reason="PyTorch is not installed")
        proc = subprocess.run([sys.executable, "-m", "accelserve", *argv], capture_output=True, text=True, env=env,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert phrase in proc.stderr
        assert "Traceback" not in proc.stderr


def test_clamping_is_reported_in_the_summary() -> None:
    from accelserve.cli.export_cmd import format_description

    info = {"path": "m.onnx", "files": ["m.onnx", "m.onnx.data"], "size_bytes": 3 * 2**20, "sha256": "ab" * 32,
            "ir_version": 14, "opset": 28,
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]}
    text = format_description(info, ["made ONNX Runtime-compatible: IR version 15 -> 14 (ONNX Runtime's maximum)"])
    assert "wrote m.onnx (3.00 MiB, sha256 abababababab)" in text
    assert "external data: m.onnx.data" in text
    assert "made ONNX Runtime-compatible: IR version 15 -> 14" in text
    assert "within what the installed ONNX Runtime loads" not in text
    assert "input  x: float32 [batch, 4]  (dynamic: batch)" in text


def test_exports_are_reproducible_across_processes(tmp_path: Path) -> None:
    """Same source, same versions -> same bytes: one export here and one in a fresh process with another hash
    seed, for a file.py:ATTR source (imported under a name that once carried a per-process hash()) and a module
    source."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import hashlib

    sources = {"file": (f"{TORCH_MODELS}:MLP", "x:2x8"), "module": ("tests.exporters.torch_models:MLP", "x:2x8")}

    def argv(kind: str, out: Path) -> list[str]:
        source, spec = sources[kind]
        return ["export", "torch", source, "-i", spec, "-o", str(out), "--no-verify"]

    script = ("import sys; from accelserve.cli.main import main\n"
              f"for a in {[argv(k, tmp_path / f'child_{k}.onnx') for k in sources]!r}:\n"
              "    assert main(a) == 0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in sources:
        rc, _, err = _run(argv(kind, tmp_path / f"here_{kind}.onnx"))
        assert rc == 0, err
        here, child = (hashlib.sha256((tmp_path / f"{who}_{kind}.onnx").read_bytes()).hexdigest()
                       for who in ("here", "child"))
        assert here == child, f"{kind} source: two exports differ"
