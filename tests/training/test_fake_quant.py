"""Fake quantization matches the int8 pass's quantization (ONNX Runtime's formulas), and training can pass through it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from accelserve.training.fake_quant import (  # noqa: E402
    QuantScheme,
    fake_quantize_weight,
    fold_batchnorm,
    make_activation_quantizer,
    prepare_qat,
    set_observing,
    strip_qat,
)


def test_weight_fake_quant_is_ort_per_channel_symmetric():
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType
    from onnx import TensorProto

    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    for reduce_range, qmax in ((False, 127), (True, 64)):
        got = fake_quantize_weight(w, qmax).numpy()
        qmin_ort, qmax_ort = get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=reduce_range, symmetric=True)
        for c in range(6):
            wc = w[c].numpy()
            _, scale = compute_scale_zp(np.float32(wc.min()), np.float32(wc.max()), qmin_ort, qmax_ort, symmetric=True)
            expected = np.clip(np.rint(wc / scale), qmin_ort, qmax_ort) * scale
            np.testing.assert_allclose(got[c], expected, rtol=0, atol=1e-6)


def test_per_tensor_weight_fake_quant_uses_one_scale():
    """per_channel=False (the int8 pass's --set per_channel=false): one scale max|w| / qmax for the whole tensor."""
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    w[0] *= 20  # one channel with large weights: per-tensor rounds the others coarsely
    scale = float(w.abs().max()) / 127
    got = fake_quantize_weight(w, 127, per_channel=False)
    expected = torch.clamp(torch.round(w / scale), -127, 127) * scale
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, fake_quantize_weight(w, 127), atol=1e-4)  # differs from per-channel
    layer = prepare_qat(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)), QuantScheme(per_channel=False))[0]
    assert layer.per_channel is False


@pytest.mark.parametrize("symmetric", [False, True])
def test_activation_ranges_follow_ort(symmetric: bool):
    from onnxruntime.quantization.quant_utils import compute_scale_zp
    from onnx import TensorProto  # noqa: F401

    q = make_activation_quantizer(QuantScheme(activation_symmetric=symmetric))
    q.observing = True
    x = torch.linspace(-0.5, 3.0, 101)
    q(x)
    q.observing = False
    scale, zero, qmin, qmax = q.qparams()
    dtype = np.int8 if symmetric else np.uint8
    zp_ort, scale_ort = compute_scale_zp(np.float32(-0.5), np.float32(3.0), dtype(qmin), dtype(qmax),
                                         symmetric=symmetric)
    assert float(scale) == pytest.approx(float(scale_ort), rel=1e-6)
    assert int(zero) == int(zp_ort)
    assert (qmin, qmax) == ((-127, 127) if symmetric else (0, 255))
    y = q.eval()(x)
    assert torch.allclose(y, x, atol=float(scale) / 2 + 1e-6)  # within half a step inside the range
    assert not torch.equal(y, x)  # but really quantized


def test_gradient_passes_inside_the_range_only():
    q = make_activation_quantizer(QuantScheme(activation_symmetric=True))
    q.observing = True
    q(torch.tensor([-1.0, 1.0]))
    q.observing = False
    q.eval()
    x = torch.tensor([0.3, -0.7, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]


def test_ema_ranges_move_during_training():
    q = make_activation_quantizer(QuantScheme(momentum=0.5))
    q.train()
    q(torch.tensor([0.0, 1.0]))
    q(torch.tensor([0.0, 3.0]))
    assert float(q.hi) == pytest.approx(2.0)  # 0.5 * 1 + 0.5 * 3


def test_fold_prepare_and_strip_keep_the_float_function():
    from accelserve.examples.digits import digits_module

    torch.manual_seed(0)
    model = digits_module(width=4).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(8, 1, 8, 8)
    reference = model(x)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), reference, atol=1e-5)
    wrappers = prepare_qat(folded, QuantScheme())
    assert len(wrappers) == 4  # three convs and the Linear
    set_observing(wrappers, True)
    assert torch.allclose(folded(x), reference, atol=1e-5)  # observing does not quantize
    set_observing(wrappers, False)
    quantized = folded(x)
    assert not torch.allclose(quantized, reference, atol=1e-6)
    assert torch.allclose(quantized, reference, atol=0.2 * float(reference.detach().abs().max()))
    assert torch.allclose(strip_qat(folded)(x), reference, atol=1e-5)


def test_learnable_ranges_train_the_scale_and_export_it():
    """ranges='learnable': the scale gets a gradient (LSQ) and qparams() (what the export writes) includes it."""
    q = make_activation_quantizer(QuantScheme(ranges="learnable"))
    q.observing = True
    q(torch.linspace(0.0, 4.0, 64))
    q.observing = False
    base, *_ = q.qparams()
    q.train()
    x = torch.linspace(0.0, 4.0, 64) + 0.01
    ((q(x) - x * 0.5) ** 2).sum().backward()
    assert q.log_scale.grad is not None and float(q.log_scale.grad) != 0.0
    with torch.no_grad():
        q.log_scale.add_(0.5)
    scale, *_ = q.qparams()
    assert float(scale.detach()) == pytest.approx(float(base.detach()) * float(np.exp(0.5)), rel=1e-5)
