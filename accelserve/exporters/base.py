"""The exporter plugin interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from accelserve.artifact import ModelArtifact
from accelserve.specs import InputSpec


@dataclass
class ExportOptions:
    """Options every exporter understands."""

    opset: int | None = None  #: None: the exporter's default, clamped to what ONNX Runtime loads
    dynamic_batch: bool = True
    verify: bool = True
    verify_random_inputs: int = 3  #: random inputs checked besides the sample inputs
    precision: str = "fp32"  #: selects the verification tolerances
    atol: float | None = None  #: verification tolerance overrides; None keeps the precision's default
    rtol: float | None = None
    min_cosine: float | None = None
    external_data: bool | None = None  #: None: one file below 2 GB
    factory: str | None = None  #: MODULE:FN building the model when the source is a state-dict checkpoint
    trust_source: bool = False  #: load .pt2/TorchScript archives with torch's own loader (runs code they carry)
    output_names: list[str] | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    artifact: ModelArtifact
    messages: list[str] = field(default_factory=list)  #: what the exporter changed or decided, for the user
    verification: Any = None  #: accelserve.verify.VerificationReport when verified


class Exporter(ABC):
    """Turns a framework model into an ONNX file and verifies it against the framework."""

    name: ClassVar[str]
    #: what ``source`` may be on the command line, for ``--help`` and ``accelserve plugins``
    source_help: ClassVar[str] = ""

    @abstractmethod
    def export(
        self, source: Any, inputs: list[InputSpec], output: Path, options: ExportOptions | None = None
    ) -> ExportResult:
        """Export ``source`` (an in-memory model or a CLI string such as ``MODULE:ATTR`` or a file path)."""

    def load_reference(self, source: Any, options: ExportOptions | None = None) -> "Any":
        """A callable ``feeds -> outputs`` running ``source`` in its own framework, for ``accelserve verify``."""
        raise NotImplementedError(f"exporter '{self.name}' cannot run its source model as a reference")
