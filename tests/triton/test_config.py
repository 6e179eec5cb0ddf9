"""Config generation (pure: ONNX model + options -> Triton ModelConfig), text format, and dtype mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from accelserve.errors import InvalidInputError, InvalidModelError, RepositoryError
from accelserve.triton import dtypes
from accelserve.triton.config import (
    DEFAULT_MAX_BATCH_SIZE,
    ConfigParseError,
    TritonModelOptions,
    build_config,
    config_to_text,
    parse_config_text,
    read_config,
    signature_differences,
)
from tests.triton import onnx_builders as ob


def test_dynamic_batch_axis_becomes_max_batch_size_and_is_dropped_from_dims() -> None:
    config = build_config(ob.identity(("batch", 3, "h", 5)), "m")
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime" and config.name == "m"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert list(config.input[0].dims) == [3, -1, 5]
    assert list(config.output[0].dims) == [3, -1, 5]
    assert config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert not config.HasField("optimization") and not config.model_warmup


def test_max_batch_size_zero_keeps_the_dynamic_first_dim_and_disables_batching() -> None:
    config = build_config(ob.identity(("batch", 4)), "m", TritonModelOptions(max_batch_size=0))
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 4]
    assert not config.HasField("dynamic_batching")


def test_model_without_batch_axis_gets_max_batch_size_zero_and_full_dims() -> None:
    config = build_config(ob.identity((2, 4)), "m")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 4]
    assert not config.HasField("dynamic_batching")


def test_asking_for_batching_without_a_dynamic_batch_axis_names_the_tensors() -> None:
    model = ob.identity(("batch", 4), out_shape=(1, 4))  # the output's first dim is fixed
    with pytest.raises(InvalidInputError, match=r"y \[1, 4\]") as err:
        build_config(model, "m", TritonModelOptions(max_batch_size=8))
    assert "--max-batch-size 0" in (err.value.hint or "")


def test_batch_only_tensor_uses_dims_1_with_empty_reshape() -> None:
    config = build_config(ob.identity(("batch",)), "m")
    assert list(config.input[0].dims) == [1]
    assert config.input[0].HasField("reshape") and list(config.input[0].reshape.shape) == []


def test_scalar_without_batching_is_rejected() -> None:
    with pytest.raises(InvalidModelError, match="scalar"):
        build_config(ob.identity(()), "m")


@pytest.mark.parametrize(
    ("elem_type", "triton_type"),
    [(TensorProto.FLOAT, mc.TYPE_FP32), (TensorProto.INT64, mc.TYPE_INT64), (TensorProto.FLOAT16, mc.TYPE_FP16),
     (TensorProto.BOOL, mc.TYPE_BOOL), (TensorProto.STRING, mc.TYPE_STRING), (TensorProto.UINT8, mc.TYPE_UINT8)],
)
def test_onnx_types_map_to_triton_types(elem_type: int, triton_type: int) -> None:
    config = build_config(ob.identity(("batch", 2), elem_type), "m")
    assert config.input[0].data_type == triton_type == config.output[0].data_type


def test_unservable_type_is_a_model_error() -> None:
    with pytest.raises(InvalidModelError, match="COMPLEX64"):
        build_config(ob.identity(("batch", 2), TensorProto.COMPLEX64), "m")


def test_initializers_listed_as_graph_inputs_are_not_config_inputs() -> None:
    model = ob.with_weights(8)
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [8]))
    config = build_config(model, "m")
    assert [i.name for i in config.input] == ["x"]


def test_missing_output_shape_is_inferred_and_missing_input_shape_is_an_error() -> None:
    model = ob.identity(("batch", 4))
    model.graph.output[0].type.tensor_type.ClearField("shape")
    assert list(build_config(model, "m").output[0].dims) == [4]
    model = ob.identity(("batch", 4))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(InvalidModelError, match="input 'x' has no shape"):
        build_config(model, "m")


def test_dynamic_batching_options() -> None:
    options = TritonModelOptions(max_batch_size=16, preferred_batch_sizes=(8, 4, 8), max_queue_delay_us=250,
                                 instances=3, instance_kind="gpu")
    config = build_config(ob.identity(), "m", options)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (3, mc.ModelInstanceGroup.KIND_GPU)
    assert not build_config(ob.identity(), "m", TritonModelOptions(dynamic_batching=False)).HasField("dynamic_batching")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TritonModelOptions(max_batch_size=4, preferred_batch_sizes=(8,)), "exceed the max batch size 4"),
        (TritonModelOptions(max_batch_size=0, dynamic_batching=True), "needs max_batch_size > 0"),
        (TritonModelOptions(dynamic_batching=False, preferred_batch_sizes=(2,)), "turned off"),
        (TritonModelOptions(max_batch_size=0, max_queue_delay_us=10), "needs max_batch_size > 0"),
        (TritonModelOptions(instances=0), "instance count"),
        (TritonModelOptions(max_batch_size=-1), "max batch size"),
        (TritonModelOptions(precision="fp16"), "only apply to the TensorRT accelerator"),
        (TritonModelOptions(accelerator="tensorrt", instance_kind="cpu"), "GPU instances"),
        (TritonModelOptions(accelerator="tensorrt", trt_engine_cache="cache"), "not an absolute path"),
        (TritonModelOptions(accelerator="tensorrt", workspace_bytes=0), "workspace"),
    ],
)
def test_contradictory_options_are_user_errors(options: TritonModelOptions, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        build_config(ob.identity(), "m", options)


def test_warmup_random_and_zero_at_batch_1_with_dynamic_dims_at_1() -> None:
    model = ob.build(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["t"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 3]),
         helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3]),
         helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 2])],
    )
    (warmup,) = build_config(model, "m", TritonModelOptions(warmup="random")).model_warmup
    assert warmup.batch_size == 1
    assert list(warmup.inputs["x"].dims) == [1, 3] and warmup.inputs["x"].random_data
    assert warmup.inputs["x"].data_type == mc.TYPE_FP32
    assert warmup.inputs["s"].zero_data  # Triton has no random strings: zero data instead
    (zero,) = build_config(model, "m", TritonModelOptions(warmup="zero")).model_warmup
    assert zero.inputs["x"].zero_data and not zero.inputs["x"].random_data


def _trt_parameters(config: mc.ModelConfig) -> dict[str, str]:
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt"
    return dict(accel.parameters)


def test_tensorrt_fp16_with_workspace_and_engine_cache(tmp_path: Path) -> None:
    options = TritonModelOptions(accelerator="tensorrt", precision="fp16", workspace_bytes=1 << 30,
                                 trt_engine_cache=str(tmp_path))
    config = build_config(ob.identity(), "m", options)
    assert _trt_parameters(config) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": str(tmp_path),
    }
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU  # TensorRT runs on GPU instances


def test_tensorrt_int8_needs_a_qdq_model() -> None:
    options = TritonModelOptions(accelerator="tensorrt", precision="int8")
    with pytest.raises(InvalidModelError, match="QuantizeLinear") as err:
        build_config(ob.identity(), "m", options)
    assert "accelserve optimize --recipe int8 --target tensorrt" in (err.value.hint or "")
    assert _trt_parameters(build_config(ob.qdq(), "m", options)) == {"precision_mode": "INT8"}


def test_text_round_trip_through_triton_protobuf() -> None:
    options = TritonModelOptions(warmup="random", preferred_batch_sizes=(2, 4), accelerator="tensorrt",
                                 precision="fp16")
    config = build_config(ob.identity(("batch", 3, "w")), "m", options)
    text = config_to_text(config)
    assert parse_config_text(text) == config
    assert "dims: [3, -1]" in text  # the short repeated form Triton's own examples use


def test_misspelled_field_reports_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_sise: 8\n')
    with pytest.raises(ConfigParseError) as err:
        read_config(path)
    assert (err.value.line, err.value.column) == (3, 1)
    assert "max_batch_sise" in err.value.detail
    assert 'did you mean "max_batch_size"' in err.value.detail
    assert str(err.value).startswith(f"{path}:3:1:")


def test_read_config_of_a_missing_file_is_a_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        read_config(tmp_path / "nope")


def test_signature_differences_ignore_serving_options_but_not_io() -> None:
    base = build_config(ob.identity(("batch", 4)), "m")
    tuned = build_config(ob.identity(("batch", 4)), "m", TritonModelOptions(max_batch_size=4, instances=2))
    assert signature_differences(base, tuned) == []
    changed = build_config(ob.identity(("batch", 5), name_out="z"), "m")
    diffs = signature_differences(base, changed)
    assert any("input 'x'" in d and "[4]" in d and "[5]" in d for d in diffs)
    assert any("output 'y' removed" in d for d in diffs) and any("output 'z' added" in d for d in diffs)
    unbatched = build_config(ob.identity(("batch", 4)), "m", TritonModelOptions(max_batch_size=0))
    assert any("batching" in d for d in signature_differences(base, unbatched))


# --------------------------------------------------------------------------------------------------------------
# dtypes


SERVABLE = [t for t in TensorProto.DataType.values() if t in dtypes._ONNX_TO_TRITON]  # noqa: SLF001


@pytest.mark.parametrize("elem_type", SERVABLE, ids=lambda t: TensorProto.DataType.Name(t))
def test_dtype_round_trips(elem_type: int) -> None:
    triton = dtypes.onnx_to_triton(elem_type)
    assert dtypes.triton_to_onnx(triton) == elem_type
    np_dtype = dtypes.triton_to_numpy(triton)
    assert np_dtype == dtypes.onnx_to_numpy(elem_type)
    assert dtypes.numpy_to_triton(np_dtype) == triton
    wire = dtypes.triton_to_wire(triton)
    assert dtypes.wire_to_triton(wire) == triton
    assert np_to_triton_dtype(np_dtype) == wire  # agrees with tritonclient's own wire mapping


def test_dtype_names_and_errors() -> None:
    assert dtypes.triton_type_from_name("TYPE_FP16") == mc.TYPE_FP16 == dtypes.triton_type_from_name("fp16")
    assert dtypes.numpy_to_triton(np.dtype("S5")) == mc.TYPE_STRING
    with pytest.raises(InvalidInputError, match="unknown Triton data type"):
        dtypes.triton_type_from_name("TYPE_FP128")
    with pytest.raises(InvalidInputError, match="no Triton equivalent"):
        dtypes.numpy_to_triton(np.complex64)
