"""One exception hierarchy.

``AccelserveError`` and its subclasses are *user* errors: something about the input, the environment or the
request is wrong, and the message says what failed, why, and what to do. The CLI prints the message and exits 1,
without a traceback. Anything else that escapes is a bug (``InternalError`` or a plain exception): the CLI shows
its traceback. Nothing is ever downgraded to a warning.
"""

from __future__ import annotations


class AccelserveError(Exception):
    """A user-facing error: bad input, missing dependency, unusable environment."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InvalidInputError(AccelserveError):
    """An argument, file or value given by the user is wrong."""


class InvalidModelError(AccelserveError):
    """A model file cannot be read, is broken, or fails the ONNX checker."""


class MissingDependencyError(AccelserveError):
    """An optional dependency (torch, tensorflow, tensorrt, ...) is not installed."""


class PluginError(AccelserveError):
    """A plugin is unknown or failed to load."""


class ExportError(AccelserveError):
    """Exporting a model from its source framework failed."""


class VerificationError(AccelserveError):
    """Numerical verification found outputs out of tolerance."""


class RepositoryError(AccelserveError):
    """A Triton model repository is invalid, or writing to it failed."""


class ServerError(AccelserveError):
    """Starting, reaching or talking to a Triton server failed."""


class OptimizationError(AccelserveError):
    """An optimization pass cannot be applied to this model with these settings."""


class AccuracyBudgetError(OptimizationError):
    """The optimized model misses its ``--accuracy-budget`` on held-out data: a failed gate (exit 2), and the
    output model is not written."""

    exit_code = 2


class InternalError(Exception):
    """A bug in accelserve. Not a user error: the CLI shows its traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (what CI systems send on cancel). A KeyboardInterrupt, so every path that cleans up after
    Ctrl-C (``finally``, ``except KeyboardInterrupt``, context managers) runs for it too; the CLI exits 143."""

    signal_name = "SIGTERM"

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


def interruption_reason(exc: BaseException) -> str:
    """'terminated (SIGTERM)' or 'interrupted (SIGINT)', for a KeyboardInterrupt that stopped a run."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (SIGINT)"
