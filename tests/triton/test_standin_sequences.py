"""The stand-in's sequence and BYTES helpers without Triton (the e2e tests run them inside tritonserver)."""

from __future__ import annotations

import numpy as np
import pytest

from accelserve.triton.python_model import model as pm
from accelserve.triton.python_model import sequences as sq

CONFIG = {
    "max_batch_size": 8,
    "sequence_batching": {
        "oldest": {"max_candidate_sequences": 4},
        "max_sequence_idle_microseconds": 2_000_000,
        "control_input": [
            {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
            {"name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "fp32_false_true": [0, 1]}]},
            {"name": "READY", "control": [{"kind": "CONTROL_SEQUENCE_READY", "bool_false_true": [False, True]}]},
            {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT64"}]},
        ],
        "state": [{"input_name": "IN_S", "output_name": "OUT_S", "data_type": "TYPE_INT32", "dims": ["-1"],
                   "initial_state": [{"data_type": "TYPE_INT32", "dims": ["2"], "zero_data": True}]}],
    },
}


def test_spec_reads_controls_states_and_strategy() -> None:
    spec = sq.sequence_spec(CONFIG)
    assert spec is not None and spec.strategy == "oldest" and spec.idle_s == 2.0
    assert [(c.name, c.dtype) for c in spec.controls] == [
        ("START", np.int32), ("END", np.float32), ("READY", np.bool_), ("CORRID", np.uint64)]
    assert spec.control("CONTROL_SEQUENCE_END").value(True, batching=True).tolist() == [[1.0]]
    assert spec.control("CONTROL_SEQUENCE_CORRID").value(77, batching=False).dtype == np.uint64
    state = spec.states[0]
    assert (state.input_name, state.output_name, state.dims, state.initial_dims) == ("IN_S", "OUT_S", (-1,), (2,))
    assert state.initial(batching=True).shape == (1, 2)
    assert sq.sequence_spec({"max_batch_size": 4}) is None


def test_state_follows_its_sequence_and_start_end_reset_it() -> None:
    now = [0.0]
    states = sq.SequenceStates(sq.sequence_spec(CONFIG), clock=lambda: now[0])
    initial = {"x": np.ones((1, 1)), "IN_S": np.zeros((1, 2), np.int32)}
    start = sq.RequestInfo(5, sq.FLAG_START)
    assert states.apply(initial, start) is initial  # START: the initial state Triton supplies
    states.update({"OUT_S": np.array([[3, 4]])}, start)
    states.update({"OUT_S": np.array([[9, 9]])}, sq.RequestInfo(6, sq.FLAG_START))
    states.apply(initial, sq.RequestInfo(7, sq.FLAG_START))  # a START that then fails: the initial state stays
    assert states.apply(initial, sq.RequestInfo(7, 0))["IN_S"].tolist() == [[0, 0]]
    fed = states.apply(initial, sq.RequestInfo(5, 0))
    assert fed["IN_S"].tolist() == [[3, 4]] and fed["IN_S"].dtype == np.int32
    states.update({"OUT_S": np.array([[1, 1]])}, sq.RequestInfo(5, sq.FLAG_END))
    assert 5 not in states.entries and 6 in states.entries and 7 in states.entries
    with pytest.raises(ValueError, match="no state"):
        states.apply(initial, sq.RequestInfo(5, 0))
    now[0] = 2.5  # past max_sequence_idle_microseconds: Triton has ended sequence 6
    assert states.expire() == [6, 7]


def test_null_requests_never_touch_a_sequences_state() -> None:
    spec = sq.sequence_spec(CONFIG)
    states = sq.SequenceStates(spec)
    states.update({"OUT_S": np.array([[3, 4]])}, sq.RequestInfo(5, sq.FLAG_START))
    null_feed = {"READY": np.array([[False]]), "IN_S": np.zeros((1, 2), np.int32)}
    assert not sq.request_ready(null_feed, spec, 5)
    assert not sq.request_ready({"READY": np.array([[True]])}, spec, 0)
    assert sq.request_ready({"READY": np.array([[True]])}, spec, 5)
    null = sq.RequestInfo(5, 0, ready=False)
    assert states.apply(null_feed, null) is null_feed
    states.update({"OUT_S": np.array([[0, 0]])}, null)
    assert states.entries[5].values["IN_S"].tolist() == [[3, 4]]


def test_controls_are_checked_against_the_onnx_model_like_the_onnxruntime_backend() -> None:
    spec = sq.sequence_spec(CONFIG)
    good = {"START": (np.dtype(np.int32), ["b", 1]), "END": (np.dtype(np.float32), ["b", 1]),
            "READY": (np.dtype(np.bool_), ["b", 1]), "CORRID": (np.dtype(np.uint64), ["b", 1]),
            "IN_S": (np.dtype(np.int32), ["b", "n"])}
    sq.check_against_model(spec, good, {"OUT_S"}, batching=True)
    with pytest.raises(sq.SequenceConfigError, match="START is float32"):
        sq.check_against_model(spec, {**good, "START": (np.dtype(np.float32), ["b", 1])}, {"OUT_S"}, True)
    with pytest.raises(sq.SequenceConfigError, match=r"READY must have dims \[1\]"):
        sq.check_against_model(spec, {**good, "READY": (np.dtype(np.bool_), ["b", 2])}, {"OUT_S"}, True)
    with pytest.raises(sq.SequenceConfigError, match="state output OUT_S"):
        sq.check_against_model(spec, good, set(), True)
    missing = dict(good)
    del missing["END"]
    with pytest.raises(sq.SequenceConfigError, match="control input END"):
        sq.check_against_model(spec, missing, {"OUT_S"}, True)


def test_bytes_become_onnx_strings_and_back() -> None:
    given = np.array([[b"Hello", "wörld".encode()], [b"", b"a\x00b"]], dtype=object)
    as_str = pm.to_onnx_strings("x", given)
    assert as_str.tolist() == [["Hello", "wörld"], ["", "a\x00b"]]
    assert pm.from_onnx_strings(as_str).tolist() == given.tolist()
    with pytest.raises(ValueError, match="input x: element 1 is not UTF-8"):
        pm.to_onnx_strings("x", np.array([b"ok", b"\xff"], dtype=object))


def test_known_bounds_are_enforced_with_the_dim_named() -> None:
    config = {"parameters": {pm.MAX_SHAPE_PARAMETER: {"string_value": '{"ids": [128]}'}}}
    bounds = pm.max_shapes(config)
    pm.check_max_shape({"ids": np.zeros((2, 128))}, bounds, batching=True)
    with pytest.raises(ValueError, match=r"ids has 200 along dim 1 .* at most 128"):
        pm.check_max_shape({"ids": np.zeros((2, 200))}, bounds, batching=True)
    with pytest.raises(ValueError, match="not JSON"):
        pm.max_shapes({"parameters": {pm.MAX_SHAPE_PARAMETER: {"string_value": "[1"}}})


def test_ragged_inputs_are_flattened_and_batch_inputs_computed() -> None:
    feeds = [{"x": np.arange(3, dtype=np.float32)[None], "k": np.ones((1, 2))},
             {"x": np.arange(5, dtype=np.float32)[None], "k": np.ones((1, 2))}]
    assert pm.compatible_groups(feeds) == [[0], [1]]  # shapes differ: not batchable unless ragged
    assert pm.compatible_groups(feeds, frozenset({"x"})) == [[0, 1]]
    batch, sizes = pm.concat_requests(feeds, frozenset({"x"}))
    assert sizes == [1, 1] and batch["x"].tolist() == [0, 1, 2, 0, 1, 2, 3, 4] and batch["k"].shape == (2, 2)

    def bi(kind: str, dtype: str = "TYPE_INT32") -> list[int]:
        spec = {"kind": kind, "target_name": ["T"], "data_type": dtype, "source_input": ["x"]}
        return pm.batch_input_tensors(feeds, [spec])["T"].tolist()

    assert bi("BATCH_ELEMENT_COUNT") == [3, 5]
    assert bi("BATCH_ACCUMULATED_ELEMENT_COUNT") == [3, 8]
    assert bi("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO") == [0, 3, 8]
    assert len(bi("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", "TYPE_FP32")) == 5
    assert bi("BATCH_ITEM_SHAPE") == [[3], [5]] and bi("BATCH_ITEM_SHAPE_FLATTEN") == [3, 5]
    spec = {"target_name": ["T"], "data_type": "TYPE_FP32", "source_input": ["x"]}  # kind omitted: the enum's 0
    assert pm.batch_input_tensors(feeds, [spec])["T"].dtype == np.float32
