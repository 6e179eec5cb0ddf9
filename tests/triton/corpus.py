"""The config corpus (tests/fixtures/triton_config_corpus): each case is a small model repository whose models get
ONNX files generated here, from an optional ``model.json`` or else from the config itself (what the onnxruntime
backend would expect: config inputs, control tensors and state inputs; config outputs and state outputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as mc

from accelserve.triton.config import CONFIG_FILENAME, parse_config_text
from accelserve.triton.core_rules import control_tensors
from accelserve.triton.dtypes import triton_to_onnx

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "triton_config_corpus"
EXPECT_FILE = "expected"

Tensor = tuple[str, str, list[int]]  # name, Triton type without TYPE_ (e.g. "INT32"), ONNX shape (-1: dynamic)


def cases() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_dir())


def expectation(case: Path) -> str | None:
    """None for an accept case, else the reason Triton gives (a substring of the problem message)."""
    text = (case / EXPECT_FILE).read_text().strip()
    return None if text == "accept" else text.removeprefix("reject:").strip()


def _type(name: str) -> int:
    """ONNX element type of a Triton type name; a config without a valid type gets a float tensor in the model."""
    data_type = mc.DataType.Value("TYPE_" + name)
    return triton_to_onnx(data_type if data_type != mc.TYPE_INVALID else mc.TYPE_FP32)


def _derived(config: mc.ModelConfig) -> dict:
    batch = [-1] if config.max_batch_size > 0 else []

    def entry(io: mc.ModelInput | mc.ModelOutput) -> Tensor:
        shape = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        if isinstance(io, mc.ModelInput) and io.allow_ragged_batch:
            return io.name, mc.DataType.Name(io.data_type)[5:], [-1]
        return io.name, mc.DataType.Name(io.data_type)[5:], [*batch, *shape]

    inputs = [entry(i) for i in config.input]
    outputs = [entry(o) for o in config.output]
    for name, data_type in control_tensors(config.sequence_batching).values():
        inputs.append((name, mc.DataType.Name(data_type)[5:], [*batch, 1]))
    for state in config.sequence_batching.state:
        dims = [*batch, *state.dims]
        inputs.append((state.input_name, mc.DataType.Name(state.data_type)[5:], dims))
        outputs.append((state.output_name, mc.DataType.Name(state.data_type)[5:], dims))
    inputs += [(t, mc.DataType.Name(b.data_type)[5:], [-1]) for b in config.batch_input for t in b.target_name]
    return {"inputs": inputs, "outputs": outputs}


def _value_info(t: Tensor) -> onnx.ValueInfoProto:
    name, type_name, shape = t
    return helper.make_tensor_value_info(name, _type(type_name), [f"d{i}" if d == -1 else d
                                                                  for i, d in enumerate(shape)])


def build_model(spec: dict) -> onnx.ModelProto:
    """Outputs are Identity/Cast of an input of the same shape when there is one, else constants of their shape:
    the model declares the I/O the backend checks; it is not meant to compute anything."""
    inputs = [tuple(t) for t in spec["inputs"]]
    outputs = [tuple(t) for t in spec["outputs"]]
    nodes, inits = [], []
    for name, type_name, shape in outputs:
        source = next((i for i in inputs if list(i[2]) == list(shape) and i[0] not in spec.get("overridable", [])),
                      None)
        if source is not None and source[1] == type_name:
            nodes.append(helper.make_node("Identity", [source[0]], [name]))
        elif source is not None:
            nodes.append(helper.make_node("Cast", [source[0]], [name], to=_type(type_name)))
        else:
            value = helper.make_tensor(f"{name}_value", _type(type_name), [max(d, 1) for d in shape],
                                       [b"" if type_name == "STRING" else 0] * int(np.prod([max(d, 1) for d in shape])))
            nodes.append(helper.make_node("Constant", [], [name], value=value))
    for name in spec.get("overridable", []):
        _, type_name, shape = next(i for i in inputs if i[0] == name)
        inits.append(numpy_helper.from_array(np.zeros([max(d, 1) for d in shape],
                                                      dtype=helper.tensor_dtype_to_np_dtype(_type(type_name))), name))
    graph = helper.make_graph(nodes, "corpus", [_value_info(i) for i in inputs], [_value_info(o) for o in outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def install(case: Path, destination: Path) -> Path:
    """Copy a case's repository to ``destination`` and write the ONNX model of every ONNX model directory."""
    shutil.copytree(case, destination, ignore=shutil.ignore_patterns(EXPECT_FILE, "model.json"))
    for model_dir in sorted(p for p in case.iterdir() if p.is_dir()):
        spec_path = model_dir / "model.json"
        config_path = model_dir / CONFIG_FILENAME
        config = parse_config_text(config_path.read_text()) if config_path.is_file() else mc.ModelConfig()
        if config.platform == "ensemble":
            (destination / model_dir.name / "1").mkdir(parents=True, exist_ok=True)
            continue
        spec = json.loads(spec_path.read_text()) if spec_path.is_file() else _derived(config)
        model = build_model(spec)
        for version in spec.get("versions", [1]):
            path = destination / model_dir.name / str(version) / "model.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(model, str(path))
    return destination

