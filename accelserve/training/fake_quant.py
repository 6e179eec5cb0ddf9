"""Fake quantization for quantization-aware training, in the layout accelserve's ``int8`` pass writes.

Each ``Conv1d/2d/3d`` and ``Linear`` (BatchNorm folded into the preceding conv first, as the exported and simplified
ONNX graph has it) is wrapped in :class:`QuantizedLayer`: its *input activation* is fake-quantized per tensor and its
*weight* per output channel, symmetric, with the ranges the ``int8`` pass will use for that target:

* ``ort-cpu`` on x86 (U8S8): activations uint8 with a zero point (range widened to include 0,
  scale = (max-min)/255), weights int8 in [-127, 127] (or [-64, 64] with ``reduce_range``, ONNX Runtime's 7-bit
  weights on CPUs whose u8 x s8 kernels saturate); on ARM symmetric int8 activations (S8S8), as the pass chooses;
* ``tensorrt`` (S8S8): activations and weights symmetric int8 in [-127, 127] (scale = max|x| / 127, zero point 0).

Gradients pass through the rounding with the straight-through estimator (``torch.fake_quantize_*`` clip the gradient
outside the range). Activation ranges start from calibration data and then follow the training batches as an
exponential moving average (``ema``), or are learned (``learnable``: the scale is a parameter, LSQ-style gradient).
Weight scales are max|w| per channel, recomputed every step, which is what the ``int8`` pass computes on the
exported weights, so the exported model quantizes the same way the training simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from accelserve._lazy import require
from accelserve.errors import InvalidInputError

Target = Literal["ort-cpu", "tensorrt"]
RangeMode = Literal["ema", "learnable"]


@dataclass(frozen=True)
class QuantScheme:
    target: Target = "ort-cpu"
    activation_symmetric: bool = False
    reduce_range: bool = False
    ranges: RangeMode = "ema"
    momentum: float = 0.1
    #: per-output-channel weight scales (the int8 pass's default); False: one scale per weight tensor
    per_channel: bool = True

    @property
    def weight_qmax(self) -> int:
        """ONNX Runtime's symmetric int8 weight range: [-127, 127], or [-64, 64] with reduce_range."""
        return 64 if self.reduce_range else 127


def _nn() -> Any:
    return require("torch", "quantization-aware training").nn


def make_activation_quantizer(scheme: QuantScheme) -> Any:
    torch = require("torch", "quantization-aware training")
    nn = torch.nn

    class ActivationFakeQuant(nn.Module):
        """Per-tensor fake quantization of an activation (see the module docstring for the ranges)."""

        def __init__(self) -> None:
            super().__init__()
            self.scheme = scheme
            self.register_buffer("lo", torch.tensor(0.0))
            self.register_buffer("hi", torch.tensor(0.0))
            self.register_buffer("initialized", torch.tensor(False))
            self.observing = False  # True while calibrating: ranges are min/max over every batch seen
            self.log_scale = nn.Parameter(torch.tensor(0.0), requires_grad=scheme.ranges == "learnable")

        def observe(self, x: Any) -> None:
            lo, hi = x.detach().min(), x.detach().max()
            if not bool(self.initialized):
                self.lo.copy_(lo), self.hi.copy_(hi), self.initialized.fill_(True)
            elif self.observing:
                self.lo.copy_(torch.minimum(self.lo, lo)), self.hi.copy_(torch.maximum(self.hi, hi))
            else:
                m = self.scheme.momentum
                self.lo.mul_(1 - m).add_(m * lo), self.hi.mul_(1 - m).add_(m * hi)

        def qparams(self) -> tuple[Any, Any, int, int]:
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
            if self.scheme.activation_symmetric:
                scale = torch.maximum(-lo, hi) / 127.0
                zero, qmin, qmax = torch.tensor(0, dtype=torch.int32), -127, 127
            else:
                scale = (hi - lo) / 255.0
                zero = torch.clamp(torch.round(-lo / torch.clamp(scale, min=1e-12)), 0, 255).to(torch.int32)
                qmin, qmax = 0, 255
            scale = torch.clamp(scale, min=1e-8)
            if self.scheme.ranges == "learnable":  # the learned factor on the calibrated scale (what is exported)
                scale = scale * torch.exp(self.log_scale)
            return scale, zero, qmin, qmax

        def forward(self, x: Any) -> Any:
            if self.training or self.observing or not bool(self.initialized):
                if self.observing or self.scheme.ranges == "ema" or not bool(self.initialized):
                    self.observe(x)
            if self.observing:
                return x
            scale, zero, qmin, qmax = self.qparams()
            if self.scheme.ranges == "learnable":
                # LSQ: the scale gets a gradient (torch.fake_quantize_per_tensor_affine has none for it), scaled
                # by 1 / sqrt(numel * qmax) so its steps stay commensurate with the weights'
                grad_factor = 1.0 / float(max(x.numel(), 1) * qmax) ** 0.5
                return torch._fake_quantize_learnable_per_tensor_affine(
                    x, scale.reshape(1).float(), zero.reshape(1).float(), qmin, qmax, grad_factor)
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1).float(), zero.reshape(1), qmin, qmax)

    return ActivationFakeQuant()


def fake_quantize_weight(weight: Any, qmax: int, per_channel: bool = True) -> Any:
    """Per-output-channel symmetric fake quantization (axis 0), scale = max|w| / qmax per channel; with
    ``per_channel=False`` one scale max|w| / qmax for the whole tensor (the int8 pass with ``per_channel=false``)."""
    torch = require("torch", "quantization-aware training")
    if not per_channel:
        scale = torch.clamp(weight.detach().abs().max() / qmax, min=1e-12).float().reshape(1)
        return torch.fake_quantize_per_tensor_affine(weight, scale, torch.zeros(1, dtype=torch.int32), -qmax, qmax)
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = torch.clamp(flat.abs().max(dim=1).values / qmax, min=1e-12).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


def make_quantized_layer(layer: Any, scheme: QuantScheme) -> Any:
    torch = require("torch", "quantization-aware training")
    nn = torch.nn
    functional = torch.nn.functional

    class QuantizedLayer(nn.Module):
        """A Conv/Linear whose input and weight are fake-quantized."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = layer
            self.input_quant = make_activation_quantizer(scheme)
            self.qmax = scheme.weight_qmax
            self.per_channel = scheme.per_channel
            #: set by prepare_qat on the model's last layer where the int8 pass quantizes that output too
            self.output_quant: Any = None

        def forward(self, x: Any) -> Any:
            x = self.input_quant(x)
            if self.input_quant.observing:
                y = self.layer(x)
            else:
                w = fake_quantize_weight(self.layer.weight, self.qmax, self.per_channel)
                if isinstance(self.layer, nn.Linear):
                    y = functional.linear(x, w, self.layer.bias)
                else:
                    y = self.layer._conv_forward(x, w, self.layer.bias)
            return self.output_quant(y) if self.output_quant is not None else y

    return QuantizedLayer()


def fold_batchnorm(model: Any) -> Any:
    """Fold every BatchNorm that directly follows a Conv in an ``nn.Sequential`` into that conv (eval statistics),
    replacing the BatchNorm with Identity. Done before QAT so training sees the weights the ONNX graph will have."""
    torch = require("torch", "quantization-aware training")
    nn = torch.nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return model


def prepare_qat(model: Any, scheme: QuantScheme) -> list[Any]:
    """Wrap every Conv/Linear of ``model`` in place; returns the wrappers (in module order)."""
    nn = _nn()
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    wrapped = []

    def visit(parent: Any) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                q = make_quantized_layer(child, scheme)
                setattr(parent, name, q)
                wrapped.append(q)
            else:
                visit(child)

    visit(model)
    if not wrapped:
        raise InvalidInputError("the model has no Conv or Linear layer to quantize")
    if scheme.target == "ort-cpu":
        # ONNX Runtime's CPU layout also quantizes the output of the last Conv/Gemm (the logits, when it is the
        # model's last op); simulate it so training sees, and the export keeps, that rounding
        wrapped[-1].output_quant = make_activation_quantizer(scheme)
    return wrapped


def activation_quantizers(wrappers: list[Any]) -> list[Any]:
    return [q for w in wrappers for q in (w.input_quant, w.output_quant) if q is not None]


def set_observing(wrappers: list[Any], on: bool) -> None:
    for q in activation_quantizers(wrappers):
        q.observing = on


def strip_qat(model: Any) -> Any:
    """Replace every QuantizedLayer by its float layer (trained weights), in place: what is exported."""
    nn = _nn()

    def visit(parent: Any) -> None:
        for name, child in list(parent.named_children()):
            if hasattr(child, "input_quant") and hasattr(child, "layer"):
                setattr(parent, name, child.layer)
            elif isinstance(child, nn.Module):
                visit(child)

    visit(model)
    return model
