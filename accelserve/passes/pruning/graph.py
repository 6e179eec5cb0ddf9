"""A read-only index over an ONNX graph (producers, consumers, constants, static shapes) and the few graph edits
the pruning and low-rank passes share: normalizing a model before analysis, running it with extra outputs under
ONNX Runtime, and validating a result before it is written."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from accelserve.errors import InternalError, InvalidInputError
from accelserve.onnx_io import TWO_GB, check_model, save_onnx

Feeds = dict[str, np.ndarray]
Shape = tuple[int | None, ...]


if TYPE_CHECKING:
    from accelserve.artifact import ModelArtifact


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` ready for analysis: Constant nodes lifted into initializers, every node named uniquely,
    stale value_info dropped and shapes re-inferred. None of this changes what the model computes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            value = _constant_value(attr)
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
        seen.add(node.name)
    del graph.value_info[:]
    return check_model(out, what="the input model")


def _constant_value(attr: onnx.AttributeProto) -> np.ndarray | None:
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    return None


def _dims(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim)


class GraphIndex:
    """Who produces and who consumes each tensor, which tensors are constants, and their static shapes.

    Built from a model that went through :func:`prepare` (shapes inferred). Treats an initializer that is also a
    graph input as *not* constant: a caller may override it.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.node_by_name: dict[str, onnx.NodeProto] = {n.name: n for n in self.nodes}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for idx, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, idx))
        inputs = {i.name for i in graph.input}
        self.initializers: dict[str, onnx.TensorProto] = {
            t.name: t for t in graph.initializer if t.name not in inputs
        }
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = {o.name for o in graph.output}
        self.shapes: dict[str, Shape | None] = {}
        self.elem_types: dict[str, int] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self.shapes[vi.name] = _dims(vi.type)
            self.elem_types[vi.name] = vi.type.tensor_type.elem_type
        for t in self.initializers.values():
            self.shapes[t.name] = tuple(t.dims)
            self.elem_types[t.name] = t.data_type
        self._cache: dict[str, np.ndarray] = {}

    # -- constants -------------------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None if ``name`` is not a constant (or is the empty optional input)."""
        if not name or name not in self.initializers:
            return None
        if name not in self._cache:
            self._cache[name] = numpy_helper.to_array(self.initializers[name])
        return self._cache[name]

    def input_const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        return self.const(node.input[index]) if index < len(node.input) else None

    # -- shapes ----------------------------------------------------------------------------------------------
    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    # -- nodes -----------------------------------------------------------------------------------------------
    def node(self, name: str) -> onnx.NodeProto:
        try:
            return self.node_by_name[name]
        except KeyError:
            raise InvalidInputError(f"the model has no node named '{name}'") from None

    def check_node_names(self, names: Iterable[str], option: str) -> None:
        """Raise an InvalidInputError listing every name in ``names`` that is not a node of the graph."""
        missing = [n for n in names if n not in self.node_by_name]
        if missing:
            sample = ", ".join(sorted(self.node_by_name)[:8])
            raise InvalidInputError(
                f"{option} names node(s) that do not exist in the model: {', '.join(missing)}",
                hint=f"node names in this model include: {sample}{', ...' if len(self.node_by_name) > 8 else ''}",
            )

    def uses(self, tensor: str) -> int:
        """How many node inputs and graph outputs read ``tensor``."""
        return len(self.consumers.get(tensor, ())) + (1 if tensor in self.graph_outputs else 0)


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) the initializer ``name`` with ``value``, keeping its dtype."""
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if t.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


def unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    taken |= {o for n in model.graph.node for o in n.output} | {n.name for n in model.graph.node}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


# --------------------------------------------------------------------------------------------------------------
# Running models


def _session(model: onnx.ModelProto, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if model.ByteSize() < TWO_GB:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - large models only
        path = Path(tmp) / "model.onnx"
        save_onnx(model, path, external_data=True, runtime_compatible=False)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    index = GraphIndex(model)
    for name in names:
        if name not in present:
            elem = index.elem_types.get(name, onnx.TensorProto.FLOAT)
            out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            present.add(name)
    return out


def iterate(model: onnx.ModelProto, batches: Sequence[Feeds], names: Sequence[str] | None = None
            ) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on each batch in turn and yield the requested tensors (graph outputs by default;
    intermediate tensors are added as outputs as needed)."""
    names = list(names) if names is not None else [o.name for o in model.graph.output]
    extra = [n for n in names if n not in {o.name for o in model.graph.output}]
    sess = _session(with_outputs(model, extra) if extra else model)
    for feeds in batches:
        yield dict(zip(names, (np.asarray(v) for v in sess.run(names, feeds))))


def run(model: onnx.ModelProto, batches: Sequence[Feeds], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` on every batch and concatenate each requested tensor over the batches (axis 0)."""
    parts: dict[str, list[np.ndarray]] = {}
    for out in iterate(model, batches, names):
        for name, value in out.items():
            parts.setdefault(name, []).append(value)
    return {n: (np.concatenate(v, axis=0) if len(v) > 1 else v[0]) for n, v in parts.items()}


def sample_batches(model: onnx.ModelProto, *, count: int = 2, batch: int = 4, seed: int = 0) -> list[Feeds]:
    """Random feeds for the model's inputs (dynamic axes get ``batch``), for self-checks without calibration data."""
    rng = np.random.default_rng(seed)
    index = GraphIndex(model)
    out = []
    for _ in range(count):
        feeds: Feeds = {}
        for vi in model.graph.input:
            if vi.name not in index.graph_inputs:
                continue
            dims = _dims(vi.type) or ()
            shape = tuple(d if d else batch for d in dims)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            if np.issubdtype(dtype, np.floating):
                feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feeds[vi.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feeds[vi.name] = rng.integers(0, 10, shape).astype(dtype)
        out.append(feeds)
    return out


def calibration_batches(calibration: Any, model: onnx.ModelProto) -> list[Feeds]:
    """Turn what ``PassContext.calibration`` holds into a list of feed dicts whose names match the model's inputs.

    Accepts an object with ``feeds()`` (accelserve.calibration.CalibrationData), one feed dict, or a list of them.
    """
    if calibration is None:
        return []
    if hasattr(calibration, "feeds"):
        data = calibration.feeds()
    else:
        data = calibration
    batches = [data] if isinstance(data, dict) else list(data)
    wanted = set(GraphIndex(model).graph_inputs)
    for feeds in batches:
        if not isinstance(feeds, dict) or set(feeds) != wanted:
            got = sorted(feeds) if isinstance(feeds, dict) else type(feeds).__name__
            raise InvalidInputError(
                f"calibration data has inputs {got}, the model has inputs {sorted(wanted)}",
                hint="give one array per model input, named like the model's inputs",
            )
    return [{k: np.asarray(v) for k, v in feeds.items()} for feeds in batches]


# --------------------------------------------------------------------------------------------------------------
# Validation before writing


def _signature(model: onnx.ModelProto) -> list[tuple[str, str, bytes]]:
    inits = {t.name for t in model.graph.initializer}
    sig = [("in", i.name, i.type.SerializeToString()) for i in model.graph.input if i.name not in inits]
    return sig + [("out", o.name, o.type.SerializeToString()) for o in model.graph.output]


def validate_and_save(model: onnx.ModelProto, original: onnx.ModelProto, output: Path, *, what: str) -> onnx.ModelProto:
    """Check ``model`` (ONNX checker + strict shape inference, loads in ONNX Runtime, same input/output signature
    as ``original``) and write it to ``output``. A failure here is a bug in the pass, never a user error."""
    del model.graph.value_info[:]
    try:
        checked = check_model(model, what=what)
        _session(model)
    except Exception as exc:
        raise InternalError(f"{what} produced an invalid model: {exc}") from exc
    if _signature(model) != _signature(original):
        raise InternalError(f"{what} changed the model's input/output signature")
    save_onnx(model, output)
    return checked


def load_indexed(model: "ModelArtifact", nodes: Iterable[str], exclude_nodes: Iterable[str]) -> tuple[onnx.ModelProto, GraphIndex]:
    """The prepared graph of ``model`` and its index, after checking that the ``nodes``/``exclude_nodes`` exist."""
    source = prepare(model.load())
    index = GraphIndex(source)
    index.check_node_names(nodes, "nodes")
    index.check_node_names(exclude_nodes, "exclude_nodes")
    return source, index
