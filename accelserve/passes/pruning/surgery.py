"""Channel removal: apply a :class:`PruningPlan` to a model for a set of removed channel ids.

Weights shared with another node are copied before they are cut (copy on write), so a shared tensor is never
changed under a node that did not ask for it. :func:`zero_consumer_inputs` builds the reference the result must
match exactly: the original model with the consumers' weights for the removed channels set to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from accelserve.errors import InternalError
from accelserve.passes.pruning.dependency import PruningPlan, Tag
from accelserve.passes.pruning.graph import GraphIndex, opset, replace_initializer, set_attr, unique_name


class _Editor:
    """Edits initializers of a model copy, copying a shared one before the first edit through a given node input."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.index = GraphIndex(self.model)
        self.nodes = {n.name: n for n in self.model.graph.node}
        self.values: dict[str, np.ndarray] = {}
        self.owned: set[tuple[str, int]] = set()

    def value(self, name: str) -> np.ndarray:
        if name not in self.values:
            const = self.index.const(name)
            if const is None:
                raise InternalError(f"'{name}' was planned as a constant but is not an initializer")
            self.values[name] = const
        return self.values[name]

    def edit(self, node_name: str, input_index: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        node = self.nodes[node_name]
        name = node.input[input_index]
        if (node_name, input_index) not in self.owned:
            if self.index.uses(name) > 1:
                new = unique_name(self.model, f"{name}__{node_name}")
                self.values[new] = self.value(name).copy()
                node.input[input_index] = new
                name = new
            self.owned.add((node_name, input_index))
        self.values[name] = fn(self.value(name))

    def finish(self) -> onnx.ModelProto:
        for name, value in self.values.items():
            replace_initializer(self.model, name, value)
        used = {i for n in self.model.graph.node for i in n.input} | {o.name for o in self.model.graph.output}
        keep = [t for t in self.model.graph.initializer if t.name in used or t.name in
                {i.name for i in self.model.graph.input}]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)
        del self.model.graph.value_info[:]
        return self.model


def _keep(ids: np.ndarray, removed: np.ndarray) -> np.ndarray:
    return ~np.isin(ids, removed)


def _check_axis(arr: np.ndarray, axis: int, ids: np.ndarray, where: str) -> None:
    if arr.ndim <= axis or arr.shape[axis] != ids.size:
        raise InternalError(f"{where}: planned {ids.size} channels on axis {axis}, the tensor has shape {arr.shape}")


def remove_channels(model: onnx.ModelProto, plan: PruningPlan, removed: np.ndarray) -> onnx.ModelProto:
    """The model with the channel ids ``removed`` physically removed (weights, parameters, shapes, counts)."""
    editor = _Editor(model)
    for s in plan.slices:
        keep = _keep(s.ids, removed)
        if keep.all():
            continue

        def cut(arr: np.ndarray, s=s, keep=keep) -> np.ndarray:
            _check_axis(arr, s.axis, s.ids, f"{s.node} input {s.input_index}")
            return np.compress(keep, arr, axis=s.axis)

        editor.edit(s.node, s.input_index, cut)
    for u in plan.updates:
        counts = [int(_keep(seg, removed).sum()) for seg in u.segments]
        node = editor.nodes[u.node]
        if u.kind == "group":
            set_attr(node, "group", counts[0])
        elif u.kind == "reshape":
            def set_entry(arr: np.ndarray, pos=u.position, value=counts[0]) -> np.ndarray:
                out = arr.copy().reshape(-1)
                out[pos] = value
                return out.reshape(arr.shape)

            editor.edit(u.node, u.input_index, set_entry)
        elif u.kind == "split":
            if opset(model) >= 13:
                name = unique_name(editor.model, f"{u.node}__split")
                editor.values[name] = np.array(counts, dtype=np.int64)
                while len(node.input) < 2:
                    node.input.append("")
                node.input[1] = name
                for i, a in enumerate(node.attribute):
                    if a.name == "num_outputs":
                        del node.attribute[i]
                        break
            else:
                set_attr(node, "split", counts)
    return editor.finish()


def zero_consumer_inputs(model: onnx.ModelProto, plan: PruningPlan, removed: np.ndarray) -> onnx.ModelProto:
    """The original model with every consumer's weights for the removed channels set to zero. Removing channels is
    exact exactly when the pruned model computes what this one computes."""
    editor = _Editor(model)
    for s in plan.slices:
        if s.role != "consumer":
            continue
        drop = ~_keep(s.ids, removed)
        if not drop.any():
            continue

        def zero(arr: np.ndarray, s=s, drop=drop) -> np.ndarray:
            _check_axis(arr, s.axis, s.ids, f"{s.node} input {s.input_index}")
            out = arr.copy()
            index = [slice(None)] * arr.ndim
            index[s.axis] = np.flatnonzero(drop)
            out[tuple(index)] = 0
            return out

        editor.edit(s.node, s.input_index, zero)
    return editor.finish()


def emptied_tags(plan: PruningPlan, removed: np.ndarray) -> list[tuple[str, Tag]]:
    """Tensors (and Split outputs) that would lose every channel; such a removal must be reduced."""
    out = [(name, tag) for name, tag in plan.tags.items() if not _keep(tag.ids, removed).any()]
    for u in plan.updates:
        for seg in u.segments:
            if seg.size and not _keep(seg, removed).any():
                out.append((u.node, Tag(0, seg)))
    return out


def kept_positions(ids: np.ndarray, removed: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_keep(ids, removed))


def initializer_count(model: onnx.ModelProto, names: Sequence[str] | None = None) -> int:
    """Number of parameters (elements of initializers), optionally of ``names`` only."""
    return int(sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
                   if names is None or t.name in names))


