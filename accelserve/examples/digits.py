"""The digits CNN: a small CNN trained here, in seconds, on scikit-learn's bundled 8x8 digits (nothing is
downloaded). The benchmarks and the end-to-end tests of quantization and pruning share it.

Two heads: ``"pool"`` (global average pooling → Linear, compact) and ``"dense"`` (Flatten → Linear → ReLU → Linear,
which exercises channel pruning through Flatten into a dense layer). Input ``x``: ``[batch, 1, 8, 8]`` float32 in
[0, 1]; output: logits ``[batch, 10]``. Importing this module imports neither torch nor scikit-learn.

:func:`digits_resnet` is a ResNet-style CNN (basic blocks, 1x1 projection shortcuts) trained the same way on the
digits upsampled to ``size`` x ``size``: a bigger residual model whose accuracy figures mean something (a
random-weight ResNet gives one class for every input and proves only speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from accelserve._lazy import require

INPUT_NAME = "x"
Head = Literal["pool", "dense"]


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_data(seed: int = 0) -> DigitsData:
    """scikit-learn's 1797 digits scaled to [0, 1] as ``[n, 1, 8, 8]`` float32; a stratified 70/30 split."""
    datasets = require("sklearn.datasets", "the digits data set (scikit-learn's bundled digits)")
    model_selection = require("sklearn.model_selection", "the digits data set")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y)
    return DigitsData(x_train, y_train, x_test, y_test)


def digits_module(width: int = 16, head: Head = "pool") -> Any:
    """Three Conv-BN-ReLU blocks (``width``, 2×, 4× channels, a 2×2 max-pool after the second) and the chosen head."""
    nn = require("torch", "building the digits CNN").nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    body = [*block(1, width), *block(width, 2 * width), nn.MaxPool2d(2), *block(2 * width, 4 * width)]
    if head == "pool":
        tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10)]
    elif head == "dense":
        tail = [nn.Flatten(), nn.Linear(4 * width * 16, 128), nn.ReLU(), nn.Linear(128, 10)]
    else:
        raise ValueError(f"unknown head {head!r}: 'pool' or 'dense'")
    return nn.Sequential(*body, *tail)


def train_digits_cnn(data: DigitsData, *, width: int = 16, head: Head = "pool", epochs: int = 15,
                     seed: int = 0) -> Any:
    """Train with Adam (lr 3e-3, batch 64) on ``data.x_train``; returns the module in eval mode."""
    torch = require("torch", "training the digits CNN")
    torch.manual_seed(seed)
    return fit_classifier(digits_module(width, head), data.x_train, data.y_train, epochs=epochs, seed=seed)


def fit_classifier(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float = 3e-3, seed: int = 0) -> Any:
    """Adam (batch 64, seeded shuffling) on cross-entropy over ``(x, y)``; returns the module in eval mode. The one
    training recipe of the bundled examples and the benchmarks."""
    torch = require("torch", "training an example model")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def digits_cnn(path: str | Path, *, width: int = 16, head: Head = "pool", epochs: int = 15,
               seed: int = 0) -> tuple[Path, DigitsData]:
    """Train the digits CNN and export it to ``path`` with accelserve's (verified) torch exporter."""
    from accelserve.exporters.torch_exporter import export_torch

    data = digits_data(seed)
    model = train_digits_cnn(data, width=width, head=head, epochs=epochs, seed=seed)
    path = Path(path)
    export_torch(model, {INPUT_NAME: data.x_test[:4]}, path, inputs=[f"{INPUT_NAME}:4x1x8x8:float32"])
    return path, data


def top1_accuracy(model_path: str | Path, x: np.ndarray, y: np.ndarray, threads: int | None = None) -> float:
    """Held-out top-1 accuracy of an ONNX digits model under ONNX Runtime."""
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

    session = OnnxRuntimeSession(model_path, threads=threads)
    name = session.inputs[0].name
    logits = np.concatenate([next(iter(session.run({name: x[i:i + 256]}).values())) for i in range(0, len(x), 256)])
    return float(np.mean(logits.argmax(axis=-1) == y))


def digits_training_data(batch_size: int = 64, seed: int = 0) -> Any:
    """The digits split as accelserve.training's data contract (train/eval DataLoaders) for ``--train``."""
    from accelserve.training.data import TrainingData, numpy_loader

    data = digits_data(seed)
    return TrainingData(train=numpy_loader(data.x_train, data.y_train, batch_size, seed=seed),
                        eval=numpy_loader(data.x_test, data.y_test, 256, shuffle=False), input_names=[INPUT_NAME])


def upsample_digits(data: DigitsData, size: int) -> DigitsData:
    """The digits resized from 8x8 to ``size`` x ``size`` (bilinear), still in [0, 1]."""
    torch = require("torch", "upsampling the digits")

    def up(x: np.ndarray) -> np.ndarray:
        t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                            align_corners=False)
        return t.clamp(0, 1).numpy().astype(np.float32)

    return DigitsData(up(data.x_train), data.y_train, up(data.x_test), data.y_test)


def digits_resnet_module(widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1) -> Any:
    """Stem Conv-BN-ReLU, then per width ``blocks`` basic blocks (stride 2 and a 1x1 projection shortcut when the
    stage changes), global average pooling, Linear -> 10 logits."""
    torch = require("torch", "building the digits ResNet")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            identity = x if self.down is None else self.down(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + identity)

    layers: list[Any] = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    cin = widths[0]
    for i, width in enumerate(widths):
        for b in range(blocks):
            layers.append(Block(cin, width, 2 if (i > 0 and b == 0) else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def digits_resnet(path: str | Path, *, size: int = 16, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1,
                  epochs: int = 8, seed: int = 0) -> tuple[Path, DigitsData]:
    """Train the digits ResNet on the upsampled digits (Adam, lr 3e-3, batch 64, seeded; seconds on a CPU) and
    export it to ``path``; returns the path and the upsampled data split (input ``x``: ``[batch, 1, size, size]``)."""
    torch = require("torch", "training the digits ResNet")
    from accelserve.exporters.torch_exporter import export_torch

    data = upsample_digits(digits_data(seed), size)
    torch.manual_seed(seed)
    model = fit_classifier(digits_resnet_module(widths, blocks), data.x_train, data.y_train, epochs=epochs, seed=seed)
    path = Path(path)
    export_torch(model, {INPUT_NAME: data.x_test[:4]}, path, inputs=[f"{INPUT_NAME}:4x1x{size}x{size}:float32"])
    return path, data
