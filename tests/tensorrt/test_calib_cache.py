"""TensorRT's calibration cache format, written and read without TensorRT."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

from accelserve.calibration import load_calibration
from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.tensorrt.api import version_number
from accelserve.tensorrt.calib_cache import (
    CalibrationCache,
    cache_from_calibration,
    cache_from_qdq_model,
    cache_from_ranges,
    float_to_hex,
    hex_to_float,
    parse_cache,
    read_cache,
)
from tests.evaluate.models import make_cnn

LINE = re.compile(r"^(?P<name>.+): (?P<hex>0|[1-9a-f][0-9a-f]{0,7})$")


def test_hex_is_the_float32_bit_pattern_without_leading_zeros():
    assert float_to_hex(1.0) == "3f800000"
    assert float_to_hex(0.0) == "0"
    assert float_to_hex(2.0 ** -126) == "800000"  # smallest normal: leading zeros dropped
    # the example in ONNX Runtime's reader of TensorRT's cache
    assert hex_to_float("3caa54fc") == pytest.approx(struct.unpack(">f", bytes.fromhex("3caa54fc"))[0])
    for value in (0.0123, 1e-6, 3.5):
        assert hex_to_float(float_to_hex(value)) == np.float32(value)


def test_version_numbers_as_tensorrt_encodes_them():
    assert version_number("7.1.3") == 7103
    assert version_number("8.6.1.6") == 8601
    assert version_number("10.1.0") == 100100


def test_round_trip_keeps_names_with_spaces_colons_and_parentheses(tmp_path: Path):
    scales = {"input": 0.5, "(Unnamed Layer* 64) [Shuffle]_output": 0.0123, "a: b": 1e-3, "zero": 0.0}
    cache = CalibrationCache(version=8601, algorithm="EntropyCalibration2", scales=scales)
    path = cache.write(tmp_path / "model.calib")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert all(LINE.match(line) for line in lines[1:]), lines
    back = read_cache(path)
    assert back.header == cache.header
    assert list(back.scales) == list(scales)
    for name, scale in scales.items():
        assert back.scales[name] == np.float32(scale)
    assert back.dynamic_ranges()["input"] == pytest.approx(0.5 * 127)


@pytest.mark.parametrize("text, match", [
    ("", "first line must start with 'TRT-'"),
    ("CAL-1-x\n", "first line must start with 'TRT-'"),
    ("TRT-x-EntropyCalibration2\n", r"header .* is not TRT-<version>-<algorithm>"),
    ("TRT-8601-EntropyCalibration2\nnoseparator\n", r":2: expected"),
    ("TRT-8601-EntropyCalibration2\nx: zz\n", "not a hexadecimal"),
    ("TRT-8601-EntropyCalibration2\nx: 1\nx: 2\n", "appears twice"),
])
def test_bad_caches_are_refused_with_the_line(text: str, match: str):
    with pytest.raises(InvalidInputError, match=match):
        parse_cache(text)


def test_scale_is_absmax_over_127():
    cache = cache_from_ranges({"a": (-2.54, 1.0), "b": (0.0, 12.7)}, trt_version="8.6.1")
    assert cache.header == "TRT-8601-EntropyCalibration2"
    assert cache.scales["a"] == pytest.approx(0.02, rel=1e-6)
    assert cache.scales["b"] == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(OptimizationError, match="non-finite"):
        cache_from_ranges({"a": (-np.inf, 1.0)})


def test_cache_from_calibration_covers_the_input_and_every_activation(tmp_path: Path):
    model = make_cnn(tmp_path / "cnn.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    data = load_calibration(str(tmp_path / "calib.npz"), model)
    cache = cache_from_calibration(model, data, method="minmax")
    assert cache.algorithm == "MinMaxCalibration"
    # minmax: the input's range is exactly its largest magnitude
    assert cache.scales["x"] * 127 == pytest.approx(float(np.abs(x).max()), rel=1e-6)
    outputs = {o for n in onnx.load(str(model)).graph.node for o in n.output}
    assert {"c1", "r1", "res", "y"} <= set(cache.scales) <= outputs | {"x"}
    entropy = cache_from_calibration(model, data, method="entropy")
    assert entropy.algorithm == "EntropyCalibration2"
    assert any(entropy.scales[k] != cache.scales[k] for k in cache.scales)  # a different method, other ranges


def test_cache_from_a_tensorrt_qdq_model_takes_its_activation_scales(tmp_path: Path):
    from accelserve.optimize import optimize

    model = make_cnn(tmp_path / "cnn.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    optimize(model, ["int8"], out, {"target": "tensorrt"}, calibration=str(tmp_path / "calib.npz"), evaluate=False)
    qdq = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    expected = {n.input[0]: float(inits[n.input[1]]) for n in qdq.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}
    cache = cache_from_qdq_model(qdq)
    assert expected and cache.scales == pytest.approx(expected)

    ort_cpu = tmp_path / "u8.onnx"  # ONNX Runtime's CPU layout: activations U8 with a zero point, not symmetric
    optimize(model, ["int8"], ort_cpu, {"target": "ort-cpu"}, calibration=str(tmp_path / "calib.npz"), evaluate=False)
    with pytest.raises(OptimizationError, match="non-zero zero point"):
        cache_from_qdq_model(onnx.load(str(ort_cpu)))
