"""Channel-dependency analysis on an ONNX graph (what Torch-Pruning's DepGraph does on modules, done on the graph).

Every output channel of a *source* (a Conv with group 1, a Gemm, a MatMul with a constant 2-D right operand) gets a
global channel id. The ids are propagated forward along the graph: each tensor that carries source channels gets a
:class:`Tag` (its channel axis and, per position on that axis, the id it carries, or ``-1`` for a position no source
owns). The rules for each operator live in :mod:`accelserve.passes.pruning.dependency_ops`:

* BatchNormalization, element-wise activations, pooling, Pad/Resize that leave channels alone: the tag passes through,
  per-channel parameters are sliced along with it;
* Add/Sub/Mul/... with two tagged operands (a residual): the channels at each position are *coupled* (union-find),
  so all addends form one group;
* Concat along the channel axis: the tags are concatenated (index offsets); Split slices them;
* depthwise Conv: passes channels through (its weights, bias and ``group`` follow);
* Flatten/Reshape that merge the channel axis with trailing axes: each channel id is repeated over the merged
  positions, so a following Gemm/MatMul loses the matching rows;
* Transpose/Squeeze/Unsqueeze/Gather/Reduce*: the channel axis moves.

Anything the rules cannot prove safe (an unknown operator, a graph output, a reshape that splits channels, a
grouped convolution, a user exclusion, ...) *blocks* every id that reaches it, with the reason; a group with a
blocked id is left unpruned and the reason is reported. The result is a :class:`PruningPlan`: the groups (coupled
sources and their channel classes) and the edits (parameter slices, attribute/shape updates) that removing a set of
channel ids implies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from accelserve.passes.pruning.graph import GraphIndex

#: the input index of a source's weight and the axis of its output channels there
SOURCE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Tag:
    """The channel layout of one tensor: its channel axis and the channel id at each position (-1: no source)."""

    axis: int
    ids: np.ndarray


@dataclass(frozen=True)
class Source:
    """A node whose output channels are prunable ids ``base .. base + size - 1``."""

    node: str
    op_type: str
    base: int
    size: int
    weight: str  #: the initializer holding its weights
    weight_axis: int  #: the weight's output-channel axis


@dataclass(frozen=True)
class ParamSlice:
    """Removing channel ids removes positions of ``node.input[input_index]`` along ``axis`` (where ``ids`` holds a
    removed id). ``role``: the weights of the source itself, of a consumer (its input channels), or a per-channel
    parameter that follows the channels (BatchNorm, bias constants, depthwise weights)."""

    node: str
    input_index: int
    axis: int
    ids: np.ndarray
    role: Literal["source", "consumer", "dependent"]


@dataclass(frozen=True)
class CountUpdate:
    """An integer that counts channels and must be rewritten: ``group`` of a depthwise Conv, one entry of a Reshape
    shape, or the sizes of a Split. The new value of each segment is the number of its ids that are kept."""

    node: str
    kind: Literal["group", "reshape", "split"]
    segments: tuple[np.ndarray, ...]
    position: int = 0  #: the (flat) entry of the Reshape shape constant
    input_index: int = 1  #: the input of ``node`` holding that constant (a Concat input for a computed shape)


@dataclass
class ChannelGroup:
    """Sources whose output channels are coupled. ``channels[i]`` holds the ids that are removed together."""

    index: int
    sources: list[str]
    channels: list[np.ndarray]
    consumers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return not self.reasons and len(self.channels) > 1

    @property
    def size(self) -> int:
        return len(self.channels)

    def describe(self) -> dict[str, object]:
        return {
            "group": self.index, "sources": self.sources, "channels": self.size, "consumers": self.consumers,
            "prunable": self.prunable, "reasons": self.reasons or ([] if self.prunable else ["only one channel"]),
        }


@dataclass
class PruningPlan:
    groups: list[ChannelGroup]
    sources: list[Source]
    slices: list[ParamSlice]
    updates: list[CountUpdate]
    tags: dict[str, Tag]

    def group_of(self, node: str) -> ChannelGroup | None:
        return next((g for g in self.groups if node in g.sources), None)

    def removed_ids(self, choice: dict[int, Sequence[int]]) -> np.ndarray:
        """The channel ids removed when, for each group index, the listed channel classes are removed."""
        parts = [np.zeros(0, dtype=np.int64)]
        for gi, classes in choice.items():
            group = self.groups[gi]
            if classes is not None and len(classes) and not group.prunable:
                raise ValueError(f"group {gi} is not prunable: {group.describe()['reasons']}")
            if len(set(classes)) >= group.size:
                raise ValueError(f"group {gi}: removing all {group.size} channels")
            parts.extend(group.channels[c] for c in classes)
        return np.unique(np.concatenate(parts))

    def summary(self) -> list[dict[str, object]]:
        return [g.describe() for g in self.groups]

    def table(self) -> str:
        rows = [("group", "channels", "sources", "status")]
        for g in self.groups:
            status = "prunable" if g.prunable else "kept: " + "; ".join(g.describe()["reasons"])  # type: ignore[arg-type]
            rows.append((str(g.index), str(g.size), ", ".join(g.sources), status))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, count: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + count))
        return base

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Analyzer:
    """Walks the graph once in topological order; the per-operator rules call back into it."""

    def __init__(self, index: GraphIndex, exclude: Iterable[str] = ()) -> None:
        self.index = index
        self.exclude = set(exclude)
        self.tags: dict[str, Tag] = {}
        self.sources: list[Source] = []
        self.slices: list[ParamSlice] = []
        self.updates: list[CountUpdate] = []
        self.consumers: dict[str, list[str]] = {}  #: consumer node -> the activation whose channels it reads
        #: integer vectors computed from Shape (see dependency_shapes): tensor -> entries
        self.vectors: dict[str, list] = {}
        self._uf = _UnionFind()
        self._blocks: list[tuple[np.ndarray, str]] = []

    # -- callbacks used by the operator rules ----------------------------------------------------------------
    def tag(self, name: str) -> Tag | None:
        return self.tags.get(name) if name else None

    def set_tag(self, name: str, tag: Tag) -> None:
        if name and (tag.ids >= 0).any():
            self.tags[name] = tag

    def new_source(self, node: onnx.NodeProto, size: int, weight_index: int, weight_axis: int, axis: int) -> Tag:
        base = self._uf.add(size)
        ids = np.arange(base, base + size, dtype=np.int64)
        self.sources.append(Source(node.name, node.op_type, base, size, node.input[weight_index], weight_axis))
        self.slice(node, weight_index, weight_axis, ids, "source")
        if node.name in self.exclude:
            self.block(ids, f"source '{node.name}' is excluded (exclude_nodes)")
        return Tag(axis, ids)

    def slice(self, node: onnx.NodeProto, index: int, axis: int, ids: np.ndarray,
              role: Literal["source", "consumer", "dependent"]) -> None:
        self.slices.append(ParamSlice(node.name, index, axis, ids, role))
        if role == "consumer":
            self.consumers.setdefault(node.name, []).append(node.input[0])

    def block(self, ids: np.ndarray | Tag | None, reason: str) -> None:
        if ids is None:
            return
        arr = ids.ids if isinstance(ids, Tag) else ids
        arr = np.unique(arr[arr >= 0])
        if arr.size:
            self._blocks.append((arr, reason))

    def block_inputs(self, node: onnx.NodeProto, reason: str | None = None,
                     indices: Iterable[int] | None = None) -> None:
        why = reason or f"{node.op_type} node '{node.name}' is not understood by the channel analysis"
        for i in indices if indices is not None else range(len(node.input)):
            if i < len(node.input):
                self.block(self.tag(node.input[i]), why)
                self.block(self._vector_ids(node.input[i]), why)

    def merge(self, a: np.ndarray, b: np.ndarray, where: str) -> np.ndarray:
        """Couple the channels at equal positions of ``a`` and ``b`` (a residual Add, an element-wise product)."""
        if a.shape != b.shape:
            self.block(a, f"{where} combines tensors of different channel counts")
            self.block(b, f"{where} combines tensors of different channel counts")
            return a
        both = (a >= 0) & (b >= 0)
        for x, y in zip(a[both].tolist(), b[both].tolist()):
            self._uf.union(x, y)
        lone = (a >= 0) ^ (b >= 0)
        if lone.any():
            self.block(np.where(a >= 0, a, b)[lone], f"{where} couples channels with channels no source owns")
        return np.where(a >= 0, a, b)

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self) -> PruningPlan:
        from accelserve.passes.pruning.dependency_ops import RULES, unknown
        from accelserve.passes.pruning.dependency_shapes import follow

        for node in self.index.nodes:
            for name in _subgraph_reads(node):  # a subgraph reads outer tensors without listing them as inputs
                why = f"read inside a subgraph of {node.op_type} '{node.name}'"
                self.block(self.tag(name), why)
                self.block(self._vector_ids(name), why)
            if follow(self, node):
                continue
            RULES.get(node.op_type, unknown)(self, node) if node.domain in ("", "ai.onnx") else unknown(self, node)
            self._check_outputs_tracked(node)
        for name in self.index.graph_outputs:
            self.block(self.tag(name), f"reaches the graph output '{name}' (the model's signature is kept)")
            self.block(self._vector_ids(name), f"a channel count reaches the graph output '{name}'")
        return self._resolve()

    def _vector_ids(self, name: str) -> np.ndarray | None:
        from accelserve.passes.pruning.dependency_shapes import channel_ids

        return channel_ids(self.vectors[name]) if name in self.vectors else None

    def _check_outputs_tracked(self, node: onnx.NodeProto) -> None:
        """Safety net: an output a rule left untagged while channels flow in (say, LayerNormalization's Mean)
        would keep its old channel count after pruning, so those channels are blocked."""
        if node.op_type in (*SOURCE_OPS, "Shape") or not any(self.tag(i) is not None for i in node.input):
            return
        loose = [o for o in node.output if o and o not in self.tags and self.index.uses(o)]
        if loose:
            self.block_inputs(node, f"output '{loose[0]}' of {node.op_type} '{node.name}' is not tracked")

    def _resolve(self) -> PruningPlan:
        total = len(self._uf.parent)
        if total == 0:
            return PruningPlan([], [], [], [], {})
        roots = np.array([self._uf.find(i) for i in range(total)], dtype=np.int64)
        source_of = np.empty(total, dtype=np.int64)
        for si, s in enumerate(self.sources):
            source_of[s.base:s.base + s.size] = si
        # sources coupled through any channel belong to one group
        suf = _UnionFind()
        suf.add(len(self.sources))
        first_source_of_root: dict[int, int] = {}
        for i in range(total):
            r = int(roots[i])
            if r in first_source_of_root:
                suf.union(first_source_of_root[r], int(source_of[i]))
            else:
                first_source_of_root[r] = int(source_of[i])
        comp_of_source = [suf.find(i) for i in range(len(self.sources))]
        comps = sorted(set(comp_of_source))
        comp_index = {c: gi for gi, c in enumerate(comps)}
        group_of_id = np.array([comp_index[comp_of_source[s]] for s in source_of], dtype=np.int64)

        groups = [ChannelGroup(gi, [], []) for gi in range(len(comps))]
        for si, s in enumerate(self.sources):
            groups[comp_index[comp_of_source[si]]].sources.append(s.node)
        order = np.argsort(roots, kind="stable")
        split_at = np.flatnonzero(np.diff(roots[order])) + 1
        for members in np.split(order, split_at):
            groups[int(group_of_id[members[0]])].channels.append(members.astype(np.int64))
        for arr, reason in self._blocks:
            for gi in np.unique(group_of_id[arr]).tolist():
                if reason not in groups[gi].reasons:
                    groups[gi].reasons.append(reason)
        for node, tensors in self.consumers.items():
            for t in tensors:
                tag = self.tags.get(t)
                if tag is None:
                    continue
                for gi in np.unique(group_of_id[tag.ids[tag.ids >= 0]]).tolist():
                    if node not in groups[gi].consumers:
                        groups[gi].consumers.append(node)
        return PruningPlan(groups, self.sources, self.slices, self.updates, self.tags)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for inner in g.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_reads(inner)
    return names


def analyze(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> PruningPlan:
    """Analyze a model that went through :func:`accelserve.passes.pruning.graph.prepare`."""
    return Analyzer(GraphIndex(model), exclude).run()
