"""Shape values in the channel-dependency analysis: the small integer vectors exporters compute from ``Shape`` to
build Reshape targets (tf2onnx's Flatten is ``Reshape(x, Concat(Shape(x)[0:1], [2048]))``).

Each entry of such a vector is either a dimension read from ``Shape`` (with the channel ids when it is a channel
count, which changes when channels are removed) or a literal from a constant (with where it came from, so that the
surgery can rewrite it). Shape, Gather, Slice, Concat, Cast, Identity, Squeeze and Unsqueeze are followed; a
channel count that reaches anything else is blocked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from accelserve.passes.pruning.dependency import Analyzer
from accelserve.passes.pruning.graph import attr


@dataclass(frozen=True)
class Entry:
    value: int | None  #: the literal or static size; None for a size known only at run time
    ids: np.ndarray | None = None  #: channel ids when the entry is a channel count
    const: tuple[str, int, int] | None = None  #: (node, input index, flat index) of the literal it came from


Vector = list[Entry]


def channel_ids(vector: Vector) -> np.ndarray:
    parts = [e.ids for e in vector if e.ids is not None]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def block_vectors(an: Analyzer, node: onnx.NodeProto, reason: str) -> None:
    for name in node.input:
        if name in an.vectors:
            an.block(channel_ids(an.vectors[name]), reason)


def shape(an: Analyzer, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dims, tag = an.index.shape(x), an.tag(x)
    if dims is None:
        an.block(tag, f"Shape '{node.name}': unknown rank")
        return
    rank = len(dims)
    start = int(attr(node, "start", 0))
    end = attr(node, "end")
    start, end = start + rank if start < 0 else start, rank if end is None else (int(end) + rank if end < 0 else int(end))
    an.vectors[node.output[0]] = [
        Entry(dims[a], tag.ids if tag is not None and a == tag.axis else None) for a in range(max(start, 0), min(end, rank))
    ]


def _const_entries(an: Analyzer, node: onnx.NodeProto, index: int) -> Vector | None:
    value = an.index.input_const(node, index)
    if value is None or not np.issubdtype(value.dtype, np.integer) or value.ndim > 1:
        return None
    return [Entry(int(v), None, (node.name, index, i)) for i, v in enumerate(np.ravel(value))]


def _gather(an: Analyzer, node: onnx.NodeProto) -> Vector | None:
    indices = an.index.input_const(node, 1)
    vector = an.vectors[node.input[0]]
    if indices is None or int(attr(node, "axis", 0)) != 0:
        return None
    return [vector[int(i)] for i in np.ravel(indices)]


def _slice(an: Analyzer, node: onnx.NodeProto) -> Vector | None:
    vector = an.vectors[node.input[0]]
    values = [an.index.input_const(node, i) if i < len(node.input) and node.input[i] else None for i in range(1, 5)]
    starts, ends, axes, steps = (None if v is None else [int(x) for x in np.ravel(v)] for v in values)
    if attr(node, "starts") is not None:  # opset < 10
        starts, ends, axes = list(attr(node, "starts")), list(attr(node, "ends")), attr(node, "axes")
    if starts is None or ends is None or (axes not in (None, [0])) or len(starts) != 1:
        return None
    step = steps[0] if steps else 1
    return vector[slice(starts[0], max(min(ends[0], len(vector)), -len(vector) - 1), step)]


def _concat(an: Analyzer, node: onnx.NodeProto) -> Vector | None:
    out: Vector = []
    for i, name in enumerate(node.input):
        part = an.vectors.get(name) or _const_entries(an, node, i)
        if part is None:
            return None
        out.extend(part)
    return out


def _pass_through(an: Analyzer, node: onnx.NodeProto) -> Vector | None:
    return an.vectors[node.input[0]]


VECTOR_RULES: dict[str, Callable[[Analyzer, onnx.NodeProto], Vector | None]] = {
    "Gather": _gather, "Slice": _slice, "Concat": _concat, "Cast": _pass_through, "Identity": _pass_through,
    "Squeeze": _pass_through, "Unsqueeze": _pass_through,
}


def follow(an: Analyzer, node: onnx.NodeProto) -> bool:
    """Handle ``node`` if it computes with shape vectors; True when it was handled here."""
    if node.op_type == "Shape":
        shape(an, node)
        return True
    vector_inputs = [i for i, name in enumerate(node.input) if name in an.vectors]
    if not vector_inputs:
        return False
    if node.op_type == "Reshape" and vector_inputs == [1]:
        return False  # a computed Reshape target: the Reshape rule reads it
    rule = VECTOR_RULES.get(node.op_type)
    if rule is not None and (node.op_type == "Concat" or vector_inputs == [0]):
        result = rule(an, node)
        if result is not None:
            an.vectors[node.output[0]] = result
            return True
    block_vectors(an, node, f"{node.op_type} '{node.name}' computes with a channel count")
    return False


def reshape_target(an: Analyzer, node: onnx.NodeProto) -> Vector | None:
    """The entries of a Reshape's target (a constant or a followed shape vector), or None."""
    if len(node.input) < 2:
        return None
    return an.vectors.get(node.input[1]) or _const_entries(an, node, 1)
