"""The TensorRT accelerator of Triton's onnxruntime backend: every documented parameter, checked by name and type.

``optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" parameters {...} }] } }``
— the backend maps each key to an ONNX Runtime TensorRT execution-provider option (onnxruntime_backend README,
"Parameter mapping between ONNX Runtime and Triton ONNXRuntime Backend"). A misspelled key is ignored by the
backend without a word, so accelserve rejects it with a "did you mean".
"""

from __future__ import annotations

import difflib
from typing import Mapping

from accelserve.errors import InvalidInputError

PRECISION_MODES = ("FP32", "FP16", "INT8")
#: key -> value kind: int, bool, string, precision, shapes ("name:AxB,name2:CxD")
TRT_PARAMETERS: dict[str, str] = {
    "precision_mode": "precision",
    "max_workspace_size_bytes": "int",
    "int8_calibration_table_name": "string",
    "int8_use_native_calibration_table": "bool",
    "trt_max_partition_iterations": "int",
    "trt_min_subgraph_size": "int",
    "trt_dla_enable": "bool",
    "trt_dla_core": "int",
    "trt_engine_cache_enable": "bool",
    "trt_engine_cache_path": "string",
    "trt_engine_cache_prefix": "string",
    "trt_dump_subgraphs": "bool",
    "trt_force_sequential_engine_build": "bool",
    "trt_context_memory_sharing_enable": "bool",
    "trt_layer_norm_fp32_fallback": "bool",
    "trt_timing_cache_enable": "bool",
    "trt_timing_cache_path": "string",
    "trt_force_timing_cache": "bool",
    "trt_detailed_build_log": "bool",
    "trt_build_heuristics_enable": "bool",
    "trt_sparsity_enable": "bool",
    "trt_builder_optimization_level": "int",
    "trt_auxiliary_streams": "int",
    "trt_tactic_sources": "string",
    "trt_extra_plugin_lib_paths": "string",
    "trt_profile_min_shapes": "shapes",
    "trt_profile_max_shapes": "shapes",
    "trt_profile_opt_shapes": "shapes",
    "trt_cuda_graph_enable": "bool",
    "trt_dump_ep_context_model": "bool",
    "trt_ep_context_file_path": "string",
    "trt_ep_context_embed_mode": "int",
}
GPU_ACCELERATORS = ("tensorrt", "cuda")
CPU_ACCELERATORS = ("openvino",)
_BOOLS = ("0", "1", "true", "false")


def _value_problem(key: str, kind: str, value: str) -> str | None:
    if kind == "int":
        try:
            number = int(value)
        except ValueError:
            return f"'{key}' must be an integer, got '{value}'"
        if number < 0 and key != "trt_auxiliary_streams":
            return f"'{key}' must be >= 0, got {number}"
        if key == "trt_builder_optimization_level" and number > 5:
            return f"'{key}' must be in 0..5, got {number}"
    elif kind == "bool" and value.lower() not in _BOOLS:
        return f"'{key}' must be one of {', '.join(_BOOLS)}, got '{value}'"
    elif kind == "precision" and value not in PRECISION_MODES:
        return f"'{key}' must be one of {', '.join(PRECISION_MODES)}, got '{value}'"
    elif kind == "shapes":
        for part in value.split(","):
            name, sep, dims = part.rpartition(":")
            if not sep or not name or not all(d.isdigit() and int(d) > 0 for d in dims.split("x")):
                return f"'{key}' must look like 'input1:1x3x224x224,input2:1x16', got '{value}'"
    return None


def trt_parameter_problems(params: Mapping[str, str]) -> list[str]:
    """Every unknown key (with a suggestion) and badly typed value of a TensorRT accelerator's parameters."""
    out = []
    for key, value in params.items():
        kind = TRT_PARAMETERS.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, TRT_PARAMETERS, n=1, cutoff=0.6)
            out.append(f"unknown TensorRT accelerator parameter '{key}'"
                       + (f" (did you mean '{close[0]}'?)" if close else "")
                       + "; the onnxruntime backend ignores unknown keys")
            continue
        problem = _value_problem(key, kind, str(value))
        if problem:
            out.append(problem)
    if params.get("precision_mode") == "INT8" and params.get("int8_use_native_calibration_table", "0").lower() in (
            "1", "true") and "int8_calibration_table_name" not in params:
        out.append("'int8_use_native_calibration_table' is on but no 'int8_calibration_table_name' is given")
    shapes = [k for k in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes") if k in params]
    if shapes and len(shapes) != 3:
        out.append("TensorRT profile shapes need all three of trt_profile_min_shapes, trt_profile_opt_shapes and "
                   "trt_profile_max_shapes")
    return out


def accelerator_problems(config) -> list[str]:  # noqa: ANN001 - model_config_pb2.ModelConfig
    """Problems of a config's ``optimization.execution_accelerators`` section."""
    if not config.HasField("optimization"):
        return []
    accelerators = config.optimization.execution_accelerators
    out = []
    for kind, entries, known in (("gpu", accelerators.gpu_execution_accelerator, GPU_ACCELERATORS),
                                 ("cpu", accelerators.cpu_execution_accelerator, CPU_ACCELERATORS)):
        for accel in entries:
            if accel.name not in known:
                out.append(f"unknown {kind}_execution_accelerator '{accel.name}' (known: {', '.join(known)})")
            elif accel.name == "tensorrt":
                out += trt_parameter_problems(dict(accel.parameters))
    return out


def parse_trt_options(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` strings (the ``--trt-option`` flag) into a checked dict."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--trt-option '{item}' is not KEY=VALUE")
        params[key.strip()] = value.strip()
    problems = trt_parameter_problems(params)
    if problems:
        raise InvalidInputError("; ".join(problems))
    return params
