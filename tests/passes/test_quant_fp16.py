"""The fp16 pass: float32 I/O by default, sensitive ops kept in float32, data-driven overflow fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from accelserve.artifact import ModelArtifact
from accelserve.calibration import load_calibration
from accelserve.evaluate import accuracy_vs_base
from accelserve.passes.base import PassContext
from accelserve.passes.quantize_fp16 import Fp16Pass
from tests.evaluate.models import make_mlp_block


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    return [{"x": rng.standard_normal((2, 4, 16)).astype(np.float32)} for _ in range(2)]


def _run(model: Path, tmp_path: Path, calibration=None, **config):
    ctx = PassContext(work_dir=tmp_path / "work", calibration=calibration)
    ctx.work_dir.mkdir(exist_ok=True)
    return Fp16Pass(config).run(ModelArtifact(model), tmp_path / "fp16.onnx", ctx), ctx


def _elem_types(model: onnx.ModelProto) -> tuple[list[int], list[int]]:
    return ([i.type.tensor_type.elem_type for i in model.graph.input],
            [o.type.tensor_type.elem_type for o in model.graph.output])


def test_weights_become_float16_io_stays_float32_softmax_stays_float32(tmp_path: Path) -> None:
    model = make_mlp_block(tmp_path / "mlp.onnx")
    out, ctx = _run(model, tmp_path)
    converted = onnx.load(str(out.path))
    onnx.checker.check_model(converted, full_check=True)
    assert _elem_types(converted) == ([TensorProto.FLOAT], [TensorProto.FLOAT])
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    assert inits["w_up"] == TensorProto.FLOAT16 and inits["w_down"] == TensorProto.FLOAT16
    kept = {k["node"]: k["op_type"] for k in ctx.report["kept_float32_nodes"]}
    assert kept == {"softmax": "Softmax"}
    assert any(n.op_type == "Cast" for n in converted.graph.node)
    assert out.precision == "fp16"
    assert accuracy_vs_base(model, out.path, _feeds()).cosine > 0.999


def test_float16_io_when_asked(tmp_path: Path) -> None:
    out, _ = _run(make_mlp_block(tmp_path / "mlp.onnx"), tmp_path, keep_io_types=False)
    assert _elem_types(onnx.load(str(out.path))) == ([TensorProto.FLOAT16], [TensorProto.FLOAT16])


def test_nodes_that_overflow_float16_on_calibration_data_stay_float32(tmp_path: Path) -> None:
    big = numpy_helper.from_array(np.full((8,), 3e5, dtype=np.float32), "big")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["scaled"], name="blow_up"),
         helper.make_node("ReduceMax", ["scaled"], ["m"], name="rmax", keepdims=1),
         helper.make_node("Div", ["scaled", "m"], ["y"], name="normalize")],
        "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8])], initializer=[big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "overflow.onnx"))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(0.5, 1.0, (4, 8)).astype(np.float32)}]
    calib = load_calibration(lambda: feeds, tmp_path / "overflow.onnx")
    out, ctx = _run(tmp_path / "overflow.onnx", tmp_path, calibration=calib)
    reasons = {k["node"]: k["reason"] for k in ctx.report["kept_float32_nodes"]}
    assert "overflows float16" in reasons["blow_up"]
    assert accuracy_vs_base(tmp_path / "overflow.onnx", out.path, feeds).cosine > 0.999
