"""What the local CPU and ONNX Runtime's integer kernels do, so quantization can pick a layout that is fast and
exact here.

On x86 CPUs without a VNNI dot-product instruction, ONNX Runtime's u8 x s8 GEMM kernels add pairs of 8-bit
products in 16-bit lanes (``vpmaddubsw``), which saturates when both products are large: signed INT8 weights near
+-127 times activations near 255 overflow. ``u8s8_saturates()`` does not guess this from CPU flags: it runs a tiny
``MatMulInteger`` through ONNX Runtime and checks the answer.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8", "f16c")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    machine: str  #: platform.machine(), e.g. x86_64, aarch64
    cores: int  #: cores this process may use
    flags: tuple[str, ...]  #: the instruction-set flags that matter for INT8 kernels, as /proc/cpuinfo names them

    @property
    def x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686")

    @property
    def vnni(self) -> bool:
        return any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags), "vnni": self.vnni}


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    if model == "unknown":
        model = platform.processor() or "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return CpuFeatures(model=model, machine=platform.machine(), cores=cores,
                       flags=tuple(f for f in _FLAGS_OF_INTEREST if f in flags))


def _matmul_integer_model(k: int, constant_b: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    b = np.full((k, 16), 127, dtype=np.int8)
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, k])]
    inits = []
    if constant_b:
        inits.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.INT8, [k, 16]))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8_probe", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """True when ONNX Runtime's u8 x s8 integer GEMM on this CPU saturates (no VNNI path), found by running it."""
    import onnxruntime as ort

    k = 64
    a = np.full((4, k), 255, dtype=np.uint8)
    exact = k * 255 * 127
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    for constant_b in (True, False):
        sess = ort.InferenceSession(_matmul_integer_model(k, constant_b), opts, providers=["CPUExecutionProvider"])
        feed = {"a": a} if constant_b else {"a": a, "b": np.full((k, 16), 127, dtype=np.int8)}
        y = sess.run(None, feed)[0]
        if int(y[0, 0]) != exact:
            return True
    return False


def machine_info() -> dict[str, Any]:
    """What timings and layout choices depend on: CPU, cores, INT8-relevant flags, ONNX Runtime version."""
    import onnxruntime as ort

    info = cpu_features().to_dict()
    info["onnxruntime"] = ort.__version__
    info["u8s8_saturates"] = u8s8_saturates()
    return info
