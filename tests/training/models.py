"""Small trained models for the training-aware compression tests (scikit-learn's digits, seeded)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=2)
def _trained(width: int, epochs: int) -> Any:
    from accelserve.examples.digits import digits_data, train_digits_cnn

    return train_digits_cnn(digits_data(), width=width, epochs=epochs)


def trained_digits() -> Any:
    """The digits CNN (width 8, pool head) trained for 6 epochs: a 0-argument factory for the CLI."""
    import copy

    return copy.deepcopy(_trained(8, 6))
