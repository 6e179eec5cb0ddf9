"""A model repository with the I/O contract of Triton's own example repository (triton-inference-server/server
``docs/examples/model_repository``): the models Triton's Python example clients call, with the same names, dtypes,
shapes, sequence controls and answers. Everything here is written for accelserve (tiny onnx.helper graphs, configs
and a python identity model); nothing is copied from Triton's repositories.

- ``simple``: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [16], max_batch_size 8
- ``simple_int8``: the same on INT8
- ``simple_string``: the same on numbers written as strings (TYPE_STRING [16])
- ``simple_identity``: python backend, OUTPUT0 = INPUT0, TYPE_STRING [-1]
- ``simple_sequence``: direct sequence batching, START/READY int32 controls; OUTPUT = (INPUT + START) * READY
- ``simple_dyna_sequence``: oldest strategy, two instances, START/END/READY int32 and a UINT64 CORRID control;
  OUTPUT = (INPUT + START + END * CORRID) * READY
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.triton import onnx_builders as ob

MODELS = ("simple", "simple_int8", "simple_string", "simple_identity", "simple_sequence", "simple_dyna_sequence")

_TYPES = {TensorProto.INT32: "TYPE_INT32", TensorProto.INT8: "TYPE_INT8", TensorProto.STRING: "TYPE_STRING"}

IDENTITY_MODEL = '''\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers each request with its INPUT0 as OUTPUT0."""

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(
            request, "INPUT0").as_numpy())]) for request in requests]
'''


def add_sub(elem_type: int) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 on [batch, 16]; strings and int8 are computed in int32
    and cast back (int8 wraps around, as Triton's example model does)."""
    io = lambda name: helper.make_tensor_value_info(name, elem_type, ["batch", 16])  # noqa: E731
    nodes = [helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
             helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Sub", ["a", "b"], ["d"]),
             helper.make_node("Cast", ["s"], ["OUTPUT0"], to=elem_type),
             helper.make_node("Cast", ["d"], ["OUTPUT1"], to=elem_type)]
    return ob.build(nodes, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")])


def sequence(*, dyna: bool) -> onnx.ModelProto:
    """OUTPUT = (INPUT + START) * READY, with ``dyna`` + END * CORRID inside the brackets; int32 [batch, 1]."""
    i32 = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])  # noqa: E731
    inputs = [i32("INPUT"), i32("START"), i32("READY")]
    nodes = [helper.make_node("Add", ["INPUT", "START"], ["sum"])]
    if dyna:
        inputs += [i32("END"), helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["batch", 1])]
        nodes = [*nodes,
                 helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
                 helper.make_node("Mul", ["END", "corrid"], ["last"]),
                 helper.make_node("Add", ["sum", "last"], ["total"])]
    nodes.append(helper.make_node("Mul", ["total" if dyna else "sum", "READY"], ["OUTPUT"]))
    return ob.build(nodes, inputs, [i32("OUTPUT")])


def _io(kind: str, names: tuple[str, ...], triton_type: str, dims: str) -> str:
    entries = ", ".join(f'{{ name: "{n}" data_type: {triton_type} dims: [ {dims} ] }}' for n in names)
    return f"{kind} [ {entries} ]\n"


def _control(name: str, kind: str) -> str:
    spec = "data_type: TYPE_UINT64" if kind == "CORRID" else "int32_false_true: [ 0, 1 ]"
    return f'{{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{kind} {spec} }} ] }}'


def write(root: Path) -> Path:
    """Write the repository under ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    for name, elem_type in (("simple", TensorProto.INT32), ("simple_int8", TensorProto.INT8),
                            ("simple_string", TensorProto.STRING)):
        ob.save(add_sub(elem_type), root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            + _io("input", ("INPUT0", "INPUT1"), _TYPES[elem_type], "16")
            + _io("output", ("OUTPUT0", "OUTPUT1"), _TYPES[elem_type], "16"))
    (root / "simple_identity" / "1").mkdir(parents=True, exist_ok=True)
    (root / "simple_identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    (root / "simple_identity" / "config.pbtxt").write_text(
        'name: "simple_identity"\nbackend: "python"\nmax_batch_size: 8\n'
        + _io("input", ("INPUT0",), "TYPE_STRING", "-1") + _io("output", ("OUTPUT0",), "TYPE_STRING", "-1"))
    seq_io = _io("input", ("INPUT",), "TYPE_INT32", "1") + _io("output", ("OUTPUT",), "TYPE_INT32", "1")
    ob.save(sequence(dyna=False), root / "simple_sequence" / "1" / "model.onnx")
    (root / "simple_sequence" / "config.pbtxt").write_text(
        'name: "simple_sequence"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f'sequence_batching {{ control_input [ {_control("START", "START")}, {_control("READY", "READY")} ] }}\n'
        + seq_io + "instance_group [ { kind: KIND_CPU } ]\n")
    ob.save(sequence(dyna=True), root / "simple_dyna_sequence" / "1" / "model.onnx")
    controls = ", ".join(_control(k, k) for k in ("START", "END", "READY", "CORRID"))
    (root / "simple_dyna_sequence" / "config.pbtxt").write_text(
        'name: "simple_dyna_sequence"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "sequence_batching { max_sequence_idle_microseconds: 10000000\n"
        "  oldest { max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }\n"
        f"  control_input [ {controls} ] }}\n"
        + seq_io + 'parameters [ { key: "execute_delay_ms" value: { string_value: "3" } } ]\n'
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n")
    return root
