"""Per-operator rules of the channel-dependency analysis (see :mod:`accelserve.passes.pruning.dependency`).

Each rule reads the tags of a node's inputs from the :class:`Analyzer`, records the edits that removing channels
implies (parameter slices, count updates), sets the tags of the node's outputs, and blocks every channel it cannot
prove safe to remove. A rule never guesses: an unexpected attribute or a shape it cannot read blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from accelserve.passes.pruning.dependency import Analyzer, CountUpdate, Tag
from accelserve.passes.pruning.graph import attr, opset

Rule = Callable[[Analyzer, onnx.NodeProto], None]
RULES: dict[str, Rule] = {}

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu", "Erf", "Exp",
    "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Softplus", "Softsign", "Mish", "Identity", "Cast", "CastLike", "Clip",
    "Dropout", "ThresholdedRelu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Shrink",
    "Swish",
)
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Less",
               "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift")
POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
REDUCES = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


def unknown(an: Analyzer, node: onnx.NodeProto) -> None:
    an.block_inputs(node)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(an: Analyzer, node: onnx.NodeProto, attr_name: str, input_index: int) -> list[int] | None:
    """An integer list given as an attribute (older opsets) or as a constant input (newer ones); None if unknown."""
    value = attr(node, attr_name)
    if value is not None:
        return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if input_index < len(node.input) and node.input[input_index]:
        const = an.index.const(node.input[input_index])
        return None if const is None else [int(v) for v in np.ravel(const)]
    return []


def _only_first_tagged(an: Analyzer, node: onnx.NodeProto) -> Tag | None:
    """The tag of input 0; channels reaching any other input of ``node`` are blocked."""
    an.block_inputs(node, f"channels reach a parameter input of {node.op_type} node '{node.name}'",
                    range(1, len(node.input)))
    return an.tag(node.input[0])


# -- sources and consumers -------------------------------------------------------------------------------------
@rule("Conv")
def conv(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    w = an.index.input_const(node, 1)
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if w is None or (bias_name and an.index.const(bias_name) is None):
        an.block(tag, f"Conv '{node.name}' has non-constant weights or bias")
        return
    group = int(attr(node, "group", 1))
    c_in = w.shape[1] * group
    if group == 1:
        if tag is not None:
            if tag.axis != 1:
                an.block(tag, f"Conv '{node.name}' reads channels on axis {tag.axis}")
            else:
                an.slice(node, 1, 1, tag.ids, "consumer")
        out = an.new_source(node, w.shape[0], 1, 0, 1)
        if bias_name:
            an.slice(node, 2, 0, out.ids, "source")
        an.set_tag(node.output[0], out)
    elif group == c_in and w.shape[1] == 1 and w.shape[0] % group == 0:  # depthwise: channels pass through
        if tag is None:
            return
        if tag.axis != 1:
            an.block(tag, f"depthwise Conv '{node.name}' reads channels on axis {tag.axis}")
            return
        ids = np.repeat(tag.ids, w.shape[0] // group)
        an.slice(node, 1, 0, ids, "dependent")
        if bias_name:
            an.slice(node, 2, 0, ids, "dependent")
        an.updates.append(CountUpdate(node.name, "group", (tag.ids,)))
        an.set_tag(node.output[0], Tag(1, ids))
    else:
        an.block(tag, f"grouped Conv '{node.name}' (group={group}) couples channels in blocks")


@rule("Gemm")
def gemm(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    b = an.index.input_const(node, 1)
    c_name = node.input[2] if len(node.input) > 2 else ""
    c = an.index.const(c_name) if c_name else None
    trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    if b is None or b.ndim != 2:
        an.block(tag, f"Gemm '{node.name}' has a non-constant right operand")
        return
    if tag is not None:
        if tag.axis != (0 if trans_a else 1):
            an.block(tag, f"Gemm '{node.name}' reads channels on its row axis")
        else:
            an.slice(node, 1, 1 if trans_b else 0, tag.ids, "consumer")
    if c_name and c is None:
        return  # a computed bias: the output channels stay
    out = an.new_source(node, b.shape[0] if trans_b else b.shape[1], 1, 0 if trans_b else 1, 1)
    if c is not None and c.ndim >= 1 and c.shape[-1] == out.ids.size and out.ids.size > 1:
        an.slice(node, 2, c.ndim - 1, out.ids, "source")
    an.set_tag(node.output[0], out)


@rule("MatMul")
def matmul(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    b = an.index.input_const(node, 1)
    rank_a, rank_out = an.index.rank(node.input[0]), an.index.rank(node.output[0])
    if b is None or b.ndim != 2 or rank_a is None or rank_a < 2 or rank_out is None:
        an.block(tag, f"MatMul '{node.name}' is not an input times a constant 2-D matrix")
        return
    if tag is not None:
        if tag.axis != rank_a - 1:
            an.block(tag, f"MatMul '{node.name}' reads channels on a row axis")
        else:
            an.slice(node, 1, 0, tag.ids, "consumer")
    an.set_tag(node.output[0], an.new_source(node, b.shape[1], 1, 1, rank_out - 1))


# -- channel-preserving operators ------------------------------------------------------------------------------
@rule(*UNARY)
def unary(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is not None:
        for out in node.output:
            an.set_tag(out, tag)


@rule(*POOLS)
def pool(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    if tag.axis != 1:
        an.block(tag, f"{node.op_type} '{node.name}' pools over the channel axis")
        return
    for out in node.output:
        an.set_tag(out, tag)


@rule("BatchNormalization", "InstanceNormalization")
def batchnorm(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    params = range(1, len(node.input))
    if tag.axis != 1 or len(node.output) > 1 or any(an.index.input_const(node, i) is None for i in params):
        an.block(tag, f"{node.op_type} '{node.name}' is not an inference-mode normalization over axis 1")
        return
    for i in params:
        an.slice(node, i, 0, tag.ids, "dependent")
    an.set_tag(node.output[0], tag)


@rule("LayerNormalization", "Softmax", "LogSoftmax", "Hardmax")
def normalize_over_axis(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank = an.index.rank(node.input[0])
    if tag is None or rank is None:
        an.block(tag, f"{node.op_type} '{node.name}': unknown rank")
        return
    axis = _axis(int(attr(node, "axis", -1 if (node.op_type == "LayerNormalization" or opset(an.index.model) >= 13)
                          else 1)), rank)
    flattening = node.op_type == "LayerNormalization" or opset(an.index.model) < 13  # normalizes over axis..end
    mixes = tag.axis >= axis if flattening else tag.axis == axis
    if mixes:
        an.block(tag, f"{node.op_type} '{node.name}' normalizes over the channel axis")
        return
    an.set_tag(node.output[0], tag)


@rule(*ELEMENTWISE)
def elementwise(an: Analyzer, node: onnx.NodeProto) -> None:
    tagged = [(i, an.tag(n)) for i, n in enumerate(node.input) if an.tag(n) is not None]
    if not tagged:
        return
    index = an.index
    out_rank = index.rank(node.output[0])
    ranks = [index.rank(n) if n else None for n in node.input]
    if out_rank is None or any(ranks[i] is None for i, _ in tagged):
        an.block_inputs(node, f"{node.op_type} '{node.name}': unknown rank")
        return
    aligned = {t.axis + out_rank - ranks[i] for i, t in tagged}
    if len(aligned) > 1:
        an.block_inputs(node, f"{node.op_type} '{node.name}' combines channels of different axes")
        return
    axis = aligned.pop()
    ids = tagged[0][1].ids
    for _, t in tagged[1:]:
        ids = an.merge(ids, t.ids, f"{node.op_type} '{node.name}'")
    for i, name in enumerate(node.input):
        if not name or an.tag(name) is not None:
            continue
        shape = index.shape(name)
        pos = axis - (out_rank - (ranks[i] or 0))
        if shape is None or ranks[i] is None:
            an.block(ids, f"{node.op_type} '{node.name}': input '{name}' has an unknown shape")
            continue
        if pos < 0 or shape[pos] == 1:
            continue  # broadcast over the channels
        if index.is_const(name):
            an.slice(node, i, pos, ids, "dependent")
        else:
            an.block(ids, f"{node.op_type} '{node.name}' combines channels with '{name}', which no source owns")
    an.set_tag(node.output[0], Tag(axis, ids))


@rule("Pad")
def pad(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank = an.index.rank(node.input[0])
    if tag is None or rank is None:
        an.block(tag, f"Pad '{node.name}': unknown rank")
        return
    pads = _ints(an, node, "pads", 1)
    axes = _ints(an, node, "axes", 3) if len(node.input) > 3 and node.input[3] else list(range(rank))
    if pads is None or axes is None or len(pads) != 2 * len(axes):
        an.block(tag, f"Pad '{node.name}' has computed pads")
        return
    axes = [_axis(a, rank) for a in axes]
    if tag.axis in axes and (pads[axes.index(tag.axis)] or pads[len(axes) + axes.index(tag.axis)]):
        an.block(tag, f"Pad '{node.name}' pads the channel axis")
        return
    an.set_tag(node.output[0], tag)


@rule("Resize", "Upsample")
def resize(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    scales_index = 1 if node.op_type == "Upsample" or opset(an.index.model) < 11 else 2
    scales = an.index.input_const(node, scales_index) if scales_index < len(node.input) else None
    sizes_given = len(node.input) > 3 and node.input[3]
    ok = scales is not None and scales.size > tag.axis and scales[tag.axis] == 1 and not sizes_given
    if not ok or attr(node, "axes") is not None:
        an.block(tag, f"{node.op_type} '{node.name}' may resize the channel axis (only constant scales are handled)")
        return
    an.set_tag(node.output[0], tag)


# -- operators that move or merge the channel axis -------------------------------------------------------------
@rule("Transpose")
def transpose(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank = an.index.rank(node.input[0])
    if tag is None or rank is None:
        an.block(tag, f"Transpose '{node.name}': unknown rank")
        return
    perm = list(attr(node, "perm", list(range(rank - 1, -1, -1))))
    an.set_tag(node.output[0], Tag(perm.index(tag.axis), tag.ids))


@rule("Flatten")
def flatten(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    shape = an.index.shape(node.input[0])
    if tag is None or shape is None:
        an.block(tag, f"Flatten '{node.name}': unknown shape")
        return
    axis = _axis(int(attr(node, "axis", 1)), len(shape))
    inner, outer = shape[tag.axis + 1:], shape[axis:tag.axis]
    if tag.axis < axis or None in inner or None in outer:
        an.block(tag, f"Flatten '{node.name}' merges the channel axis with leading or unknown axes")
        return
    ids = np.tile(np.repeat(tag.ids, int(np.prod(inner, dtype=np.int64))), int(np.prod(outer, dtype=np.int64)))
    an.set_tag(node.output[0], Tag(1, ids))


@rule("Reshape")
def reshape(an: Analyzer, node: onnx.NodeProto) -> None:
    """Handled: one output axis ``j`` covers whole input axes ``s .. m-1`` that include the channel axis ``k`` (a
    flatten, or the channel axis kept as it is), checked by equal suffix sizes; each channel id is repeated over the
    positions it takes there. The target (a constant, or computed from Shape and constants) has its literal for
    axis ``j`` rewritten; any other way the channel count enters the target blocks."""
    from accelserve.passes.pruning.dependency_shapes import reshape_target

    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    in_shape, out_shape = an.index.shape(node.input[0]), an.index.shape(node.output[0])
    target = reshape_target(an, node)
    why = f"Reshape '{node.name}' splits or reorders the channel axis (or has a target it cannot follow)"
    if in_shape is None or out_shape is None or target is None or len(target) != len(out_shape):
        an.block(tag, why)
        return
    k, allowzero = tag.axis, int(attr(node, "allowzero", 0))
    #: a 0 in the target copies the input dim at its position; at position k that is the channel count
    zero_at = {i for i, e in enumerate(target) if e.const is not None and e.value == 0 and not allowzero}
    counts_at = {i for i, e in enumerate(target) if e.ids is not None}

    def suffix(dims: tuple, start: int) -> int | None:
        rest = dims[start:]
        return None if None in rest else int(np.prod(rest, dtype=np.int64))

    for j in range(len(out_shape)):
        want_s, want_m = suffix(out_shape, j), suffix(out_shape, j + 1)
        starts = [s for s in range(k + 1) if want_s is not None and suffix(in_shape, s) == want_s]
        ends = [m for m in range(k + 1, len(in_shape) + 1) if want_m is not None and suffix(in_shape, m) == want_m]
        if not starts or not ends or counts_at - {j} or (k in zero_at and j != k):
            continue
        s, m = starts[-1], ends[0]
        inner = int(np.prod(in_shape[k + 1:m], dtype=np.int64))
        ids = np.tile(np.repeat(tag.ids, inner), int(np.prod(in_shape[s:k], dtype=np.int64)))
        entry = target[j]
        if entry.ids is not None:  # a channel count read from Shape: right only if it is this very axis
            if not np.array_equal(entry.ids, ids):
                continue
        elif j in zero_at:
            if not (j == k and s == k and m == k + 1):
                continue  # 0 copies input dim j, which does not follow the channels here
        elif entry.const is not None and entry.value is not None and entry.value > 0:
            an.updates.append(CountUpdate(entry.const[0], "reshape", (ids,), position=entry.const[2],
                                          input_index=entry.const[1]))
        elif not (entry.const is not None and entry.value == -1):
            continue  # a run-time size that does not follow the channels
        an.set_tag(node.output[0], Tag(j, ids))
        return
    an.block(tag, why)


@rule("Squeeze", "Unsqueeze")
def squeeze(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    rank_in, rank_out = an.index.rank(node.input[0]), an.index.rank(node.output[0])
    axes = _ints(an, node, "axes", 1)
    if rank_in is None or rank_out is None or axes is None:
        an.block(tag, f"{node.op_type} '{node.name}': unknown axes or rank")
        return
    if node.op_type == "Squeeze":
        shape = an.index.shape(node.input[0]) or ()
        axes = [_axis(a, rank_in) for a in axes] or [i for i, d in enumerate(shape) if d == 1]
        if tag.axis in axes:
            an.block(tag, f"Squeeze '{node.name}' removes the channel axis")
            return
        an.set_tag(node.output[0], Tag(tag.axis - sum(a < tag.axis for a in axes), tag.ids))
    else:
        axes = {_axis(a, rank_out) for a in axes}
        kept = [i for i in range(rank_out) if i not in axes]
        an.set_tag(node.output[0], Tag(kept[tag.axis], tag.ids))


@rule(*REDUCES, "ArgMax", "ArgMin")
def reduce(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank = an.index.rank(node.input[0])
    if tag is None:
        return
    if node.op_type in ("ArgMax", "ArgMin"):
        axes: list[int] | None = [int(attr(node, "axis", 0))]
    else:
        axes = _ints(an, node, "axes", 1)
    if rank is None or axes is None or (not axes and not attr(node, "noop_with_empty_axes", 0)):
        an.block(tag, f"{node.op_type} '{node.name}' reduces over all or unknown axes")
        return
    axes = [_axis(a, rank) for a in axes]
    if tag.axis in axes:
        an.block(tag, f"{node.op_type} '{node.name}' reduces over the channel axis")
        return
    keep = int(attr(node, "keepdims", 1))
    an.set_tag(node.output[0], Tag(tag.axis - (0 if keep else sum(a < tag.axis for a in axes)), tag.ids))


@rule("Concat")
def concat(an: Analyzer, node: onnx.NodeProto) -> None:
    tagged = [an.tag(n) for n in node.input]
    if not any(t is not None for t in tagged):
        return
    rank = an.index.rank(node.output[0])
    if rank is None:
        an.block_inputs(node, f"Concat '{node.name}': unknown rank")
        return
    axis = _axis(int(attr(node, "axis", 0)), rank)
    if not any(t is not None and t.axis != axis for t in tagged):
        parts = []
        for name, t in zip(node.input, tagged):
            dims = an.index.shape(name)
            if t is None and (dims is None or dims[axis] is None):
                an.block_inputs(node, f"Concat '{node.name}': input '{name}' has an unknown size")
                return
            parts.append(t.ids if t is not None else np.full(dims[axis], -1, dtype=np.int64))  # type: ignore[index]
        an.set_tag(node.output[0], Tag(axis, np.concatenate(parts)))
        return
    elementwise(an, node)  # concatenation along another axis: channels at equal positions are coupled


@rule("Split")
def split(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    if tag is None:
        return
    shape = an.index.shape(node.input[0])
    axis = _axis(int(attr(node, "axis", 0)), len(shape) if shape else 0)
    if axis != tag.axis:
        for out in node.output:
            an.set_tag(out, tag)
        return
    sizes = _ints(an, node, "split", 1)
    n = len(tag.ids)
    if sizes == [] and n % len(node.output) == 0:
        sizes = [n // len(node.output)] * len(node.output)
    if not sizes or sum(sizes) != n or len(sizes) != len(node.output):
        an.block(tag, f"Split '{node.name}' splits the channel axis into unknown or uneven parts")
        return
    segments = tuple(np.split(tag.ids, np.cumsum(sizes)[:-1]))
    an.updates.append(CountUpdate(node.name, "split", segments))
    for out, seg in zip(node.output, segments):
        an.set_tag(out, Tag(axis, seg))


@rule("Slice")
def slice_(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank = an.index.rank(node.input[0])
    if tag is None:
        return
    starts = _ints(an, node, "starts", 1)
    axes = _ints(an, node, "axes", 3) if (len(node.input) > 3 and node.input[3]) or attr(node, "axes") else None
    if axes is None and starts is not None:
        axes = list(range(len(starts)))
    if rank is None or axes is None or tag.axis in [_axis(a, rank) for a in axes]:
        an.block(tag, f"Slice '{node.name}' slices the channel axis (or has computed axes)")
        return
    an.set_tag(node.output[0], tag)


@rule("Gather")
def gather(an: Analyzer, node: onnx.NodeProto) -> None:
    tag = _only_first_tagged(an, node)
    rank, q = an.index.rank(node.input[0]), an.index.rank(node.input[1])
    if tag is None:
        return
    axis = _axis(int(attr(node, "axis", 0)), rank or 0)
    if rank is None or q is None or axis == tag.axis:
        an.block(tag, f"Gather '{node.name}' gathers along the channel axis")
        return
    an.set_tag(node.output[0], Tag(tag.axis + (q - 1 if axis < tag.axis else 0), tag.ids))
