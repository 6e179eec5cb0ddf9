"""Calibration data loading and validation: formats, and clear errors naming the input for bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelserve.calibration import SMOKE_ONLY, load_calibration, model_inputs
from accelserve.errors import InvalidInputError
from tests.evaluate.models import make_cnn, make_mlp_block


@pytest.fixture
def cnn(tmp_path: Path) -> Path:
    return make_cnn(tmp_path / "cnn.onnx")


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_model_inputs_skip_initializers_and_keep_dynamic_axes(cnn: Path) -> None:
    (inp,) = model_inputs(cnn)
    assert inp.name == "x" and inp.shape == ("batch", 1, 8, 8) and inp.dtype == np.float32


def test_npz_samples_are_cut_into_feeds_of_batch_size(cnn: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=_x(20))
    data = load_calibration(str(tmp_path / "c.npz"), cnn, batch_size=8)
    assert [f["x"].shape[0] for f in data.feeds()] == [8, 8, 4]
    assert data.samples == 20 and not data.is_random
    assert len(data.rebatch(5)) == 4


def test_npz_with_one_more_axis_holds_stacked_feeds(cnn: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=_x(12).reshape(3, 4, 1, 8, 8))
    data = load_calibration(tmp_path / "c.npz", cnn)
    assert len(data) == 3 and data.feeds()[0]["x"].shape == (4, 1, 8, 8)


def test_directory_of_npy_per_input_and_per_feed(cnn: Path, tmp_path: Path) -> None:
    per_input = tmp_path / "per_input"
    per_input.mkdir()
    np.save(per_input / "x.npy", _x(16))
    assert len(load_calibration(per_input, cnn, batch_size=4)) == 4
    per_feed = tmp_path / "per_feed"
    per_feed.mkdir()
    for i in range(3):
        np.save(per_feed / f"{i:02d}.npy", _x(2, seed=i))
    data = load_calibration(per_feed, cnn)
    assert len(data) == 3
    np.testing.assert_array_equal(data.feeds()[1]["x"], _x(2, seed=1))


def test_callable_from_a_file_and_in_memory(cnn: Path, tmp_path: Path) -> None:
    module = tmp_path / "calib_source.py"
    module.write_text(
        "import numpy as np\n"
        "def feeds():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(5):\n"
        "        yield {'x': rng.standard_normal((2, 1, 8, 8)).astype(np.float32)}\n"
    )
    assert len(load_calibration(f"{module}:feeds", cnn)) == 5
    data = load_calibration(lambda: [_x(3)], cnn)
    assert len(data) == 1 and data.feeds()[0]["x"].shape[0] == 3


def test_random_data_is_marked_smoke_only(tmp_path: Path) -> None:
    model = make_mlp_block(tmp_path / "mlp.onnx")
    data = load_calibration(None, model, random=True, count=3, dim_sizes={"seq": 5})
    assert data.is_random and len(data) == 3
    assert data.feeds()[0]["x"].shape == (1, 5, 16)
    assert data.describe()["note"] == SMOKE_ONLY


def test_fingerprint_follows_the_data(cnn: Path) -> None:
    a = load_calibration(lambda: [_x(2)], cnn).fingerprint()
    assert a == load_calibration(lambda: [_x(2)], cnn).fingerprint()
    assert a != load_calibration(lambda: [_x(2, seed=1)], cnn).fingerprint()


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ([{"y": np.zeros((1, 1, 8, 8), np.float32)}], "lacks model input(s) x"),
        ([{"x": np.zeros((1, 1, 8, 8), np.float32), "z": np.zeros(1, np.float32)}], "z that are not model inputs"),
        ([{"x": np.zeros((1, 1, 8, 8), np.float64)}], "input 'x' is float64, the model expects float32"),
        ([{"x": np.zeros((1, 8, 8), np.float32)}], "input 'x' has shape (1, 8, 8) (rank 3)"),
        ([{"x": np.zeros((1, 3, 8, 8), np.float32)}], "input 'x' has size 3 on axis 1; the model fixes it to 1"),
        ([{"x": np.zeros((0, 1, 8, 8), np.float32)}], "input 'x' is empty"),
        ([], "is empty: it holds no feeds"),
    ],
)
def test_bad_feeds_raise_an_error_naming_the_input(cnn: Path, feeds: list, message: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_calibration(lambda: feeds, cnn)
    assert message in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(cnn: Path, bad: float) -> None:
    x = _x(2)
    x[1, 0, 3, 3] = bad
    with pytest.raises(InvalidInputError, match="input 'x' has 1 NaN/Inf value"):
        load_calibration(lambda: [{"x": x}], cnn)


def test_npz_with_wrong_names_lists_what_is_missing_and_unknown(cnn: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", image=_x(4))
    with pytest.raises(InvalidInputError, match=r"missing input\(s\) x; unknown name\(s\) image"):
        load_calibration(tmp_path / "c.npz", cnn)


def test_empty_directory_and_missing_source_are_errors(cnn: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no .npy files"):
        load_calibration(tmp_path / "empty", cnn)
    with pytest.raises(InvalidInputError, match="does not exist and is not MODULE:FN"):
        load_calibration(tmp_path / "nope.npz", cnn)
    with pytest.raises(InvalidInputError, match="no calibration data given"):
        load_calibration(None, cnn)


def test_dynamic_axis_shared_between_inputs_must_agree(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two.onnx"))
    feed = {"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.float32)}
    with pytest.raises(InvalidInputError, match="axis 'batch' is 2 in input 'a' but 3 in input 'b'"):
        load_calibration(lambda: [feed], tmp_path / "two.onnx")
