"""The search space (candidates in a config, brute's dedup, hill climbing) and --apply's atomic write."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import RepositoryError
from accelserve.triton.config import config_to_text, parse_config_text
from accelserve.tune.apply import apply_config
from accelserve.tune.space import (
    INTRA_OP_PARAMETER,
    Candidate,
    HillClimb,
    SearchSpace,
    apply_candidate,
    brute_candidates,
    candidate_of,
)

BASE = """
name: "m"
backend: "onnxruntime"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [4] }
output { name: "y" data_type: TYPE_FP32 dims: [3] }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { }
parameters { key: "other" value { string_value: "kept" } }
"""


def base() -> mc.ModelConfig:
    return parse_config_text(BASE)


def space(**kw) -> SearchSpace:
    values = dict(instances=(1, 2), threads=(1,), max_batch_sizes=(8,), dynamic_batching=(False, True),
                  preferred_batch_sizes=((),), max_queue_delays_us=(0,))
    values.update(kw)
    return SearchSpace(**values)


def test_apply_candidate_sets_every_axis_and_keeps_the_rest() -> None:
    c = Candidate(instances=3, threads=2, max_batch_size=16, dynamic_batching=True, preferred_batch_sizes=(4, 8),
                  max_queue_delay_us=500)
    new = apply_candidate(base(), c)
    assert [(g.count, g.kind) for g in new.instance_group] == [(3, mc.ModelInstanceGroup.KIND_CPU)]
    assert new.parameters[INTRA_OP_PARAMETER].string_value == "2"
    assert new.parameters["other"].string_value == "kept"
    assert new.max_batch_size == 16
    assert list(new.dynamic_batching.preferred_batch_size) == [4, 8]
    assert new.dynamic_batching.max_queue_delay_microseconds == 500
    assert [i.name for i in new.input] == ["x"]
    assert candidate_of(new) == c  # the round trip reads back what was written
    off = apply_candidate(base(), Candidate(1, None, 8, False))
    assert not off.HasField("dynamic_batching") and INTRA_OP_PARAMETER not in off.parameters


def test_candidate_of_the_default_config() -> None:
    assert candidate_of(base()) == Candidate(instances=1, threads=None, max_batch_size=8, dynamic_batching=True)


def test_brute_is_the_deduplicated_cross_product() -> None:
    # with batching off, preferred sizes and delays do not matter: 2 instances x (1 off + 2x2 on) = 10
    s = space(preferred_batch_sizes=((), (4,)), max_queue_delays_us=(0, 100))
    found = list(brute_candidates(s))
    assert len(found) == len(set(found)) == 10
    assert sum(1 for c in found if not c.dynamic_batching) == 2
    # preferred sizes above max_batch_size are dropped, so (16,) and () are the same point at mbs 8
    assert len(list(brute_candidates(space(preferred_batch_sizes=((), (16,)))))) == 4


def test_hill_climb_moves_to_the_better_neighbour_and_stops() -> None:
    s = space(instances=(1, 2, 3, 4), dynamic_batching=(True,))
    climb = HillClimb(s)
    home = climb.start((0, 0, 0, 0, 0, 0))
    assert home.instances == 1
    score = {1: 10, 2: 20, 3: 15, 4: 5}  # the best is 2 instances

    def better(a: Candidate, b: Candidate) -> bool:
        return score[a.instances] > score[b.instances]

    trail, measured, moved = [home.instances], [home.instances], True
    while moved:
        moved = False
        for index, candidate in climb.neighbours():
            assert abs(candidate.instances - home.instances) == 1
            measured.append(candidate.instances)
            if better(candidate, home) and climb.move(index):
                home, moved = candidate, True
                trail.append(candidate.instances)
                break
    assert trail == [1, 2]
    assert measured == [1, 2, 1, 3]  # 4 is never measured: 3 did not beat 2
    assert not climb.move((0, 0, 0, 0, 0, 0))  # a former home: the climb would cycle


def test_nearest_index_of_an_off_grid_default() -> None:
    s = space(instances=(1, 4, 8))
    assert s.at(s.nearest_index(Candidate(3, None, 8, True))).instances == 4


def repo_with_model(tmp_path: Path) -> Path:
    model_dir = tmp_path / "repo" / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"weights")
    (model_dir / "config.pbtxt").write_text(config_to_text(base()))
    return tmp_path / "repo"


def test_apply_replaces_only_the_config(tmp_path: Path) -> None:
    repo = repo_with_model(tmp_path)
    old = (repo / "m" / "config.pbtxt").read_text()
    new = config_to_text(apply_candidate(base(), Candidate(2, 1, 8, False)))
    path = apply_config(repo, "m", new, expected_old=old)
    assert path.read_text() == new
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == b"weights"
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]  # no temp file left


def test_apply_refuses_a_config_edited_meanwhile_or_a_changed_signature(tmp_path: Path) -> None:
    repo = repo_with_model(tmp_path)
    old = (repo / "m" / "config.pbtxt").read_text()
    edited = apply_candidate(base(), Candidate(5, None, 8, True))
    (repo / "m" / "config.pbtxt").write_text(config_to_text(edited))
    with pytest.raises(RepositoryError, match="changed while tune ran"):
        apply_config(repo, "m", config_to_text(apply_candidate(base(), Candidate(2, 1, 8, False))), expected_old=old)
    assert (repo / "m" / "config.pbtxt").read_text() == config_to_text(edited)
    renamed = base()
    renamed.input[0].name = "z"
    with pytest.raises(RepositoryError, match="inputs/outputs"):
        apply_config(repo, "m", config_to_text(renamed))
