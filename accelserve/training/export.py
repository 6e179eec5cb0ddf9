"""From a trained (compressed) torch model to an ONNX model the rest of accelserve takes unchanged.

* Pruned / distilled models are exported with accelserve's torch exporter (verified against torch).
* QAT models: the float layers with their fine-tuned weights are exported, then quantized by the ``int8`` pass in
  the target's layout (``simplify,int8``, minmax ranges over the calibration inputs, the weights' max|w| scales
  that the training simulated). The activation ranges the training used (calibrated, then EMA-updated or learned)
  are then written into the Q/DQ model in place of the recalibrated ones: the input of every Conv/Gemm/MatMul and,
  for ``ort-cpu``, the last layer's output (biases re-quantized to int32 at input scale x weight scale, as ONNX
  Runtime's fused kernels read them). Other quantized tensors (e.g. residual adds) keep the calibrated ranges.
  Finally the Q/DQ model is verified against the fake-quant torch model: top-1 agreement and the largest output
  difference on the held-out inputs.

Then the evaluation harness compares the exported original (FP32) with the result on the held-out data and labels,
so the report has the same format as ``accelserve evaluate``.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelserve._lazy import require
from accelserve.errors import VerificationError
from accelserve.training.data import TrainingData, split_batch

#: the Q/DQ model must give the fake-quant model's class on at least this share of held-out samples
MIN_QAT_AGREEMENT = 0.98


@dataclass
class QATVerification:
    agreement: float  #: top-1 agreement of the ONNX Q/DQ model with the fake-quant torch model
    max_abs_diff: float
    samples: int
    ranges_transferred: int = 0  #: activation ranges taken from the training (0: the calibrated ones kept)

    def to_dict(self) -> dict[str, float | int]:
        return {"agreement": self.agreement, "max_abs_diff": self.max_abs_diff, "samples": self.samples,
                "ranges_transferred": self.ranges_transferred}


def eval_arrays(data: TrainingData, input_names: list[str]) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The held-out data as ONNX feeds (one per batch) and the labels, aligned."""
    feeds, labels = [], []
    for batch in data.eval:
        inputs, y = split_batch(batch)
        feeds.append({n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)})
        labels.append(y.detach().cpu().numpy())
    return feeds, np.concatenate(labels)


def export_float(model: Any, path: Path, data: TrainingData, input_names: list[str]) -> Path:
    from accelserve.exporters.torch_exporter import export_torch

    inputs, _ = next(split_batch(b) for b in data.eval)
    sample = {n: t[:4].detach().cpu().numpy() for n, t in zip(input_names, inputs)}
    export_torch(copy.deepcopy(model).eval(), sample, path)
    return path


def export_qat(qat_model: Any, scheme: Any, output: Path, data: TrainingData, input_names: list[str], *,
               work_dir: Path) -> QATVerification:
    """Export the fine-tuned float weights, quantize them in the target's layout, verify against fake quant."""
    from accelserve.optimize import optimize
    from accelserve.training.fake_quant import strip_qat

    float_path = export_float(strip_qat(copy.deepcopy(qat_model)), work_dir / "qat_float.onnx", data, input_names)
    feeds = [{n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)}
             for inputs in data.calibration_inputs()]
    optimize(float_path, ["simplify", "int8"], output,
             {"target": scheme.target, "reduce_range": scheme.reduce_range, "method": "minmax",
              "per_channel": scheme.per_channel},
             calibration=lambda: feeds, evaluate=False, work_dir=work_dir)
    transferred = transfer_ranges(output, qat_model)
    result = verify_qat(qat_model, output, data, input_names)
    result.ranges_transferred = transferred
    return result


_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def transfer_ranges(path: Path, qat_model: Any) -> int:
    """Write the fake-quant model's activation ranges into the Q/DQ model at ``path`` (in place); returns how many
    tensors were set, 0 when the graph's compute nodes do not line up with the quantized layers one to one (the
    calibrated ranges are then kept and the verification judges them)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    wrappers = [m for m in qat_model.modules() if hasattr(m, "input_quant") and hasattr(m, "layer")]
    compute = [n for n in graph.node if n.op_type in _COMPUTE]

    def dq(tensor: str) -> Any:
        node = producers.get(tensor)
        ok = node is not None and node.op_type == "DequantizeLinear" and all(i in inits for i in node.input[1:3])
        return node if ok else None

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def put(name: str, value: np.ndarray) -> None:
        old = array(name)
        inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value).astype(old.dtype).reshape(old.shape), name))

    plan = []
    if len(compute) != len(wrappers):
        return 0
    for node, wrapper in zip(compute, wrappers):
        dq_x, dq_w = dq(node.input[0]), dq(node.input[1])
        if dq_x is None or dq_w is None or dq_w.input[0] not in inits:
            return 0
        if tuple(inits[dq_w.input[0]].dims) != tuple(wrapper.layer.weight.shape):
            return 0
        plan.append((node, wrapper, dq_x, dq_w))
    count = 0
    for node, wrapper, dq_x, dq_w in plan:
        scale, zero, _, _ = (t.detach() if hasattr(t, "detach") else t for t in wrapper.input_quant.qparams())
        put(dq_x.input[1], np.float32(float(scale)))
        put(dq_x.input[2], np.asarray(int(zero)))
        count += 1
        dq_b = dq(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if dq_b is not None and dq_b.input[0] in inits and array(dq_b.input[0]).dtype == np.int32:
            bias = array(dq_b.input[0]).astype(np.float64) * array(dq_b.input[1]).astype(np.float64)
            bias_scale = (float(scale) * array(dq_w.input[1]).astype(np.float64)).astype(np.float32)
            info = np.iinfo(np.int32)
            put(dq_b.input[0], np.clip(np.round(bias / bias_scale), info.min, info.max).astype(np.int32))
            put(dq_b.input[1], bias_scale)
    last, out_quant = plan[-1][0], plan[-1][1].output_quant
    if out_quant is not None:
        q = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == last.output[0]), None)
        if q is not None and all(i in inits for i in q.input[1:3]):
            scale, zero, _, _ = (t.detach() if hasattr(t, "detach") else t for t in out_quant.qparams())
            put(q.input[1], np.float32(float(scale)))
            put(q.input[2], np.asarray(int(zero)))
            count += 1
    onnx.save(model, str(path))
    return count


def verify_qat(qat_model: Any, onnx_path: Path, data: TrainingData, input_names: list[str]) -> QATVerification:
    torch = require("torch", "verifying a QAT export")
    from accelserve.evaluate import run_model

    feeds, _ = eval_arrays(data, input_names)
    qat_model.eval()
    with torch.no_grad():
        expected = [qat_model(*(torch.from_numpy(f[n]) for n in input_names)).numpy() for f in feeds]
    got = [next(iter(o.values())) for o in run_model(onnx_path, feeds)]
    exp, act = np.concatenate(expected), np.concatenate(got)
    result = QATVerification(float(np.mean(exp.argmax(-1) == act.argmax(-1))), float(np.abs(exp - act).max()),
                             int(exp.shape[0]))
    if result.agreement < MIN_QAT_AGREEMENT:
        raise VerificationError(
            f"the INT8 ONNX model agrees with the fake-quant torch model on only {100 * result.agreement:.1f}% of "
            f"{result.samples} held-out samples (need {100 * MIN_QAT_AGREEMENT:.0f}%): the export does not quantize "
            "the way training simulated", hint="check the target/reduce_range, or report this as a bug")
    return result


def evaluation_report(base_onnx: Path, candidate_onnx: Path, data: TrainingData, input_names: list[str], *,
                      speed: bool = True, batch_sizes: tuple[int, ...] = (1,)) -> Any:
    """The evaluation harness's report: candidate vs the exported original on held-out data and labels."""
    from accelserve.evaluate import evaluate_models

    feeds, labels = eval_arrays(data, input_names)
    return evaluate_models(base_onnx, [candidate_onnx], feeds, labels=labels, batch_sizes=batch_sizes, speed=speed,
                           memory=False)


def temporary_work_dir(output: Path) -> tempfile.TemporaryDirectory:
    output.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=".accelserve-train-", dir=output.parent)
