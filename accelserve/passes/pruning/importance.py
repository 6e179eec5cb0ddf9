"""Channel importance: one score per channel class of a group (higher = more important = kept first).

* ``l1`` / ``l2``: the norm of each source's output-channel weights, divided by that source's mean so that coupled
  sources of different scale weigh the same, summed over the coupled sources;
* ``activation``: on calibration data, the energy each channel sends into its consumers,
  ``E[x_c^2] * ||W[:, c]||^2`` summed over the consumers that read it (a channel whose input is small or whose
  outgoing weights are small matters little). It sees what weights alone cannot: BatchNorm scales, dead ReLUs,
  the actual data distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import onnx

from accelserve.passes.pruning.dependency import PruningPlan
from accelserve.passes.pruning.graph import Feeds, GraphIndex, iterate

Importance = Literal["l1", "l2", "activation"]


def _total_ids(plan: PruningPlan) -> int:
    return max((s.base + s.size for s in plan.sources), default=0)


def weight_scores(model: onnx.ModelProto, plan: PruningPlan, norm: Literal["l1", "l2"]) -> np.ndarray:
    """A score per channel id from its source's weights."""
    index = GraphIndex(model)
    scores = np.zeros(_total_ids(plan))
    for s in plan.sources:
        w = index.const(s.weight)
        if w is None:
            continue
        rows = np.moveaxis(w.astype(np.float64), s.weight_axis, 0).reshape(s.size, -1)
        per = np.abs(rows).mean(axis=1) if norm == "l1" else np.sqrt((rows**2).mean(axis=1))
        mean = per.mean()
        scores[s.base:s.base + s.size] = per / mean if mean > 0 else per
    return scores


def activation_scores(model: onnx.ModelProto, plan: PruningPlan, batches: Sequence[Feeds]) -> np.ndarray:
    """A score per channel id from calibration activations and the consumers' weights."""
    index = GraphIndex(model)
    consumer_slices = [s for s in plan.slices if s.role == "consumer"]
    tensors = sorted({index.node(s.node).input[0] for s in consumer_slices})
    energy: dict[str, np.ndarray] = {}
    count = 0
    for out in iterate(model, batches, tensors):
        count += 1
        for name, value in out.items():
            tag = plan.tags[name]
            x = np.moveaxis(value.astype(np.float64), tag.axis, 0).reshape(value.shape[tag.axis], -1)
            energy[name] = energy.get(name, 0.0) + (x**2).mean(axis=1)
    scores = np.zeros(_total_ids(plan))
    for s in consumer_slices:
        node = index.node(s.node)
        w = index.const(node.input[s.input_index])
        if w is None:
            continue
        cols = (np.moveaxis(w.astype(np.float64), s.axis, 0).reshape(s.ids.size, -1) ** 2).sum(axis=1)
        contribution = energy[node.input[0]] / max(count, 1) * cols
        owned = s.ids >= 0
        np.add.at(scores, s.ids[owned], contribution[owned])
    return scores


def class_scores(plan: PruningPlan, id_scores: np.ndarray) -> dict[int, np.ndarray]:
    """Per group: the score of each channel class (the sum over the ids removed together)."""
    return {g.index: np.array([id_scores[c].sum() for c in g.channels]) for g in plan.groups}


def scores(model: onnx.ModelProto, plan: PruningPlan, importance: Importance,
           batches: Sequence[Feeds] = ()) -> dict[int, np.ndarray]:
    if importance == "activation":
        return class_scores(plan, activation_scores(model, plan, batches))
    return class_scores(plan, weight_scores(model, plan, importance))
