"""`accelserve tune` against the real tritonserver (explicit model-control mode) with tiny budgets.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from accelserve.cli.main import main
from accelserve.triton.config import TritonModelOptions, read_config
from accelserve.triton.repository import add_model
from tests.graphs import make_linear_model
from tests.loadtest.e2e_helpers import assert_cli_not_patched, requires_stack

pytestmark = requires_stack

FAST = ["--concurrency", "2", "--duration", "1", "--warmup", "0.2", "--threads", "1"]


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    add_model(make_linear_model(root / "linear.onnx"), repo, "lin", TritonModelOptions(max_batch_size=8))
    return repo


def snapshot(repo: Path) -> dict[str, str]:
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*")) if p.is_file()}


def test_brute_2x2_measures_every_config_and_leaves_the_repository_alone(tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path)
    before = snapshot(repo)
    out = tmp_path / "out"
    code = main(["tune", str(repo), "lin", "--mode", "brute", "--instances", "1,2", "--dynamic-batching", "off,on",
                 "--slo", "p99_ms<=1000", "--out", str(out), *FAST])
    text = capsys.readouterr().out
    assert code == 0, text
    data = json.loads((out / "tune.json").read_text())
    names = [c["name"] for c in data["configs"]]
    assert names == ["config_default", "config_1", "config_2", "config_3", "config_4"]
    grid = {(c["candidate"]["instances"], c["candidate"]["dynamic_batching"]) for c in data["configs"][1:]}
    assert grid == {(1, False), (1, True), (2, False), (2, True)}
    for c in data["configs"]:
        assert c["error"] is None and c["passes"], c
        best = c["best"]
        assert best["throughput"] > 0 and 0 < best["p50_ms"] <= best["p99_ms"]
        assert best["queue_ms"] is not None and best["compute_ms"] > 0  # Triton's statistics per config
        assert best["generator_cpu_percent"] is not None
    # each config really was loaded: its instance count shows in the config it reports
    assert "count: 2" in next(c for c in data["configs"] if c["candidate"]["instances"] == 2)["config_pbtxt"]
    assert data["winner"] in names and data["passed"] is True and "winner:" in text
    rows = (out / "tune.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # one concurrency level each
    assert (out / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert "Winning config.pbtxt" in (out / "tune.html").read_text()
    assert snapshot(repo) == before  # never edited without --apply
    assert_cli_not_patched()


def test_quick_climbs_from_the_default_and_apply_writes_the_winner(tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path)
    model_file = repo / "lin" / "1" / "model.onnx"
    model_bytes = model_file.read_bytes()
    out = tmp_path / "out"
    code = main(["tune", str(repo), "lin", "--mode", "quick", "--instances", "1,2", "--dynamic-batching", "off,on",
                 "--out", str(out), "--apply", *FAST])
    text = capsys.readouterr().out
    assert code == 0, text
    data = json.loads((out / "tune.json").read_text())
    configs = data["configs"]
    assert configs[0]["name"] == "config_default"
    # the climb starts at the grid point nearest the default (1 instance, batching on), then its neighbours
    assert configs[1]["candidate"]["instances"] == 1 and configs[1]["candidate"]["dynamic_batching"] is True
    assert 3 <= len(configs) <= 5
    winner = next(c for c in configs if c["name"] == data["winner"])
    written = read_config(repo / "lin" / "config.pbtxt")
    if winner["name"] == "config_default":
        assert "left as it is" in text
    else:
        assert f"applied {winner['name']}" in text
        assert (repo / "lin" / "config.pbtxt").read_text() == winner["config_pbtxt"]
        assert sum(g.count for g in written.instance_group) == winner["candidate"]["instances"]
        assert written.HasField("dynamic_batching") == winner["candidate"]["dynamic_batching"]
    assert model_file.read_bytes() == model_bytes
    assert sorted(p.name for p in (repo / "lin").iterdir()) == ["1", "config.pbtxt"]


def test_no_config_meets_the_slo_exits_2_and_applies_nothing(tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path)
    before = snapshot(repo)
    code = main(["tune", str(repo), "lin", "--mode", "brute", "--instances", "2", "--dynamic-batching", "off",
                 "--slo", "p99_ms<=0.001", "--apply", "--concurrency", "1", "--duration", "1", "--warmup", "0.2",
                 "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 2, text
    assert "no config meets p99_ms<=0.001" in text
    assert snapshot(repo) == before


@pytest.mark.parametrize(("args", "message"), [
    (["http://127.0.0.1:1", "lin", "--apply"], "--apply writes into a model repository"),
    (["REPO", "lin", "--slo", "p99<=3"], "unknown metric"),
    (["REPO", "nope"], "has no model 'nope'"),
    (["REPO", "lin", "--instances", "0"], "--instances '0' needs values >= 1"),
])
def test_bad_arguments_are_user_errors(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    repo = make_repo(tmp_path)
    args = [str(repo) if a == "REPO" else a for a in args]
    assert main(["tune", *args]) == 1
    assert message in capsys.readouterr().err


def test_url_target_in_explicit_mode_is_tuned_then_restored(tmp_path: Path) -> None:
    from accelserve.triton.model_control import ModelControl
    from accelserve.triton.server import TritonServer
    from accelserve.tune import TuneConfig, tune

    repo = make_repo(tmp_path)
    with TritonServer(repo, model_control=ModelControl(mode="explicit", load_models=("lin",))) as server:
        config = TuneConfig(target=server.http_url, model="lin", mode="brute", instances=(2,), threads=(1,),
                            dynamic_batching=(True,), concurrency=(1,), duration_s=1, warmup_s=0.2)
        result = tune(config, log=lambda line: None)
        assert [c.name for c in result.configs] == ["config_default", "config_1"]
        assert all(c.error is None and c.points for c in result.configs)
        import json
        import urllib.request

        with urllib.request.urlopen(f"{server.http_url}/v2/models/lin/config") as response:
            live = json.loads(response.read())
        assert sum(g.get("count", 1) for g in live["instance_group"]) == 1  # the model's own config again


def test_budget_stops_after_the_default_and_sigterm_keeps_a_partial_report(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    repo = make_repo(tmp_path)
    common = [sys.executable, "-m", "accelserve", "tune", str(repo), "lin", "--mode", "brute", "--instances", "1,2",
              "--dynamic-batching", "off,on", *FAST]
    proc = subprocess.run([*common, "--budget-minutes", "0.001", "--out", str(tmp_path / "b")], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "b" / "tune.json").read_text())
    assert data["stopped"] == "budget" and [c["name"] for c in data["configs"]] == ["config_default"]
    # SIGTERM while the second config is measured: exit 130, reports of what was measured
    proc2 = subprocess.Popen([*common, "--out", str(tmp_path / "t")], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc2.stdout is not None
    for line in proc2.stdout:
        if line.startswith("[2]"):
            proc2.send_signal(signal.SIGTERM)
            break
    rest = proc2.communicate(timeout=120)[0]
    assert proc2.returncode == 143, rest  # cli.main: SIGTERM
    partial = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert partial["stopped"] == "interrupted" and partial["configs"][0]["points"]
    assert sorted(p.name for p in (repo / "lin").iterdir()) == ["1", "config.pbtxt"]
