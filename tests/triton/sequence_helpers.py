"""Repositories with string and sequence (implicit-state) ONNX models, written as a user would for Triton."""

from __future__ import annotations

from pathlib import Path

from tests.triton import onnx_builders as ob


def _write(repo: Path, name: str, model, config: str) -> Path:  # noqa: ANN001 - onnx.ModelProto
    ob.save(model, repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(config, encoding="utf-8")
    return repo / name / "1" / "model.onnx"


def accumulator_config(name: str, *, strategy: str = "direct", ready: bool = True, corrid: bool = True,
                       max_batch_size: int = 8, instances: int = 1, idle_us: int = 5_000_000) -> str:
    controls = ['{ name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }']
    if ready:
        controls.append(
            '{ name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] }')
    if corrid:
        controls.append('{ name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }')
    outputs = ['{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }']
    if corrid:
        outputs.append('{ name: "CORRID_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }')
    scheduling = "direct { max_queue_delay_microseconds: 20000 }" if strategy == "direct" else \
        "oldest { max_candidate_sequences: 8 max_queue_delay_microseconds: 20000 }"
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {", ".join(outputs)} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {scheduling}
  control_input [ {", ".join(controls)} ]
  state [ {{ input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state: {{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }} }} ]
}}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
"""


def add_accumulator(repo: Path, name: str, **kwargs) -> Path:  # noqa: ANN003
    model = ob.accumulator(ready=kwargs.get("ready", True), corrid=kwargs.get("corrid", True))
    return _write(repo, name, model, accumulator_config(name, **kwargs))


def add_string_models(repo: Path) -> dict[str, Path]:
    """``strings`` (Identity on [batch, n] strings) and ``simple_string`` (Triton's example: integers as strings)."""
    return {
        "strings": _write(repo, "strings", ob.string_identity(), """name: "strings"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""),
        "simple_string": _write(repo, "simple_string", ob.string_add(), """name: "simple_string"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
"""),
    }
