"""Request data from a plan (no server needed: the plan is plain data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelserve.errors import InvalidInputError
from accelserve.loadtest.plan import RequestPlan, TensorPlan, parse_ranges, payloads


def _plan(**kw) -> RequestPlan:
    base = {"url": "http://127.0.0.1:8000", "protocol": "http", "model": "m", "batch_size": 2, "max_batch_size": 8,
            "inputs": (TensorPlan("x", "FP32", (2, 4), 10.0, 20.0), TensorPlan("ids", "INT64", (2, 3))),
            "outputs": ("y",)}
    base.update(kw)
    return RequestPlan(**base)


def test_round_trips_through_json_dicts() -> None:
    plan = _plan()
    assert RequestPlan.from_dict(plan.to_dict()) == plan
    assert plan.host_port == "127.0.0.1:8000"


def test_random_payloads_respect_shape_dtype_and_range_and_differ_per_user() -> None:
    plan = _plan()
    a, b = payloads(plan, user_index=0), payloads(plan, user_index=1)
    assert len(a) > 1
    for request in a:
        assert request["x"].shape == (2, 4) and request["x"].dtype == np.float32
        assert request["x"].min() >= 10.0 and request["x"].max() < 20.0
        assert request["ids"].dtype == np.int64 and request["ids"].shape == (2, 3)
    assert not np.array_equal(a[0]["x"], a[1]["x"])
    assert not np.array_equal(a[0]["x"], b[0]["x"])
    assert np.array_equal(payloads(plan, user_index=0)[0]["x"], a[0]["x"])  # seeded


def test_npz_samples_are_cut_into_batches_that_wrap_around(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.arange(5 * 4, dtype=np.float32).reshape(5, 4), ids=np.arange(15).reshape(5, 3))
    plan = _plan(data_file=str(path))
    requests = payloads(plan, user_index=0)
    assert len(requests) == 3  # ceil(5 / 2)
    firsts = [r["x"][:, 0].tolist() for r in requests]
    assert firsts == [[0.0, 4.0], [8.0, 12.0], [16.0, 0.0]]
    assert payloads(plan, user_index=1)[0]["x"][0, 0] == 8.0  # another user starts elsewhere


def test_npz_for_a_model_without_batching_is_one_request(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, x=np.ones((3, 4), np.float32), ids=np.zeros((3, 3), np.int64))
    plan = _plan(data_file=str(path), max_batch_size=0, batch_size=1)
    [request] = payloads(plan)
    assert request["x"].shape == (3, 4)


def test_parse_ranges() -> None:
    assert parse_ranges(["0:1", "ids=5:9"]) == {None: (0.0, 1.0), "ids": (5.0, 9.0)}
    for bad in ["1:0", "x=a:b", "3"]:
        with pytest.raises(InvalidInputError):
            parse_ranges([bad])


def test_bytes_inputs_get_random_strings_of_the_given_length_or_fixed_text() -> None:
    plan = _plan(inputs=(TensorPlan("s", "BYTES", (2, 3)),), string_length=7)
    request = payloads(plan, user_index=0)[0]["s"]
    assert request.dtype == object and request.shape == (2, 3)
    assert {len(v) for v in request.reshape(-1)} == {7} and all(isinstance(v, bytes) for v in request.reshape(-1))
    assert len({v for v in request.reshape(-1)}) > 1
    fixed = payloads(_plan(inputs=(TensorPlan("s", "BYTES", (2, 3)),), string_data="wörld"))[0]["s"]
    assert set(fixed.reshape(-1).tolist()) == {"wörld".encode()}


def test_unicode_npz_samples_become_bytes(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, s=np.array([["a"], ["wörld"]]))
    plan = _plan(inputs=(TensorPlan("s", "BYTES", (1, 1)),), data_file=str(path), batch_size=1)
    requests = payloads(plan, user_index=0)
    assert [r["s"].tolist() for r in requests] == [[[b"a"]], [["wörld".encode()]]]
    assert RequestPlan.from_dict(_plan(sequence_length=5, string_data="x").to_dict()).sequence_length == 5
