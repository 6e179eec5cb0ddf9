"""Tiny ONNX graphs (onnx.helper) for the Triton repository tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Shape = Sequence[int | str]


def build(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def identity(shape: Shape = ("batch", 4), elem_type: int = TensorProto.FLOAT, *, out_shape: Shape | None = None,
             name_in: str = "x", name_out: str = "y") -> onnx.ModelProto:
    """y = Identity(x); ``out_shape`` defaults to ``shape``."""
    return build(
        [helper.make_node("Identity", [name_in], [name_out])],
        [helper.make_tensor_value_info(name_in, elem_type, list(shape))],
        [helper.make_tensor_value_info(name_out, elem_type, list(out_shape if out_shape is not None else shape))],
    )


def qdq(shape: Shape = ("batch", 4)) -> onnx.ModelProto:
    """y = DequantizeLinear(QuantizeLinear(x)): the smallest Q/DQ model."""
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "zero")
    return build(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [scale, zero],
    )


def densenet_like(batch: int | str = 1) -> onnx.ModelProto:
    """data_0 [batch,3,224,224] -> GlobalAveragePool -> 1x1 Conv -> fc6_1 [batch,1000,1,1] (Triton's densenet I/O)."""
    w = numpy_helper.from_array(np.full((1000, 3, 1, 1), 0.01, dtype=np.float32), "W")
    return build(
        [helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
         helper.make_node("Conv", ["pooled", "W"], ["fc6_1"])],
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [batch, 1000, 1, 1])],
        [w],
    )


def simple_like() -> onnx.ModelProto:
    """Triton's "simple" example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, int32 [batch, 16]."""
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])  # noqa: E731
    return build(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        [io("INPUT0"), io("INPUT1")],
        [io("OUTPUT0"), io("OUTPUT1")],
    )


def with_weights(n: int = 4096) -> onnx.ModelProto:
    """y = x + W with a float32 weight of ``n`` elements (big enough to go to external data)."""
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32), "W")
    return build(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [w],
    )


def save(model: onnx.ModelProto, path: Path, *, external_data: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def string_identity() -> onnx.ModelProto:
    """y = Identity(x) on strings, [batch, n]."""
    return identity(("batch", "n"), TensorProto.STRING, name_in="INPUT0", name_out="OUTPUT0")


def string_add() -> onnx.ModelProto:
    """Triton's "simple_string" example in ONNX: strings holding integers, OUTPUT0 = INPUT0 + INPUT1 and
    OUTPUT1 = INPUT0 - INPUT1 (Cast string -> int32 -> string), [batch, 16]."""
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.STRING, ["batch", 16])  # noqa: E731
    return build(
        [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
         helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
         helper.make_node("Add", ["a", "b"], ["s"]),
         helper.make_node("Sub", ["a", "b"], ["d"]),
         helper.make_node("Cast", ["s"], ["OUTPUT0"], to=TensorProto.STRING),
         helper.make_node("Cast", ["d"], ["OUTPUT1"], to=TensorProto.STRING)],
        [io("INPUT0"), io("INPUT1")],
        [io("OUTPUT0"), io("OUTPUT1")],
    )


def accumulator(*, ready: bool = True, corrid: bool = True) -> onnx.ModelProto:
    """Triton's qa implicit-state model: OUTPUT_STATE = INPUT + INPUT_STATE * (READY and not START), OUTPUT = the
    same; with ``corrid`` also CORRID_OUT = CORRID (the CORRID control echoed). int32 [batch, 1]; START int32,
    READY bool, CORRID uint64 controls."""
    i32 = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])  # noqa: E731
    one = numpy_helper.from_array(np.array(1, dtype=np.int32), "one")
    nodes = [helper.make_node("Sub", ["one", "START"], ["keep0"])]
    inputs = [i32("INPUT"), i32("START"), i32("INPUT_STATE")]
    outputs = [i32("OUTPUT"), i32("OUTPUT_STATE")]
    keep = "keep0"
    if ready:
        inputs.append(helper.make_tensor_value_info("READY", TensorProto.BOOL, ["batch", 1]))
        nodes += [helper.make_node("Cast", ["READY"], ["ready_i"], to=TensorProto.INT32),
                  helper.make_node("Mul", ["keep0", "ready_i"], ["keep1"])]
        keep = "keep1"
    nodes += [helper.make_node("Mul", ["INPUT_STATE", keep], ["prev"]),
              helper.make_node("Add", ["INPUT", "prev"], ["OUTPUT_STATE"]),
              helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"])]
    if corrid:
        inputs.append(helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["batch", 1]))
        outputs.append(helper.make_tensor_value_info("CORRID_OUT", TensorProto.UINT64, ["batch", 1]))
        nodes.append(helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]))
    return build(nodes, inputs, outputs, [one])


def add_with_default(n: int = 4) -> onnx.ModelProto:
    """y = x + bias, where ``bias`` is an input with a default (an initializer of the same name): a model whose
    config can declare ``bias`` optional."""
    bias = numpy_helper.from_array(np.full((n,), 10.0, dtype=np.float32), "bias")
    return build(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [bias],
    )


def ragged_last() -> onnx.ModelProto:
    """A model for Triton's ragged batching: INPUT is every request's elements in one 1-D tensor, INDEX the
    accumulated element count per request (a BATCH_ACCUMULATED_ELEMENT_COUNT batch input); OUTPUT [requests, 1]
    is the last element of each request, COUNT [requests, 1] the INDEX the model was given."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int32), "one")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return build(
        [helper.make_node("Sub", ["INDEX", "one"], ["idx"]),
         helper.make_node("Gather", ["INPUT", "idx"], ["last"], axis=0),
         helper.make_node("Unsqueeze", ["last", "axes"], ["OUTPUT"]),
         helper.make_node("Unsqueeze", ["INDEX", "axes"], ["COUNT"])],
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("INDEX", TensorProto.INT32, ["r"])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["r", 1]),
         helper.make_tensor_value_info("COUNT", TensorProto.INT32, ["r", 1])],
        [one, axes],
    )


def running_sum() -> onnx.ModelProto:
    """OUTPUT_STATE = OUTPUT = INPUT + INPUT_STATE, int32 [batch, 1]: no reset on START, so the initial state shows."""
    i32 = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])  # noqa: E731
    return build(
        [helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["OUTPUT_STATE"]),
         helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"])],
        [i32("INPUT"), i32("INPUT_STATE")],
        [i32("OUTPUT"), i32("OUTPUT_STATE")],
    )


def slow(size: int = 2048, steps: int = 24) -> onnx.ModelProto:
    """y [batch, 1] from x [batch, 1] through ``steps`` MatMuls of [size, size] (seconds of CPU per request):
    a request that is still running when the server is told to stop."""
    w = numpy_helper.from_array(np.full((size, size), 1.0 / size, dtype=np.float32), "W")
    shape = numpy_helper.from_array(np.array([size, size], dtype=np.int64), "shape")
    nodes = [helper.make_node("Expand", ["x", "shape"], ["h0"])]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{steps}"], ["m"], keepdims=1))
    nodes.append(helper.make_node("Expand", ["m", "ones"], ["y"]))
    ones = numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "ones")
    return build(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [w, shape, ones],
    )
