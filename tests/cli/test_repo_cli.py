"""``accelserve repo add|validate|list`` from the command line."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accelserve.cli.main import main
from accelserve.triton.config import read_config
from tests.triton import onnx_builders as ob


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return ob.save(ob.identity(("batch", 4)), tmp_path / "model.onnx")


def test_add_twice_then_list_and_validate(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    args = ["repo", "add", str(model), "--repo", str(repo), "--name", "ident"]
    # --warmup is a plain flag: written before the positional model path it must not swallow it
    assert main(["repo", "add", "--warmup", *args[2:], "--max-batch-size", "8", "--preferred-batch-sizes", "2", "4"]) == 0
    assert "version 1 (new model)" in capsys.readouterr().out
    config = read_config(repo / "ident")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.model_warmup[0].inputs["x"].random_data
    assert main([*args, "--instances", "2", "--no-dynamic-batching", "--force-new-version"]) == 0
    out = capsys.readouterr().out
    assert "version 2 (new version)" in out
    assert "instance_group[0].count: 1 -> 2" in out  # the config every version shares changed: say how
    assert not read_config(repo / "ident").HasField("dynamic_batching")

    assert main(["repo", "list", str(repo)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split() == ["ident", "1,2", "onnxruntime_onnx", "32"]
    assert main(["repo", "validate", str(repo)]) == 0
    assert "1 model(s), no problems" in capsys.readouterr().out


def test_tensorrt_int8_without_qdq_is_exit_1_with_a_hint(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    code = main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident",
                 "--accelerator", "tensorrt", "--precision", "int8"])
    err = capsys.readouterr().err
    assert code == 1 and "accelserve optimize --recipe int8 --target tensorrt" in err
    assert not repo.exists()


def test_truncated_model_is_exit_1_without_traceback_and_repository_untouched(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident"]) == 0
    before = snapshot(repo)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:50])
    capsys.readouterr()
    assert main(["repo", "add", str(broken), "--repo", str(repo), "--name", "ident"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "broken.onnx" in err
    assert snapshot(repo) == before


@pytest.mark.parametrize("name", ["a/b", "..", "../outside"])
def test_bad_name_is_exit_1_and_repository_untouched(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    before = snapshot(tmp_path)
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", name]) == 1
    assert "invalid model name" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_validate_reports_the_misspelled_field_with_file_and_line(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident"]) == 0
    config = repo / "ident" / "config.pbtxt"
    lines = config.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("max_batch_size"))
    lines[number - 1] = lines[number - 1].replace("max_batch_size", "max_batch_sise")
    config.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["repo", "validate", str(repo)]) == 1
    err = capsys.readouterr().err
    assert f"{config}:{number}:1:" in err and "max_batch_sise" in err and "1 problem(s)" in err


def test_dry_run_prints_the_config_and_writes_nothing(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'platform: "onnxruntime_onnx"' in out and str(repo / "ident" / "1" / "model.onnx") in out
    assert not repo.exists()


def test_usage_error_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["repo", "add", "m.onnx"])  # --name is required
    assert exc.value.code == 1


def test_console_entry_point_runs_validate(tmp_path: Path) -> None:
    (tmp_path / "repo" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "broken" / "config.pbtxt").write_text('name: "broken"\nplatfrom: "x"\n')
    proc = subprocess.run([sys.executable, "-m", "accelserve", "repo", "validate", str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "config.pbtxt:2:1:" in proc.stderr and "platfrom" in proc.stderr


def test_add_killed_mid_write_leaves_a_leftover_that_validate_reports_and_the_next_add_removes(
    tmp_path: Path, model: Path
) -> None:
    """A real `kill -9` while `repo add` copies a 48 MB model: no cleanup code runs in the killed process."""
    repo = tmp_path / "repo"
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident"]) == 0
    big = ob.save(ob.with_weights(12_000_000), tmp_path / "big" / "big.onnx", external_data=True)
    leftovers: list[Path] = []
    for _ in range(3):  # the copy takes long enough to be caught; retry in case a fast disk finished it first
        proc = subprocess.Popen([sys.executable, "-m", "accelserve", "repo", "add", str(big), "--repo", str(repo),
                                 "--name", "big", "--force-new-version"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not leftovers:
            leftovers = list(tmp_path.glob(".repo.accelserve-staging-*"))
            time.sleep(0.001)
        if leftovers and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            break
        leftovers = []
    assert proc.returncode == -signal.SIGKILL and leftovers and leftovers[0].is_dir()
    assert f"accelserve-staging-{proc.pid}-" in leftovers[0].name  # the owner's PID is in the name

    validate = subprocess.run([sys.executable, "-m", "accelserve", "repo", "validate", str(repo)],
                              capture_output=True, text=True, timeout=120)
    assert validate.returncode == 1
    assert f"{leftovers[0]}: leftover staging directory" in validate.stderr
    assert f"process {proc.pid}, no longer running" in validate.stderr

    again = subprocess.run([sys.executable, "-m", "accelserve", "repo", "add", str(model), "--repo", str(repo),
                            "--name", "other"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"removed the staging directory of an interrupted add: {leftovers[0]}" in again.stdout
    assert not list(tmp_path.glob(".repo.accelserve-staging-*"))


def test_a_running_add_s_staging_directory_is_never_removed(tmp_path: Path, model: Path) -> None:
    from accelserve.leftovers import make_owned_dir
    from accelserve.triton.repository import remove_staging_leftovers, staging_leftovers

    repo = tmp_path / "repo"
    assert main(["repo", "add", str(model), "--repo", str(repo), "--name", "ident"]) == 0
    mine = make_owned_dir(".repo.accelserve-staging-", tmp_path)  # this (running) process owns it
    assert staging_leftovers(repo) == [] and remove_staging_leftovers(repo) == [] and mine.is_dir()
