"""Where Q/DQ goes and in which integer types, per deployment target.

* ``ort-cpu``: ONNX Runtime's CPU kernels are fastest with UINT8 (asymmetric) activations and INT8 (symmetric,
  per-channel) weights -- "U8S8". On x86 CPUs without VNNI those kernels saturate (``quantize_cpu``), so weights
  are quantized to 7 bits (``reduce_range``) there unless told otherwise.
* ``tensorrt``: symmetric INT8 activations and weights (zero point 0), the only form TensorRT's explicit
  quantization accepts; Q/DQ on the inputs of weighted ops and on residual Adds, not on their outputs, and ReLU kept
  (TensorRT's own Q/DQ placement guidance).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx

from accelserve.errors import OptimizationError
from accelserve.passes.quantize_cpu import cpu_features, u8s8_saturates

Target = Literal["ort-cpu", "tensorrt"]

#: ops whose compute Q/DQ makes faster; what every layout quantizes
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ops that ONNX Runtime's CPU EP runs in INT8 between quantized compute ops (QLinearAdd, QLinearGlobalAveragePool,
#: int8 MaxPool/AveragePool/Concat...). Keeping them quantized avoids DQ->float->Q round trips and lets ORT keep
#: a whole conv chain in INT8 NHWC.
#: Not Softmax/Where: ORT has no fast int8 path for them here and 8-bit softmax outputs cost transformers accuracy.
ORT_CPU_OPS = (*COMPUTE_OPS, "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Relu", "Clip",
               "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Gather", "Pad",
               "Sigmoid", "LeakyRelu")
TENSORRT_OPS = (*COMPUTE_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat")

#: op types that only appear in already-quantized models
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
    "ConvInteger", "QLinearAdd", "QLinearMul", "QAttention", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm",
    "MatMulIntegerToFloat", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
})


@dataclass(frozen=True)
class QuantLayout:
    target: str
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["uint8", "int8"]
    activation_symmetric: bool
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...]
    extra_options: dict[str, Any] = field(default_factory=dict)  #: ONNX Runtime quantizer options, set here only
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        d["reasons"] = list(self.reasons)
        return d

    @property
    def name(self) -> str:
        a = "U8" if self.activation_type == "uint8" else "S8"
        w = "U8" if self.weight_type == "uint8" else "S8"
        return f"{a}{w}{' reduce_range' if self.reduce_range else ''}{' per-channel' if self.per_channel else ''}"


def choose_layout(
    target: Target,
    *,
    per_channel: bool = True,
    reduce_range: bool | Literal["auto"] = "auto",
    activation_type: Literal["auto", "uint8", "int8", "int8-asymmetric"] = "auto",
    op_types: list[str] | None = None,
) -> QuantLayout:
    reasons: list[str] = []
    if target == "tensorrt":
        if activation_type in ("uint8", "int8-asymmetric"):
            raise OptimizationError(f"TensorRT's explicit quantization takes symmetric signed INT8 only; "
                                    f"{activation_type} activations are not accepted",
                                    hint="drop activation_type or use --target ort-cpu")
        reasons.append("tensorrt: symmetric INT8 activations and weights (TensorRT explicit quantization)")
        return QuantLayout(
            target=target, activation_type="int8", weight_type="int8", activation_symmetric=True,
            per_channel=per_channel, reduce_range=bool(reduce_range is True), op_types=tuple(op_types or TENSORRT_OPS),
            extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True,
                "OpTypesToExcludeOutputQuantization": list(COMPUTE_OPS),
                "QDQKeepRemovableActivations": True,
            },
            reasons=tuple(reasons),
        )
    if target != "ort-cpu":
        raise OptimizationError(f"unknown quantization target '{target}'", hint="use ort-cpu or tensorrt")
    cpu = cpu_features()
    act = activation_type
    if act == "auto":
        if cpu.x86:
            act = "uint8"
            reasons.append("ort-cpu on x86: UINT8 activations x INT8 weights (U8S8), ONNX Runtime's fast CPU path")
        else:
            act = "int8"
            reasons.append(f"ort-cpu on {cpu.machine}: symmetric INT8 activations (S8S8), ONNX Runtime's ARM guidance")
    symmetric = act == "int8"
    if act == "int8-asymmetric":  # ONNX Runtime's own quantize_static default (S8S8 with activation zero points)
        act = "int8"
        reasons.append("INT8 activations with zero points (S8S8 asymmetric, ONNX Runtime's quantize_static default)")
    rr = reduce_range
    if rr == "auto":
        saturates = act == "uint8" and cpu.x86 and u8s8_saturates()
        rr = saturates
        reasons.append(
            "u8 x s8 kernels saturate on this CPU (no VNNI): weights reduced to 7 bits (reduce_range)" if saturates
            else "u8 x s8 kernels do not saturate here (probe): full 8-bit weights"
        )
    return QuantLayout(
        target=target, activation_type=act, weight_type="int8", activation_symmetric=symmetric,
        per_channel=per_channel, reduce_range=bool(rr), op_types=tuple(op_types or ORT_CPU_OPS),
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        reasons=tuple(reasons),
    )


def sort_topologically(model: onnx.ModelProto) -> None:
    """Reorder the main graph's nodes so every node comes after the producers of its inputs (in place).

    ONNX Runtime's quantizers append Q/DQ nodes at the end of the node list; ONNX Runtime loads that, but the ONNX
    checker (and tools that follow it) require topological order."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        needed = {producer[x] for x in node.input if x not in available and x in producer}
        deps.append(needed)
        for d in needed:
            users.setdefault(d, []).append(i)
    ready = [i for i, d in enumerate(deps) if not d]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            deps[u].discard(i)
            if not deps[u]:
                ready.append(u)
    if len(order) != len(nodes):
        from accelserve.errors import InternalError

        raise InternalError("the quantized graph has a cycle; cannot sort it")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)


def refuse_quantized(model: onnx.ModelProto) -> None:
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise OptimizationError(
            f"the model is already quantized (it has {', '.join(found)} nodes); quantizing it again is not supported",
            hint="quantize the float model instead",
        )


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (``<op>_<index>``) so nodes can be excluded by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv/ConvTranspose/Gemm/MatMul nodes in graph (topological) order."""
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def nodes_to_keep_float(model: onnx.ModelProto, *, exclude_nodes: list[str], exclude_op_types: list[str],
                        keep_first: int, keep_last: int) -> tuple[list[str], dict[str, str]]:
    """Names of nodes to leave in float, and why each is left."""
    names = {n.name for n in model.graph.node}
    unknown = [n for n in exclude_nodes if n not in names]
    if unknown:
        raise OptimizationError(
            f"exclude_nodes names node(s) the model does not have: {', '.join(unknown)}",
            hint="node names are listed by `accelserve optimize ... --recipe int8 --set sensitivity=true`",
        )
    why: dict[str, str] = {n: "excluded by name" for n in exclude_nodes}
    for node in model.graph.node:
        if node.op_type in exclude_op_types:
            why.setdefault(node.name, f"op type {node.op_type} excluded")
    compute = compute_nodes(model)
    for node in compute[:keep_first]:
        why.setdefault(node.name, "first layer kept in float")
    for node in compute[len(compute) - keep_last:] if keep_last else []:
        why.setdefault(node.name, "last layer kept in float")
    return list(why), why


def sentinel_nodes(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], threshold: float
                   ) -> dict[str, str]:
    """Nodes that read or write a tensor whose calibrated range reaches ``threshold`` in magnitude (attention-mask
    sentinels such as -3.4e38 or -1e4): one such value in an 8-bit range flattens every other value of the tensor
    to the same code, so those nodes stay in float. Returns node name -> reason."""
    hot = {name: max(abs(float(lo)), abs(float(hi))) for name, (lo, hi) in ranges.items()
           if not (abs(float(lo)) < threshold and abs(float(hi)) < threshold)}
    out: dict[str, str] = {}
    for node in model.graph.node:
        for tensor in [*node.input, *node.output]:
            if tensor in hot:
                out[node.name] = f"tensor '{tensor}' reaches {hot[tensor]:.3g} (a mask or sentinel value)"
                break
    return out


def float_nodes_report(original: onnx.ModelProto, quantized: onnx.ModelProto, requested_ops: tuple[str, ...],
                       why_excluded: dict[str, str], float_tensors: set[str]) -> dict[str, Any]:
    """Which compute nodes were quantized, and which nodes of requested op types were left in float and why.

    Nodes that touch no float activation (``float_tensors``: the calibrated tensors) are not float ops and are not
    listed."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    producers = {o: n for n in quantized.graph.node for o in n.output}
    by_name = {n.name: n for n in quantized.graph.node}
    quantized_nodes, left_float, folded = [], [], []
    for node in original.graph.node:
        if node.op_type not in requested_ops and node.op_type not in COMPUTE_OPS:
            continue
        if not any(name in float_tensors for name in [*node.input, *node.output]):
            continue
        if node.name in why_excluded:  # its inputs may still pass through Q/DQ set by quantized neighbours
            left_float.append({"node": node.name, "op_type": node.op_type, "reason": why_excluded[node.name]})
            continue
        q = by_name.get(node.name)
        if q is None and node.op_type in ("Relu", "Clip"):
            folded.append(node.name)  # the quantizer folds an activation into the preceding op's output range
            continue
        fed_by_dq = q is not None and any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in q.input
        )
        if fed_by_dq:
            quantized_nodes.append(node.name)
            continue
        if node.op_type not in requested_ops:
            reason = "op type not in the placement for this target"
        elif node.op_type not in QDQRegistry and node.op_type not in QLinearOpsRegistry:
            reason = "ONNX Runtime's quantizer cannot quantize this op type"
        else:
            reason = "its inputs could not be quantized (no calibration range or non-float inputs)"
        left_float.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return {"quantized_nodes": quantized_nodes, "folded_activations": folded, "left_in_float": left_float}
