"""Numerical verification (accelserve.verify) and the input-set helpers it is fed by (accelserve.specs)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from accelserve.errors import InvalidInputError, VerificationError
from accelserve.specs import InputSpec, axis_sample_sizes, input_specs_from_onnx, random_feeds, sample_feed
from accelserve.verify import (
    DEFAULT_TOLERANCES,
    OutputComparison,
    Tolerance,
    VerificationReport,
    compare_arrays,
    tolerance_for,
    verify,
)

FP32 = DEFAULT_TOLERANCES["fp32"]


def _linear_reference(path: Path):  # noqa: ANN202 - returns the numpy forward of make_linear_model's graph
    model = onnx.load(str(path))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return lambda feeds: {"y": np.maximum(feeds["x"] @ weights["W"] + weights["B"], 0)}


# --------------------------------------------------------------------------------------------------------------
# compare_arrays / tolerances


def test_identical_arrays_pass() -> None:
    a = np.linspace(-1, 1, 50, dtype=np.float32)
    c = compare_arrays("y", a, a.copy(), FP32)
    assert c.passed and c.max_abs_error == 0 and c.cosine == pytest.approx(1.0)


def test_small_error_within_tolerance_passes_and_large_fails() -> None:
    ref = np.linspace(1, 2, 100, dtype=np.float32)
    assert compare_arrays("y", ref + 1e-6, ref, FP32).passed
    bad = compare_arrays("y", ref + 1e-2, ref, FP32)
    assert not bad.passed
    assert bad.max_abs_error == pytest.approx(1e-2, rel=1e-3)
    assert bad.mismatch_fraction == 1.0


def test_one_outlier_is_counted() -> None:
    ref = np.ones(1000, dtype=np.float32)
    act = ref.copy()
    act[7] = 1.5
    c = compare_arrays("y", act, ref, FP32)
    assert not c.passed and c.mismatch_fraction == pytest.approx(1 / 1000)
    assert c.max_rel_error == pytest.approx(0.5)


def test_shape_mismatch_fails() -> None:
    c = compare_arrays("y", np.zeros((2, 3)), np.zeros((3, 2)), FP32)
    assert not c.passed and c.max_abs_error == float("inf")


def test_nan_in_only_one_side_fails_and_matching_nan_passes() -> None:
    ref = np.array([1.0, np.nan, 3.0])
    assert compare_arrays("y", ref.copy(), ref, FP32).passed
    assert not compare_arrays("y", np.array([1.0, 2.0, 3.0]), ref, FP32).passed


def test_int8_tolerance_checks_cosine_only() -> None:
    tol = DEFAULT_TOLERANCES["int8"]
    ref = np.linspace(-1, 1, 200)
    noisy = ref + np.random.default_rng(0).normal(0, 0.02, ref.shape)
    assert compare_arrays("y", noisy, ref, tol).passed  # abs error ~0.05, cosine > 0.99
    assert not compare_arrays("y", -ref, ref, tol).passed


def _independent(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> dict:
    """The comparison computed another way: numpy.isclose for the element test (the same rule,
    |a - e| <= atol + rtol * |e|) and scipy's cosine distance, on finite arrays."""
    from scipy.spatial.distance import cosine as cosine_distance

    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    close = np.isclose(a, e, rtol=tol.rtol, atol=tol.atol) if tol.atol is not None else np.ones(a.shape, bool)
    cos = 1.0 - cosine_distance(a, e)
    return {"max_abs_error": float(np.max(np.abs(a - e))),
            "max_rel_error": float(np.max(np.abs(a - e) / np.maximum(np.abs(e), 1e-12))),
            "cosine": cos, "mismatch_fraction": float(np.mean(~close)),
            "passed": bool(close.all() and cos >= tol.min_cosine)}


@pytest.mark.parametrize("tol_name", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("noise", [0.0, 1e-6, 1e-4, 3e-3, 3e-2, 0.3])
@pytest.mark.parametrize("shape, dtype", [((64,), np.float32), ((3, 5, 7), np.float32), ((4, 10), np.float16),
                                          ((2, 50), np.float64)])
def test_compare_arrays_agrees_with_numpy_isclose_and_scipy_cosine(tol_name: str, noise: float, shape: tuple,
                                                                  dtype: type) -> None:
    tol = DEFAULT_TOLERANCES[tol_name]
    rng = np.random.default_rng(zlib.crc32(repr((tol_name, noise, shape)).encode()))
    expected = rng.standard_normal(shape).astype(dtype)
    actual = (expected.astype(np.float64) * (1 + noise * rng.standard_normal(shape))).astype(dtype)
    if noise:
        actual.flat[3] = expected.flat[3] + 10 * noise  # at least one element clearly off
    c = compare_arrays("out", actual, expected, tol, sample=5)
    ref = _independent(actual, expected, tol)
    assert (c.name, c.shape, c.sample) == ("out", shape, 5)
    assert c.max_abs_error == pytest.approx(ref["max_abs_error"], rel=1e-12, abs=0)
    assert c.max_rel_error == pytest.approx(ref["max_rel_error"], rel=1e-12, abs=0)
    assert c.cosine == pytest.approx(ref["cosine"], rel=1e-12, abs=1e-15)
    assert c.mismatch_fraction == ref["mismatch_fraction"]
    assert c.passed is ref["passed"]


def test_compare_arrays_at_the_tolerance_boundary() -> None:
    tol = Tolerance(atol=0.25, rtol=0.5, min_cosine=0.0)
    expected = np.array([2.0, -2.0, 0.0, 4.0])
    at_limit = expected + np.array([1.25, -1.25, 0.25, 2.25])  # exactly atol + rtol * |e| off: still inside
    c = compare_arrays("y", at_limit, expected, tol)
    assert c.passed and c.mismatch_fraction == 0.0
    assert c.max_abs_error == 2.25 and c.max_rel_error == pytest.approx(0.25 / 1e-12)  # 0.25 off a 0 reference
    beyond = at_limit + np.array([0.0, 0.0, 0.0, 1e-9])
    c = compare_arrays("y", beyond, expected, tol)
    assert not c.passed and c.mismatch_fraction == 0.25
    assert compare_arrays("y", beyond, expected, Tolerance(atol=None, rtol=0.0, min_cosine=0.0)).passed


def test_compare_arrays_cosine_threshold_is_inclusive_and_sign_sensitive() -> None:
    e = np.array([1.0, 0.0])
    a = np.array([1.0, 1.0])  # cosine exactly 1/sqrt(2)
    cos = 1 / np.sqrt(2)
    loose = Tolerance(atol=None, rtol=0.0, min_cosine=float(np.dot(a, e) / (np.linalg.norm(a) * np.linalg.norm(e))))
    c = compare_arrays("y", a, e, loose)
    assert c.cosine == pytest.approx(cos) and c.passed
    assert not compare_arrays("y", a, e, Tolerance(atol=None, rtol=0.0, min_cosine=cos + 1e-9)).passed
    flipped = compare_arrays("y", -e, e, Tolerance(atol=None, rtol=0.0, min_cosine=-1.0))
    assert flipped.cosine == pytest.approx(-1.0) and flipped.passed


def test_compare_arrays_with_zero_vectors() -> None:
    zeros = np.zeros(4)
    both = compare_arrays("y", zeros, zeros.copy(), FP32)
    assert both.passed and both.cosine == 1.0 and both.max_abs_error == 0.0 and both.mismatch_fraction == 0.0
    tiny = np.full(4, 5e-5)  # reference all zero, output within atol: the cosine is undefined, so it counts as 1
    c = compare_arrays("y", tiny, zeros, FP32)
    assert c.passed and c.cosine == 1.0
    c = compare_arrays("y", zeros, np.full(4, 1.0), FP32)  # output all zero, reference not: 0, fails
    assert not c.passed and c.cosine == 0.0 and c.mismatch_fraction == 1.0
    assert compare_arrays("y", np.full(4, 5e-5), zeros, Tolerance(atol=None, rtol=0.0, min_cosine=0.5)).cosine == 0.0


def test_compare_arrays_non_finite_values() -> None:
    inf, nan = np.inf, np.nan
    same = compare_arrays("y", np.array([1.0, inf, -inf, nan]), np.array([1.0, inf, -inf, nan]), FP32)
    assert same.passed and same.max_abs_error == 0.0 and same.cosine == pytest.approx(1.0)
    for actual in ([1.0, -inf, -inf, nan], [1.0, inf, -inf, 0.0], [1.0, 5.0, -inf, nan]):
        c = compare_arrays("y", np.array(actual), np.array([1.0, inf, -inf, nan]), FP32)
        assert not c.passed, actual
        assert c.max_abs_error == 0.0  # errors are measured on the elements finite on both sides
    c = compare_arrays("y", np.array([2.0, nan]), np.array([1.0, nan]), FP32)
    assert c.max_abs_error == 1.0 and c.max_rel_error == 1.0 and c.mismatch_fraction == 1.0 and not c.passed


def test_compare_arrays_integers_booleans_strings_and_empty() -> None:
    ints = compare_arrays("ids", np.array([[1, 2, 3]]), np.array([[1, 2, 4]]), FP32)
    assert ints.shape == (1, 3) and ints.max_abs_error == 1.0 and ints.mismatch_fraction == pytest.approx(1 / 3)
    assert not ints.passed
    assert compare_arrays("mask", np.array([True, False]), np.array([True, False]), FP32).passed
    assert not compare_arrays("mask", np.array([True, True]), np.array([True, False]), FP32).passed
    words = compare_arrays("w", np.array(["a", "b"]), np.array(["a", "b"]), FP32)
    assert (words.passed, words.max_abs_error, words.max_rel_error, words.cosine, words.mismatch_fraction) == (
        True, 0.0, 0.0, 1.0, 0.0)
    other = compare_arrays("w", np.array(["a", "c"]), np.array(["a", "b"]), FP32, sample=2)
    assert (other.passed, other.max_abs_error, other.cosine, other.mismatch_fraction, other.sample) == (
        False, 1.0, 0.0, 1.0, 2)
    empty = compare_arrays("e", np.zeros((0, 3)), np.zeros((0, 3)), FP32, sample=1)
    assert (empty.passed, empty.shape, empty.cosine, empty.max_abs_error, empty.mismatch_fraction, empty.sample) == (
        True, (0, 3), 1.0, 0.0, 0.0, 1)
    shape = compare_arrays("s", np.zeros((2, 3)), np.zeros((3, 2)), FP32, sample=4)
    assert (shape.passed, shape.shape, shape.max_abs_error, shape.max_rel_error, shape.cosine,
            shape.mismatch_fraction, shape.sample) == (False, (2, 3), np.inf, np.inf, 0.0, 1.0, 4)


def _report(*rows: tuple) -> VerificationReport:
    return VerificationReport(model="m.onnx", precision="fp16", tolerance=DEFAULT_TOLERANCES["fp16"],
                              comparisons=[OutputComparison(*row) for row in rows])


def test_report_shows_the_worst_sample_per_output() -> None:
    rows = [("logits", (2, 10), 1e-3, 2e-3, 0.99999, 0.0, True, 0),
            ("logits", (2, 10), 5e-2, 0.25, 0.998, 0.05, False, 1),  # the only failure: worst
            ("logits", (2, 10), 1e-2, 0.01, 0.9999, 0.0, True, 2),
            ("score", (), 2e-3, 1e-3, 1.0, 0.0, True, 0),
            ("score", (), 3e-3, 1e-3, 1.0, 0.0, True, 1)]  # same cosine, larger error: worst
    report = _report(*rows)
    assert not report.passed
    assert report.table().splitlines() == [
        "verification of m.onnx (fp16: atol=0.01 rtol=0.02 min_cosine=0.999; 3 input set(s))",
        "output  shape   max_abs_err  max_rel_err  cosine    mismatch  result",
        "logits  2x10    5.000e-02    2.500e-01    0.998000  5.00%     FAIL (input set 1)",
        "score   scalar  3.000e-03    1.000e-03    1.000000  0.00%     PASS",
    ]
    doc = report.to_dict()
    assert (doc["model"], doc["precision"], doc["passed"]) == ("m.onnx", "fp16", False)
    assert doc["tolerance"] == {"atol": 0.01, "rtol": 0.02, "min_cosine": 0.999}
    assert [(o["name"], o["sample"], o["passed"]) for o in doc["outputs"]] == [("logits", 1, False), ("score", 1, True)]
    with pytest.raises(VerificationError, match="outputs are out of tolerance:\nverification of m.onnx") as err:
        report.raise_if_failed()
    assert "--atol/--rtol/--min-cosine" in (err.value.hint or "")
    passing = _report(rows[0], rows[2], rows[3])  # all pass: the worst is the lowest cosine
    assert passing.passed and passing.raise_if_failed() is passing
    assert [(c.name, c.sample) for c in passing.worst()] == [("logits", 2), ("score", 0)]
    assert "PASS" in passing.table() and "FAIL" not in passing.table()


def test_an_empty_report_does_not_pass() -> None:
    report = VerificationReport(model="q.onnx", precision="int8", tolerance=DEFAULT_TOLERANCES["int8"])
    assert not report.passed and report.to_dict()["passed"] is False
    assert report.table().splitlines()[0] == "verification of q.onnx (int8: atol=- rtol=0.0 min_cosine=0.99; 0 input set(s))"
    with pytest.raises(VerificationError):
        report.raise_if_failed()


def test_tolerance_for_overrides_and_unknown_precision() -> None:
    t = tolerance_for("fp16", atol=0.5)
    assert t == Tolerance(atol=0.5, rtol=DEFAULT_TOLERANCES["fp16"].rtol, min_cosine=DEFAULT_TOLERANCES["fp16"].min_cosine)
    assert tolerance_for("FP32") == FP32
    with pytest.raises(InvalidInputError, match="unknown precision 'fp7'"):
        tolerance_for("fp7")


# --------------------------------------------------------------------------------------------------------------
# verify() on a real ONNX Runtime session


def test_verify_passes_against_the_numpy_forward(linear_model: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((b, 4)).astype(np.float32)} for b in (1, 3, 8)]
    report = verify(linear_model, feeds, _linear_reference(linear_model))
    assert report.passed
    assert {c.sample for c in report.comparisons} == {0, 1, 2}
    assert "PASS" in report.table() and "3 input set(s)" in report.table()
    assert report.raise_if_failed() is report
    assert report.to_dict()["passed"] is True


def test_verify_reports_a_wrong_reference(linear_model: Path) -> None:
    good = _linear_reference(linear_model)
    feeds = [{"x": np.ones((2, 4), np.float32)}, {"x": -np.ones((2, 4), np.float32)}]
    report = verify(linear_model, feeds, lambda f: {"y": good(f)["y"] + 0.1})
    assert not report.passed
    table = report.table()
    assert "FAIL" in table and "y" in table
    with pytest.raises(VerificationError, match="out of tolerance"):
        report.raise_if_failed()


def test_verify_with_expected_outputs_list(linear_model: Path) -> None:
    ref = _linear_reference(linear_model)
    feeds = [{"x": np.full((2, 4), v, np.float32)} for v in (0.5, -0.25)]
    expected = [ref(f) for f in feeds]
    assert verify(linear_model, feeds, expected).passed
    # sequence outputs are matched to the model's outputs in order
    assert verify(linear_model, feeds, [[e["y"]] for e in expected]).passed


def test_verify_reference_with_wrong_output_count(linear_model: Path) -> None:
    feeds = [{"x": np.ones((1, 4), np.float32)}]
    with pytest.raises(InvalidInputError, match="returned 2 outputs"):
        verify(linear_model, feeds, lambda f: [np.ones((1, 3)), np.ones((1, 3))])
    with pytest.raises(InvalidInputError, match="no output 'y'"):
        verify(linear_model, feeds, lambda f: {"z": np.ones((1, 3))})


def test_verify_needs_feeds(linear_model: Path) -> None:
    with pytest.raises(InvalidInputError, match="at least one"):
        verify(linear_model, [], lambda f: {})


def test_verify_wrong_rank_input_is_a_user_error(linear_model: Path) -> None:
    with pytest.raises(InvalidInputError, match="rejected the inputs"):
        verify(linear_model, [{"x": np.ones((4,), np.float32)}], _linear_reference(linear_model))


# --------------------------------------------------------------------------------------------------------------
# input sets


def test_sample_feed_shares_axis_sizes() -> None:
    specs = [InputSpec.parse("ids:1xseq=16:int64"), InputSpec.parse("mask:1xseq:int64")]
    assert axis_sample_sizes(specs) == {"batch": 1, "seq": 16}
    feed = sample_feed(specs, np.random.default_rng(0))
    assert feed["ids"].shape == feed["mask"].shape == (1, 16)
    assert feed["ids"].dtype == np.int64


def test_random_feeds_vary_dynamic_axes_together() -> None:
    specs = [InputSpec.parse("a:2xseq=8x4:float32"), InputSpec.parse("b:2xseq:float32")]
    feeds = random_feeds(specs, 6, np.random.default_rng(1))
    assert len(feeds) == 6
    assert feeds[0]["a"].shape == (3, 9, 4)  # the first set is sample + 1 on every dynamic axis
    for f in feeds:
        assert f["a"].shape[:2] == f["b"].shape and f["a"].shape[2] == 4
    assert len({f["a"].shape for f in feeds}) > 1
    fixed = random_feeds(specs, 2, np.random.default_rng(1), vary_dynamic=False)
    assert all(f["a"].shape == (2, 8, 4) for f in fixed)


def test_random_feeds_respect_value_range() -> None:
    spec = InputSpec(name="ids", shape=("batch", 5), dtype="int64", sample_shape=(2, 5), low=3, high=7)
    for f in random_feeds([spec], 4, np.random.default_rng(0)):
        assert f["ids"].min() >= 3 and f["ids"].max() < 7


def test_input_specs_from_onnx(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"]), helper.make_node("Identity", ["img"], ["out2"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [None, 3, 8])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("out2", TensorProto.FLOAT, [None, 3, 8])],
    )
    specs = input_specs_from_onnx(helper.make_model(graph))
    assert [(s.name, s.shape, s.dtype) for s in specs] == [
        ("ids", ("batch", "seq"), "int64"), ("img", ("img_dim0", 3, 8), "float32")]
    assert specs[0].concrete_shape() == (1, 2)


def test_input_specs_from_onnx_refuses_unsupported_types() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["o"])], "g",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("o", TensorProto.STRING, [1])],
    )
    with pytest.raises(InvalidInputError, match="--data"):
        input_specs_from_onnx(helper.make_model(graph))


def test_linear_model_fixture_specs(linear_model: Path) -> None:
    specs = input_specs_from_onnx(onnx.load(str(linear_model)))
    assert [(s.name, s.shape) for s in specs] == [("x", ("batch", 4))]
    feed = sample_feed(specs, np.random.default_rng(0))
    assert verify(linear_model, [feed], _linear_reference(linear_model)).passed



def test_fixed_length_warnings_for_integer_inputs() -> None:
    from accelserve.specs import InputSpec, fixed_length_warnings

    parse = InputSpec.parse
    warned = fixed_length_warnings([parse("ids:1x16:int64"), parse("x:1x16"), parse("m:1xseq=16:int64"),
                                    parse("label:4:int64"), parse("img:1x3x8x8:uint8"), parse("one:1x1:int32")])
    assert len(warned) == 1 and "'ids'" in warned[0] and "--input ids:1xseq=16:int64" in warned[0]
    # a model that fixes the length itself (TensorFlow signatures): nothing the user can change
    assert fixed_length_warnings([parse("ids:1x16:int64")], [parse("ids:1x16:int64")]) == []
    assert len(fixed_length_warnings([parse("ids:1x16:int64")], [parse("ids:1xseq:int64")])) == 1
