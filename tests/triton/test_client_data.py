"""Request data of the client without a server: BYTES tensors, random strings, text .npz, sequence steps, and a
sequence run locally the way Triton's onnxruntime backend runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelserve.errors import InvalidInputError
from accelserve.triton.client import ModelInfo, TensorMeta, as_bytes_tensor, load_inputs, random_inputs
from accelserve.triton.sequence_client import run_sequence_locally, split_steps
from tests.triton import onnx_builders as ob
from tests.triton.sequence_helpers import accumulator_config


def _info(**kw) -> ModelInfo:  # noqa: ANN003
    base = dict(name="m", platform="onnxruntime_onnx", max_batch_size=8,
                inputs=(TensorMeta("s", "BYTES", (-1, 2)),), outputs=(TensorMeta("o", "BYTES", (-1, 2)),))
    base.update(kw)
    return ModelInfo(**base)


def test_text_arrays_become_utf8_bytes_tensors() -> None:
    out = as_bytes_tensor(np.array([["Hello", "wörld"]]))
    assert out.dtype == object and out.tolist() == [[b"Hello", "wörld".encode()]]
    assert as_bytes_tensor(np.array([b"a\x01"])).tolist() == [b"a\x01"]
    numbers = np.arange(3)
    assert as_bytes_tensor(numbers) is numbers


def test_random_strings_have_the_length_asked_for() -> None:
    feeds = random_inputs(_info(), batch=3, string_length=5)
    assert feeds["s"].shape == (3, 2) and {len(v) for v in feeds["s"].reshape(-1)} == {5}
    assert random_inputs(_info(), string_data="7")["s"].tolist() == [[b"7", b"7"]]


def test_text_npz_loads_as_bytes_and_numbers_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "ok.npz", s=np.array([["a", "ö"]]))
    assert load_inputs(tmp_path / "ok.npz", _info())["s"].tolist() == [[b"a", "ö".encode()]]
    np.savez(tmp_path / "bad.npz", s=np.zeros((1, 2)))
    with pytest.raises(InvalidInputError, match="is BYTES"):
        load_inputs(tmp_path / "bad.npz", _info())


def test_steps_are_batch_1_samples() -> None:
    info = _info(inputs=(TensorMeta("x", "INT32", (-1, 1)),))
    steps = split_steps({"x": np.arange(5, dtype=np.int32).reshape(5, 1)}, info, 3)
    assert [s["x"].tolist() for s in steps] == [[[0]], [[1]], [[2]]]
    with pytest.raises(InvalidInputError, match="needs 7 samples"):
        split_steps({"x": np.zeros((5, 1))}, info, 7)


def test_a_sequence_runs_locally_with_controls_and_state(tmp_path: Path) -> None:
    path = ob.save(ob.accumulator(), tmp_path / "acc.onnx")
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse(accumulator_config("acc"), mc.ModelConfig())
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)  # as gRPC clients see it
    info = _info(inputs=(TensorMeta("INPUT", "INT32", (-1, 1)),), config=as_json)
    steps = [{"INPUT": np.array([[v]], dtype=np.int32)} for v in (3, 4, 5)]
    out = run_sequence_locally(path, info, steps, 42, ["OUTPUT", "CORRID_OUT"])
    assert [o["OUTPUT"].item() for o in out] == [3, 7, 12]
    assert {o["CORRID_OUT"].item() for o in out} == {42}
