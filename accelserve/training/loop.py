"""A small training loop (Adam, epochs over the ``train`` batches) with progress lines and clean interruption, and
the held-out accuracy every method is judged by. Users with their own loop call the methods' ``prepare``/``loss``
pieces instead."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from accelserve._lazy import require
from accelserve.training.data import TrainingData, split_batch


@dataclass
class EpochLog:
    epoch: int
    loss: float
    accuracy: float
    seconds: float


@dataclass
class FitResult:
    epochs: list[EpochLog] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        return self.epochs[-1].accuracy if self.epochs else None


class ProgressLog:
    """One line per epoch (plain lines in logs; on a terminal a line per batch is rewritten in place)."""

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def batch(self, epoch: int, epochs: int, index: int, loss: float) -> None:
        if self.tty:
            self.stream.write(f"\r\x1b[2K{self.label}: epoch {epoch}/{epochs}, batch {index}, loss {loss:.4f}")
            self.stream.flush()

    def epoch(self, log: EpochLog, epochs: int) -> None:
        prefix = "\r\x1b[2K" if self.tty else ""
        self.stream.write(f"{prefix}{self.label}: epoch {log.epoch}/{epochs} loss {log.loss:.4f} "
                          f"eval accuracy {100 * log.accuracy:.2f}% ({log.seconds:.1f} s)\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


def accuracy(model: Any, batches: Any) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no grad) over ``(inputs, labels)`` batches."""
    torch = require("torch", "training-aware compression")
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            inputs, labels = split_batch(batch)
            pred = model(*inputs).argmax(dim=-1)
            correct += int((pred == labels).sum())
            total += int(labels.numel())
    model.train(was_training)
    return correct / total if total else 0.0


def fit(model: Any, data: TrainingData, loss_fn: Callable[[Any, tuple[Any, ...], Any], Any], *, epochs: int,
        lr: float = 1e-3, progress: ProgressLog | None = None, params: Any = None,
        train_mode: Callable[[Any], None] | None = None) -> FitResult:
    """Adam on ``loss_fn(model, inputs, labels)`` for ``epochs`` passes over ``data.train``; held-out accuracy after
    each epoch. ``train_mode(model)`` puts the model in its training state (default ``model.train()``).
    KeyboardInterrupt (SIGINT, and SIGTERM through the CLI) propagates after the model is back in eval mode."""
    torch = require("torch", "training-aware compression")
    optimizer = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    result = FitResult()
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            (train_mode or (lambda m: m.train()))(model)
            total, count = 0.0, 0
            for index, batch in enumerate(data.train):
                inputs, labels = split_batch(batch)
                optimizer.zero_grad()
                loss = loss_fn(model, inputs, labels)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * int(labels.shape[0])
                count += int(labels.shape[0])
                if progress:
                    progress.batch(epoch, epochs, index, float(loss.detach()))
            log = EpochLog(epoch, total / max(count, 1), accuracy(model, data.eval), time.perf_counter() - start)
            result.epochs.append(log)
            if progress:
                progress.epoch(log, epochs)
    finally:
        model.eval()
    return result


def cross_entropy(model: Any, inputs: tuple[Any, ...], labels: Any) -> Any:
    torch = require("torch", "training-aware compression")
    return torch.nn.functional.cross_entropy(model(*inputs), labels)
