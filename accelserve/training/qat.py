"""Quantization-aware training: fake-quantize, initialise ranges from calibration data, fine-tune.

:func:`qat` returns the fine-tuned fake-quant model; :func:`accelserve.training.export.export_compressed` turns it
into an ONNX Q/DQ model in the ``int8`` pass's layout for the target and verifies it against the fake-quant model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from accelserve._lazy import require
from accelserve.training.data import TrainingData
from accelserve.training.fake_quant import QuantScheme, fold_batchnorm, prepare_qat, set_observing
from accelserve.training.loop import FitResult, ProgressLog, accuracy, cross_entropy, fit


class QATConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Literal["ort-cpu", "tensorrt"] = "ort-cpu"
    #: 7-bit weights for ort-cpu; auto: what the int8 pass decides for this CPU
    reduce_range: bool | Literal["auto"] = "auto"
    #: per-output-channel weight scales (the int8 pass's default); False: per-tensor, as ``--set per_channel=false``
    per_channel: bool = True
    ranges: Literal["ema", "learnable"] = "ema"
    momentum: float = Field(0.1, gt=0, le=1)
    epochs: int = Field(3, ge=0)
    lr: float = Field(1e-4, gt=0)


@dataclass
class QATResult:
    model: Any  #: the fake-quant model after fine-tuning (eval mode)
    scheme: QuantScheme
    float_accuracy: float  #: the original model on the eval data
    ptq_accuracy: float  #: the fake-quant model with calibrated ranges, before fine-tuning (what PTQ would give)
    history: FitResult

    @property
    def accuracy(self) -> float:
        return self.history.final_accuracy if self.history.epochs else self.ptq_accuracy


def scheme_for(config: QATConfig) -> QuantScheme:
    """The int8 pass's layout for the target on this machine, as a fake-quant scheme."""
    from accelserve.passes.quantize_layout import choose_layout

    layout = choose_layout(config.target, reduce_range=config.reduce_range, per_channel=config.per_channel)
    return QuantScheme(target=config.target, activation_symmetric=layout.activation_symmetric,
                       reduce_range=layout.reduce_range, ranges=config.ranges, momentum=config.momentum,
                       per_channel=layout.per_channel)


def calibrate_ranges(model: Any, wrappers: list[Any], data: TrainingData) -> int:
    """Min/max of every quantized activation over the calibration inputs; returns the number of batches seen."""
    torch = require("torch", "quantization-aware training")
    set_observing(wrappers, True)
    seen = 0
    try:
        with torch.no_grad():
            model.eval()
            for inputs in data.calibration_inputs():
                model(*inputs)
                seen += 1
    finally:
        set_observing(wrappers, False)
    return seen


def qat(model: Any, data: TrainingData, config: QATConfig | None = None, *,
        progress: ProgressLog | None = None) -> QATResult:
    """Fold BatchNorm, wrap Conv/Linear with fake quantization, calibrate the ranges, fine-tune ``config.epochs``.

    ``model`` is not changed (a copy is trained)."""
    config = config or QATConfig()
    scheme = scheme_for(config)
    float_accuracy = accuracy(model, data.eval)
    qmodel = fold_batchnorm(copy.deepcopy(model))
    wrappers = prepare_qat(qmodel, scheme)
    if calibrate_ranges(qmodel, wrappers, data) == 0:
        from accelserve.errors import InvalidInputError

        raise InvalidInputError("no calibration batches: the calibration (or train) data is empty")
    ptq_accuracy = accuracy(qmodel, data.eval)
    if progress:
        progress.note(f"float {100 * float_accuracy:.2f}%, fake-quant INT8 before training (PTQ) "
                      f"{100 * ptq_accuracy:.2f}% ({scheme.target}, reduce_range={scheme.reduce_range})")
    history = fit(qmodel, data, cross_entropy, epochs=config.epochs, lr=config.lr, progress=progress)
    return QATResult(qmodel, scheme, float_accuracy, ptq_accuracy, history)
