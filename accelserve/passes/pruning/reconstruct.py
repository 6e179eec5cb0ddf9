"""Least-squares reconstruction after channel removal (no training).

For each consumer that lost input channels (Conv with group 1, Gemm, MatMul), in graph order, refit its weights
(and bias) so that, on calibration data, its output from the *pruned* model's input matches the *original* model's
output on the channels it keeps: ``min ||X' W'^T + b' - Y||^2 + lambda ||W'||^2``. Using the pruned model's
inputs (refit in order) lets each layer also correct the error accumulated before it. Convolutions are unfolded
(im2col) on a random subset of output positions. A refit is kept only if it lowers the error on held-out rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from accelserve.passes.pruning.dependency import PruningPlan
from accelserve.passes.pruning.graph import Feeds, GraphIndex, attr, iterate, replace_initializer, unique_name
from accelserve.passes.pruning.surgery import kept_positions


@dataclass
class LayerFit:
    node: str
    rows: int
    features: int
    error_before: float  #: held-out relative error of the consumer's output with the pruned weights
    error_after: float  #: ... with the refit weights
    accepted: bool
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def refit_nodes(plan: PruningPlan, removed: np.ndarray) -> list[str]:
    """Consumers that lost input channels, in graph order."""
    out: list[str] = []
    for s in plan.slices:
        if s.role == "consumer" and s.node not in out and np.isin(s.ids, removed).any():
            out.append(s.node)
    return out


def _conv_pads(node: onnx.NodeProto, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> list[int]:
    rank = len(spatial)
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(rank):
            out = -(-spatial[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin + end
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    return list(attr(node, "pads", [0] * (2 * rank)))


def _conv_rows(node: onnx.NodeProto, x: np.ndarray, y: np.ndarray, kernel: Sequence[int], rows: np.ndarray | int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unfolded input patches and the matching outputs at a random subset of output positions."""
    if x.ndim == 3:  # 1-D convolution: treat as 2-D with height 1
        x, y, kernel = x[:, :, None, :], y[:, :, None, :], (1, *kernel)
    spatial = x.shape[2:]
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    if len(strides) == 1:
        strides, dilations = [1, *strides], [1, *dilations]
    pads = _conv_pads(node, spatial, kernel, strides, dilations) if x.ndim == 4 and len(kernel) == 2 else None
    if pads is None:
        raise ValueError("only 1-D and 2-D convolutions are refit")
    if len(pads) == 2:
        pads = [0, pads[0], 0, pads[1]]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    eff = [(kernel[i] - 1) * dilations[i] + 1 for i in range(2)]
    windows = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    n, _, ho, wo = y.shape
    total = n * ho * wo
    pick = rng.choice(total, size=min(int(rows), total), replace=False) if int(rows) < total else np.arange(total)
    bi, rem = np.divmod(pick, ho * wo)
    hi, wi = np.divmod(rem, wo)
    a = windows[bi, :, hi, wi].reshape(pick.size, -1)
    t = y[bi, :, hi, wi]
    return a, t


def _solve(a: np.ndarray, t: np.ndarray, ridge: float, intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares; returns (W [out, features], b [out])."""
    a64 = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1) if intercept else a.astype(np.float64)
    gram = a64.T @ a64
    lam = ridge * max(float(np.mean(np.diag(gram))), 1e-12)
    gram[np.diag_indices_from(gram)] += lam
    sol = np.linalg.solve(gram, a64.T @ t.astype(np.float64))
    if intercept:
        return sol[:-1].T, sol[-1]
    return sol.T, np.zeros(t.shape[1])


def _error(a: np.ndarray, t: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    pred = a.astype(np.float64) @ w.T + b
    return float(np.linalg.norm(pred - t) / max(np.linalg.norm(t), 1e-12))


class _Layer:
    """The refit view of one consumer: its rows, its current weights as a matrix, and how to write them back."""

    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto) -> None:
        self.model, self.node = model, node
        index = GraphIndex(model)
        self.w = index.const(node.input[1])
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        self.bias = index.const(bias_name) if bias_name else None
        self.alpha = float(attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        self.beta = float(attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
        self.trans_b = int(attr(node, "transB", 0))
        if bias_name and self.bias is None:
            raise ValueError("its bias is computed, not a constant")
        rows_out = node.op_type == "Conv" or (node.op_type == "Gemm" and self.trans_b)
        out = self.w.shape[0] if rows_out else self.w.shape[1]
        #: fit a per-channel bias too (Conv, and Gemm whose C is absent or per-channel)
        self.intercept = node.op_type == "Conv" or (
            node.op_type == "Gemm" and (self.bias is None or (self.bias.ndim == 1 and self.bias.size == out)))

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.w.astype(np.float64)
        if self.node.op_type == "Conv":
            mat = w.reshape(w.shape[0], -1)
        elif self.node.op_type == "Gemm":
            mat = (w if self.trans_b else w.T) * self.alpha
        else:
            mat = w.T
        out = mat.shape[0]
        bias = np.zeros(out) if self.bias is None else np.broadcast_to(self.bias.astype(np.float64) * self.beta, (out,))
        return mat, np.array(bias)

    def rows(self, x: np.ndarray, y: np.ndarray, kept_out: np.ndarray, max_rows: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        y = np.take(y, kept_out, axis=1 if self.node.op_type != "MatMul" else y.ndim - 1)
        if self.node.op_type == "Conv":
            return _conv_rows(self.node, x, y, self.w.shape[2:], max_rows, rng)
        if self.node.op_type == "Gemm" and int(attr(self.node, "transA", 0)):
            x = x.T
        a, t = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if a.shape[0] > max_rows:
            pick = rng.choice(a.shape[0], size=max_rows, replace=False)
            a, t = a[pick], t[pick]
        return a, t

    def write(self, mat: np.ndarray, bias: np.ndarray) -> None:
        node = self.node
        if node.op_type == "Conv":
            replace_initializer(self.model, node.input[1], mat.reshape(self.w.shape))
        elif node.op_type == "Gemm":
            replace_initializer(self.model, node.input[1], (mat if self.trans_b else mat.T) / self.alpha)
        else:
            replace_initializer(self.model, node.input[1], mat.T)
        if not self.intercept:
            return
        value = (bias / self.beta).astype(self.w.dtype)
        if self.bias is not None:
            replace_initializer(self.model, node.input[2], value)
        elif np.any(bias != 0):
            name = unique_name(self.model, f"{node.name}_bias")
            self.model.graph.initializer.append(numpy_helper.from_array(value, name))
            if len(node.input) == 2:
                node.input.append(name)
            else:
                node.input[2] = name


def _collect_rows(original: onnx.ModelProto, current: onnx.ModelProto, batches: Sequence[Feeds], layer: _Layer,
                  target: str, kept_out: np.ndarray | None, max_rows: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rows (pruned-model input patches, original outputs) sampled batch by batch, so memory stays bounded."""
    per_batch = max(1, -(-max_rows // max(len(batches), 1)))
    x_name = layer.node.input[0]
    parts_a, parts_t = [], []
    for want, got in zip(iterate(original, batches, [target]), iterate(current, batches, [x_name])):
        y = want[target]
        keep = kept_out if kept_out is not None else np.arange(y.shape[-1 if layer.node.op_type == "MatMul" else 1])
        a, t = layer.rows(got[x_name], y, keep, per_batch, rng)
        parts_a.append(a)
        parts_t.append(t)
    return np.concatenate(parts_a), np.concatenate(parts_t)


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, plan: PruningPlan, removed: np.ndarray,
                batches: Sequence[Feeds], *, ridge: float = 1e-3, max_rows: int = 20000, seed: int = 0
                ) -> tuple[onnx.ModelProto, list[LayerFit]]:
    """Refit every consumer that lost input channels; returns the new model and one :class:`LayerFit` each."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    names = refit_nodes(plan, removed)
    orig_index = GraphIndex(original)
    sources = {s.node: s for s in plan.sources}
    fits: list[LayerFit] = []
    for name in names:
        node = next(n for n in model.graph.node if n.name == name)
        target = orig_index.node(name).output[0]
        try:
            layer = _Layer(model, node)
            src = sources.get(name)
            kept_out = kept_positions(np.arange(src.base, src.base + src.size), removed) if src else None
            a, t = _collect_rows(original, model, batches, layer, target, kept_out, max_rows, rng)
        except ValueError as exc:
            fits.append(LayerFit(name, 0, 0, float("nan"), float("nan"), False, f"not refit: {exc}"))
            continue
        split = max(1, int(0.8 * a.shape[0])) if a.shape[0] > 4 else a.shape[0]
        order = rng.permutation(a.shape[0])
        fit_rows, held = order[:split], (order[split:] if split < a.shape[0] else order)
        mat, bias = layer.matrix()
        before = _error(a[held], t[held], mat, bias)
        if layer.intercept:
            new_mat, new_bias = _solve(a[fit_rows], t[fit_rows], ridge, True)
        else:  # the bias stays as it is: fit the weights to what remains
            new_mat, _ = _solve(a[fit_rows], t[fit_rows] - bias, ridge, False)
            new_bias = bias
        after = _error(a[held], t[held], new_mat, new_bias)
        accepted = bool(np.isfinite(after) and after < before)
        if accepted:
            layer.write(new_mat, new_bias)
        fits.append(LayerFit(name, int(a.shape[0]), int(a.shape[1]), before, after, accepted,
                             "" if accepted else "kept the pruned weights (refit did not lower held-out error)"))
    return model, fits
