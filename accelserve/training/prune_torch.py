"""Structured channel pruning of torch modules, for prune → fine-tune and for making a distillation student.

Scope, stated plainly: chains of layers (``nn.Sequential``, nested ones flattened) of Conv (groups 1), BatchNorm,
element-wise activations, pooling, Dropout/Identity, Flatten and Linear — the coupling rules of the ONNX-level
``prune-channels`` pass for that family: a Conv's output channels are removed together with the following
BatchNorm's entries and the next Conv's input channels, or, through Flatten, the next Linear's input features
(``channels x spatial`` blocks); hidden Linear units likewise. The last layer (the classes) is never pruned.
Residual connections, concatenations and grouped convolutions need the ONNX-level pass's dependency analysis
(``accelserve optimize --recipe prune-channels``, training-free) or a student you give: they are refused with that
hint rather than pruned wrongly.

Channel importance: L1 norm of each filter, scaled by the following BatchNorm's |gamma| / sqrt(var + eps) (what
the channel contributes after normalisation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from accelserve._lazy import require
from accelserve.errors import InvalidInputError

_PASSTHROUGH = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish", "MaxPool1d",
                "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
                "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool2d", "Dropout", "Identity")


@dataclass
class PruneSummary:
    layers: list[tuple[str, int, int]]  #: (layer, channels before, after)

    def describe(self) -> str:
        return ", ".join(f"{name} {a}->{b}" for name, a, b in self.layers)


def _flatten(model: Any, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(path, module, parent, attribute) of every leaf, in order; refuses what is not a plain chain."""
    nn = require("torch", "structured pruning of torch modules").nn
    if not isinstance(model, nn.Sequential):
        raise InvalidInputError(
            f"torch-level channel pruning handles nn.Sequential chains; {prefix or 'the model'} is "
            f"{type(model).__name__}",
            hint="give a student model (--student MODULE:FN), or prune the exported ONNX model with "
                 "`accelserve optimize --recipe prune-channels` (handles residuals, concat, depthwise)")
    out = []
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out += _flatten(child, path)
        else:
            out.append((path, child, model, name))
    return out


def _importance(conv: Any, bn: Any) -> Any:
    torch = require("torch", "structured pruning of torch modules")
    weight = conv.weight.detach()
    score = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
    if bn is not None:
        score = score * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return score


def prune_channels(model: Any, ratio: float, *, min_channels: int = 1) -> tuple[Any, PruneSummary]:
    """A copy of ``model`` with ``ratio`` of the output channels of every prunable Conv/Linear removed."""
    torch = require("torch", "structured pruning of torch modules")
    nn = torch.nn
    if not 0 <= ratio < 1:
        raise InvalidInputError(f"pruning ratio must be in [0, 1), got {ratio}")
    model = copy.deepcopy(model)
    leaves = _flatten(model)
    kinds = {i: type(m).__name__ for i, (_, m, _, _) in enumerate(leaves)}
    weighted = [i for i, (_, m, _, _) in enumerate(leaves) if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                                             nn.Linear))]
    for i, (path, m, _, _) in enumerate(leaves):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups != 1:
            raise InvalidInputError(f"{path} is a grouped/depthwise convolution, which this pruning does not couple",
                                    hint="use `accelserve optimize --recipe prune-channels` on the ONNX model")
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Flatten,
                              nn.modules.batchnorm._BatchNorm)) and kinds[i] not in _PASSTHROUGH:
            raise InvalidInputError(f"{path} ({kinds[i]}) is not a layer this pruning knows how channels pass through",
                                    hint="give a student model, or prune the ONNX model with prune-channels")
    summary = []
    for pos, idx in enumerate(weighted[:-1]):  # the last weighted layer produces the outputs: never pruned
        path, layer, _, _ = leaves[idx]
        bn = next((leaves[j][1] for j in range(idx + 1, weighted[pos + 1])
                   if isinstance(leaves[j][1], nn.modules.batchnorm._BatchNorm)), None)
        channels = layer.weight.shape[0]
        keep_n = max(min_channels, channels - int(round(ratio * channels)))
        if keep_n == channels:
            continue
        keep = torch.sort(torch.topk(_importance(layer, bn), keep_n).indices).values
        _select_out(layer, keep)
        if bn is not None:
            _select_bn(bn, keep)
        consumer = leaves[weighted[pos + 1]][1]
        flattened = any(isinstance(leaves[j][1], nn.Flatten) for j in range(idx + 1, weighted[pos + 1]))
        _select_in(consumer, keep, channels, flattened)
        summary.append((path, channels, keep_n))
    return model, PruneSummary(summary)


def _select_out(layer: Any, keep: Any) -> None:
    nn = require("torch", "structured pruning").nn
    layer.weight = nn.Parameter(layer.weight.detach()[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[keep].clone())
    if hasattr(layer, "out_channels"):
        layer.out_channels = len(keep)
    else:
        layer.out_features = len(keep)


def _select_bn(bn: Any, keep: Any) -> None:
    nn = require("torch", "structured pruning").nn
    if bn.affine:
        bn.weight = nn.Parameter(bn.weight.detach()[keep].clone())
        bn.bias = nn.Parameter(bn.bias.detach()[keep].clone())
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    bn.num_features = len(keep)


def _select_in(layer: Any, keep: Any, channels: int, flattened: bool) -> None:
    torch = require("torch", "structured pruning")
    nn = torch.nn
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        if flattened:
            block = weight.shape[1] // channels  # Flatten of [C, *spatial]: each channel owns a contiguous block
            if block * channels != weight.shape[1]:
                raise InvalidInputError(f"Linear in_features {weight.shape[1]} is not a multiple of {channels} channels")
            cols = (keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
        else:
            cols = keep
        layer.weight = nn.Parameter(weight[:, cols].clone())
        layer.in_features = len(cols)
    else:
        layer.weight = nn.Parameter(weight[:, keep].clone())
        layer.in_channels = len(keep)


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
