"""Request building in accelserve.triton.client (no server): --range for random data, --data cut into batches."""

from __future__ import annotations

import numpy as np
import pytest

from accelserve.errors import InvalidInputError
from accelserve.triton.client import ModelInfo, TensorMeta, random_inputs, split_requests


def _info(max_batch_size: int = 8) -> ModelInfo:
    dims = (-1,) if max_batch_size else ()
    return ModelInfo("m", "onnxruntime_onnx", max_batch_size,
                     (TensorMeta("ids", "INT64", (*dims, 16)), TensorMeta("x", "FP32", (*dims, 4))),
                     (TensorMeta("y", "FP32", (*dims, 3)),))


def test_random_inputs_ranges_per_input_and_for_all() -> None:
    feeds = random_inputs(_info(64), batch=64, ranges={"ids": (1000, 1005), None: (5.0, 6.0)})
    assert feeds["ids"].min() >= 1000 and feeds["ids"].max() < 1005 and feeds["ids"].dtype == np.int64
    assert feeds["x"].min() >= 5.0 and feeds["x"].max() < 6.0
    with pytest.raises(InvalidInputError, match=r"--range names \['nope'\]"):
        random_inputs(_info(), ranges={"nope": (0, 1)})


def test_split_requests_cuts_samples_into_batches() -> None:
    feeds = {"ids": np.arange(10 * 16).reshape(10, 16), "x": np.ones((10, 4), np.float32)}
    parts = split_requests(feeds, _info(), 4)
    assert [p["ids"].shape[0] for p in parts] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([p["ids"] for p in parts]), feeds["ids"])
    assert [p["x"].shape[0] for p in split_requests(feeds, _info(max_batch_size=3))] == [3, 3, 3, 1]
    assert len(split_requests(feeds, _info())) == 2  # 10 samples > max_batch_size 8 without --batch
    assert len(split_requests({k: v[:5] for k, v in feeds.items()}, _info())) == 1


def test_split_requests_errors() -> None:
    feeds = {"ids": np.zeros((10, 16), np.int64), "x": np.ones((10, 4), np.float32)}
    with pytest.raises(InvalidInputError, match="exceeds the max_batch_size 8"):
        split_requests(feeds, _info(), 9)
    with pytest.raises(InvalidInputError, match="different numbers of samples"):
        split_requests({**feeds, "x": feeds["x"][:3]}, _info(), 2)
    with pytest.raises(InvalidInputError, match="does not batch"):
        split_requests({"ids": np.zeros(16, np.int64), "x": np.ones(4, np.float32)}, _info(0), 2)
