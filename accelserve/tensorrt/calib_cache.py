"""TensorRT's INT8 calibration cache, read and written without TensorRT.

The format (written by TensorRT's calibrators and read by TensorRT and by ONNX Runtime's TensorRT execution
provider with ``trt_int8_use_native_calibration_table``) is plain text:

    TRT-<NV_TENSORRT_VERSION>-<algorithm>          e.g. TRT-8601-EntropyCalibration2
    <tensor name>: <hex>                           one line per tensor

where ``<hex>`` is the IEEE-754 float32 bit pattern of the tensor's *scale* in lower-case hex without leading
zeros (``0`` for a zero scale), and the dynamic range TensorRT uses is ``[-scale*127, +scale*127]``. Tensor names
can contain spaces, parentheses and colons (``(Unnamed Layer* 64) [Shuffle]_output``), so a line is split at its
*last* ``": "``.

accelserve writes the cache from its own calibration statistics (:func:`cache_from_calibration`, the same
statistics and range methods as the ``int8`` pass) or from the activation scales of a Q/DQ model
(:func:`cache_from_qdq_model`), so a TensorRT build (implicit INT8, TensorRT < 10.1) or ONNX Runtime's TensorRT
accelerator in Triton (``int8_calibration_table_name`` + ``int8_use_native_calibration_table``) can use the
ranges accelserve measured.
"""

from __future__ import annotations

import math
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from accelserve.errors import InvalidInputError, OptimizationError
from accelserve.tensorrt.api import version_number

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
#: accelserve's calibration methods -> the TensorRT calibrator whose ranges they correspond to
METHOD_ALGORITHM = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration", "percentile": "LegacyCalibration"}
DEFAULT_TRT_VERSION = "10.0.0"
INT8_MAX = 127.0


@dataclass
class CalibrationCache:
    """A parsed cache: ``scales[tensor] = scale`` (float32), in file order."""

    version: int
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def dynamic_ranges(self) -> dict[str, float]:
        """``amax`` per tensor (``scale * 127``), what TensorRT's ``ITensor.set_dynamic_range`` takes."""
        return {name: scale * INT8_MAX for name, scale in self.scales.items()}

    def text(self) -> str:
        lines = [self.header]
        for name, scale in self.scales.items():
            if "\n" in name:
                raise InvalidInputError(f"tensor name {name!r} contains a newline; TensorRT's cache cannot hold it")
            lines.append(f"{name}: {float_to_hex(scale)}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write atomically (a temporary file in the same directory, then rename)."""
        from accelserve.evaluate.report import atomic_write_bytes

        return atomic_write_bytes(path, self.text().encode())


def float_to_hex(value: float) -> str:
    """The float32 bit pattern of ``value`` in lower-case hex, no leading zeros (``0.0`` -> ``"0"``)."""
    (bits,) = struct.unpack("<I", struct.pack("<f", np.float32(value)))
    return f"{bits:x}"


def hex_to_float(text: str) -> float:
    try:
        bits = int(text, 16)
    except ValueError:
        raise InvalidInputError(f"'{text}' is not a hexadecimal float32 bit pattern") from None
    if not 0 <= bits <= 0xFFFFFFFF:
        raise InvalidInputError(f"'{text}' does not fit in 32 bits")
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def parse_cache(text: str, source: str = "<cache>") -> CalibrationCache:
    """Parse a cache file's text; errors name the line."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise InvalidInputError(f"{source}: not a TensorRT calibration cache (the first line must start with 'TRT-')")
    head = lines[0].split("-", 2)
    if len(head) != 3 or not head[1].isdigit() or not head[2]:
        raise InvalidInputError(f"{source}:1: header '{lines[0]}' is not TRT-<version>-<algorithm>")
    cache = CalibrationCache(version=int(head[1]), algorithm=head[2])
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep or not name:
            raise InvalidInputError(f"{source}:{lineno}: expected '<tensor>: <hex scale>', got '{line}'")
        if name in cache.scales:
            raise InvalidInputError(f"{source}:{lineno}: tensor '{name}' appears twice")
        cache.scales[name] = hex_to_float(value.strip())
    return cache


def read_cache(path: str | Path) -> CalibrationCache:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"calibration cache {path} does not exist") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path} is not a text file, so not a TensorRT calibration cache") from None
    return parse_cache(text, str(path))


def cache_from_ranges(ranges: Mapping[str, tuple[float, float]], *, algorithm: str = "EntropyCalibration2",
                      trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
    """A cache from symmetric-ised ranges: ``scale = max(|lo|, |hi|) / 127`` per tensor (TensorRT's INT8 is
    symmetric)."""
    if algorithm not in ALGORITHMS:
        raise InvalidInputError(f"unknown calibration algorithm '{algorithm}'", hint=f"use one of {ALGORITHMS}")
    cache = CalibrationCache(version=version_number(trt_version), algorithm=algorithm)
    for name, (lo, hi) in ranges.items():
        amax = max(abs(float(lo)), abs(float(hi)))
        if not math.isfinite(amax):
            raise OptimizationError(f"tensor '{name}' has a non-finite calibration range ({lo}, {hi})")
        cache.scales[name] = float(np.float32(amax / INT8_MAX))
    return cache


def cache_from_calibration(model_path: str | Path, calibration, *, method: str = "entropy",  # noqa: ANN001
                           percentile: float = 99.999, trt_version: str = DEFAULT_TRT_VERSION,
                           work_dir: str | Path | None = None) -> CalibrationCache:
    """Collect accelserve's calibration statistics of every activation of the float model ``model_path`` over
    ``calibration`` (a :class:`~accelserve.calibration.CalibrationData`) and turn the ``method`` ranges into a
    cache. Graph inputs are included: TensorRT needs their range too."""
    from accelserve.artifact import ModelArtifact
    from accelserve.onnx_io import load_onnx
    from accelserve.passes.quantize_calibrate import collect_statistics, compute_ranges, default_cache_dir

    if method not in METHOD_ALGORITHM:
        raise InvalidInputError(f"unknown calibration method '{method}'", hint="use entropy, minmax or percentile")
    model = onnx.shape_inference.infer_shapes(load_onnx(model_path))
    sha = ModelArtifact(Path(model_path)).sha256
    with tempfile.TemporaryDirectory(prefix="accelserve-trtcache-", dir=work_dir) as tmp:
        stats = collect_statistics(model, sha, calibration, Path(tmp), cache_dir=default_cache_dir(),
                                   histograms=method != "minmax")
    data = compute_ranges(stats, method, percentile=percentile)
    ranges = {name: (float(np.asarray(td.range_value[0])), float(np.asarray(td.range_value[1])))
              for name, td in data.data.items()}
    return cache_from_ranges(ranges, algorithm=METHOD_ALGORITHM[method], trt_version=trt_version)


def cache_from_qdq_model(model: onnx.ModelProto, *, trt_version: str = DEFAULT_TRT_VERSION) -> CalibrationCache:
    """The activation scales a Q/DQ model already carries: for every QuantizeLinear whose input is an activation
    (not an initializer) and whose zero point is 0 (TensorRT is symmetric), ``scale`` of that input tensor."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold scales too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    cache = CalibrationCache(version=version_number(trt_version), algorithm="EntropyCalibration2")
    asymmetric = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale = inits.get(node.input[1])
        if scale is None or scale.size != 1:
            continue  # per-channel or computed scales belong to weights, not activations
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and np.any(zero.astype(np.int64) != 0):
            asymmetric.append(node.input[0])
            continue
        cache.scales[node.input[0]] = float(np.float32(scale.reshape(())))
    if asymmetric:
        raise OptimizationError(
            f"{len(asymmetric)} activation(s) are quantized with a non-zero zero point (e.g. '{asymmetric[0]}'); "
            "TensorRT's INT8 is symmetric",
            hint="quantize with `accelserve optimize --recipe int8 --target tensorrt` (S8S8, symmetric)",
        )
    if not cache.scales:
        raise OptimizationError("the model has no activation QuantizeLinear nodes with a scalar scale")
    return cache
