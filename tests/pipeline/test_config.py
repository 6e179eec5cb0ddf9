"""Pipeline config: validated up front, every problem listed with file:line, did-you-mean, --set, paths, schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from accelserve.cli.main import main
from accelserve.pipeline import ConfigError, load_config
from accelserve.pipeline.search import parse_recipe_text
from tests.graphs import make_linear_model

GOOD = """\
model:
  source: model.onnx
data:
  calibration: calib.npz
  evaluation: calib.npz
  labels: labels.npy
search:
  candidates: ["simplify,int8", "simplify,prune-channels(ratio=0.5),int8"]
  max_accuracy_drop: 0.5
  batch_size: 4
repository:
  path: repo
  name: lin
loadtest:
  concurrency: [1, 2]
  slo: ["p99_ms<=50"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_linear_model(tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 4), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(4, np.int64))
    (tmp_path / "pipeline.yaml").write_text(GOOD)
    return tmp_path / "pipeline.yaml"


def test_good_config_resolves_paths_against_its_folder(project: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path.parent)  # not the config's folder
    cfg = load_config(project)
    assert cfg.model.resolved_framework == "onnx"
    assert cfg.path(cfg.data.calibration) == project.parent / "calib.npz"
    assert cfg.search.candidates[1] == "simplify,prune-channels(ratio=0.5),int8"
    assert cfg.loadtest is not None and cfg.loadtest.concurrency == [1, 2]


def test_typo_gets_did_you_mean_and_line_and_all_problems_listed(project: Path) -> None:
    text = GOOD.replace("  max_accuracy_drop:", "  max_acuracy_drop:").replace("labels.npy", "missing.npy")
    text = text.replace('["p99_ms<=50"]', '["p99<=50"]')
    project.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(project)
    msg = str(err.value)
    assert f"{project}:9: search.max_acuracy_drop: unknown key 'max_acuracy_drop' (did you mean 'max_accuracy_drop'?)" in msg
    assert f"{project}:6: data.labels:" in msg and "missing.npy does not exist" in msg  # listed in the same run
    # once the schema is right, every other problem (files, SLO grammar, recipes) is listed together
    project.write_text(text.replace("max_acuracy_drop", "max_accuracy_drop"))
    with pytest.raises(ConfigError) as err:
        load_config(project)
    msg = str(err.value)
    assert f"{project}:6: data.labels:" in msg and "missing.npy does not exist" in msg
    assert f"{project}:16: loadtest.slo:" in msg and "unknown metric 'p99'" in msg
    assert len(err.value.problems) == 2


def test_wrong_types_and_missing_sections_are_listed_together(project: Path) -> None:
    project.write_text(GOOD.replace("batch_size: 4", "batch_size: zero").replace("repository:\n  path: repo\n  name: lin\n", ""))
    with pytest.raises(ConfigError) as err:
        load_config(project)
    problems = err.value.problems
    assert any(p.startswith(f"{project}:10: search.batch_size:") for p in problems), problems
    assert any("repository: required key missing" in p for p in problems), problems


def test_set_overrides_and_is_validated(project: Path) -> None:
    cfg = load_config(project, ["search.max_accuracy_drop=1.0", "loadtest.concurrency=[1,4,8]"])
    assert cfg.search.max_accuracy_drop == 1.0 and cfg.loadtest.concurrency == [1, 4, 8]
    with pytest.raises(ConfigError) as err:
        load_config(project, ["search.objectiv=latency"])
    assert "--set: search.objectiv: unknown key 'objectiv' (did you mean 'objective'?)" in str(err.value)


def test_bad_recipes_are_config_errors(project: Path) -> None:
    project.write_text(GOOD.replace('"simplify,int8",', '"simplify,int9", "prune-channels(ratio=2)",'))
    with pytest.raises(ConfigError) as err:
        load_config(project)
    msg = str(err.value)
    assert f"{project}:8: search.candidates:" in msg
    assert "int9" in msg and "ratio" in msg


def test_recipe_text_round_trips() -> None:
    cand = parse_recipe_text("simplify, prune-channels(ratio=0.25,importance=activation), int8(per_channel=false)")
    assert cand.label == "simplify,prune-channels(importance=activation,ratio=0.25),int8(per_channel=false)"
    assert cand.steps[1].option_dict() == {"ratio": 0.25, "importance": "activation"}


def test_cli_schema_dry_run_and_user_error(project: Path, capsys) -> None:
    assert main(["run", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "search" in schema["properties"] and "SearchSection" in schema["$defs"]
    assert main(["run", str(project), "--dry-run", "--set", "search.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "objective throughput at batch 8" in out and "simplify,prune-channels(ratio=0.5),int8" in out
    assert not (project.parent / ".accelserve-run").exists()  # a dry run does no work
    project.write_text(GOOD.replace("model:", "modle:"))
    assert main(["run", str(project)]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'model'?" in err and "Traceback" not in err
    assert not os.path.exists(project.parent / "repo")
