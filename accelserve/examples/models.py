"""Bundled example models with deterministic weights (no downloads).

* :class:`SmallCNN` / :func:`small_cnn`: image classifier, input ``[batch, 3, 32, 32]`` float32 -> logits ``[batch, 10]``.
* :class:`TinyEncoder` / :func:`tiny_encoder`: token ids ``[batch, seq]`` int64 -> mean-pooled ``[batch, 64]``
  from a 2-layer ``nn.TransformerEncoder`` (batch_first, d_model 64).

Use them from the CLI as ``accelserve.examples.models:small_cnn`` with ``--input input:1x3x32x32:float32``, and
``accelserve.examples.models:tiny_encoder`` with ``--input input_ids:2xseq=16:int64`` (see
:data:`accelserve.examples.EXAMPLES`). Importing this module imports torch.
"""

from __future__ import annotations

import math

from accelserve._lazy import require

torch = require("torch", "the bundled example models")
nn = torch.nn

from accelserve.examples import EXAMPLES, example_input_specs  # noqa: E402  (re-exported for convenience)

SEED = 20240601


def _conv_block(cin: int, cout: int) -> "nn.Sequential":
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv+BN+ReLU blocks with pooling, then a linear classifier over 10 classes."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, 16),
            nn.MaxPool2d(2),
            _conv_block(16, 32),
            nn.MaxPool2d(2),
            _conv_block(32, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, input: "torch.Tensor") -> "torch.Tensor":  # noqa: A002 - the ONNX input is named 'input'
        return self.classifier(torch.flatten(self.features(input), 1))


class TinyEncoder(nn.Module):
    """Token embedding + sinusoidal positions -> 2-layer TransformerEncoder -> mean over the sequence."""

    def __init__(self, vocab_size: int = 1000, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 128) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def positions(self, seq_len: int, device: "torch.device") -> "torch.Tensor":
        """Sinusoidal position encodings computed for any length (no maximum sequence length)."""
        pos = torch.arange(seq_len, device=device, dtype=torch.float32).unsqueeze(1)
        freq = torch.exp(
            torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / self.d_model)
        )
        angles = pos * freq
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    def forward(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        x = self.embedding(input_ids) * math.sqrt(self.d_model)
        x = x + self.positions(input_ids.shape[1], input_ids.device)
        return self.norm(self.encoder(x).mean(dim=1))


def _randomize_batchnorm(model: "nn.Module", gen: "torch.Generator") -> None:
    """Give BatchNorm layers non-trivial statistics, as a trained model has (fusion passes then matter)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def small_cnn(seed: int = SEED) -> SmallCNN:
    """A :class:`SmallCNN` with deterministic weights, in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN()
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def tiny_encoder(seed: int = SEED) -> TinyEncoder:
    """A :class:`TinyEncoder` with deterministic weights, in eval mode."""
    torch.manual_seed(seed)
    return TinyEncoder().eval()


__all__ = ["SmallCNN", "TinyEncoder", "small_cnn", "tiny_encoder", "EXAMPLES", "example_input_specs"]
