"""Small PyTorch models for the exporter tests (imported by file path, like a user's model.py)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(8, 64)
        self.l2 = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


def mlp() -> MLP:
    return MLP().eval()


mlp_instance = mlp()


class MaskedMean(nn.Module):
    """Two inputs sharing the batch and seq axes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(8, 8)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(tokens) * mask.unsqueeze(-1)
        return h.sum(1) / (mask.sum(1, keepdim=True) + 1.0)


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x * 2.0, "probs": torch.softmax(x, dim=-1)}


class Noisy(nn.Module):
    """Random in forward(): ONNX Runtime's random numbers are not PyTorch's, so verification must fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class FixedBatch(nn.Module):
    """Its code fixes the batch size to 4: a dynamic batch cannot be kept."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(4, -1) * 2.0


class NeedsArgs(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.l = nn.Linear(width, width)


def broken() -> nn.Module:
    raise RuntimeError("factory exploded")


not_a_model = 42


class PairSum(nn.Module):
    """a + b: torch.export learns that a's and b's second axes must be equal."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class LearnedPositions(nn.Module):
    """BERT-style learned positions, sliced from a registered buffer as Hugging Face's BERT does: the sequence
    length is dynamic but at most 32."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(100, 8)
        self.positions = nn.Embedding(32, 8)
        self.register_buffer("position_ids", torch.arange(32).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        return (self.tokens(input_ids) + self.positions(positions).expand(input_ids.shape[0], -1, -1)).mean(dim=1)
