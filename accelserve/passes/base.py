"""The pass interface, after Olive: a pass is a class with a typed config and one ``run`` that returns a new
model artifact. Search spaces are declared (``search_space``), not coded."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from accelserve.artifact import ModelArtifact
from accelserve.errors import InvalidInputError


class PassConfig(BaseModel):
    """Base of every pass's typed config. Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


C = TypeVar("C", bound=PassConfig)


@dataclass
class PassContext:
    """What a pass may use besides the model: a work directory, calibration data, and a log for the report."""

    work_dir: Path
    calibration: Any = None
    #: data held out from calibration for accuracy decisions (``--accuracy-budget``), a CalibrationData: the
    #: user's evaluation data when given; None: a pass that needs it holds out part of its calibration data
    held_out: Any = None
    log: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


class Pass(ABC, Generic[C]):
    name: ClassVar[str]
    config_class: ClassVar[type[PassConfig]] = PassConfig
    #: declared search space: config field -> candidate values (used by schedules/search, never hand-coded loops)
    search_space: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, config: C | dict[str, Any] | None = None) -> None:
        self.config: C = self.make_config(config)

    @classmethod
    def make_config(cls, config: PassConfig | dict[str, Any] | None) -> Any:
        if isinstance(config, cls.config_class):
            return config
        try:
            return cls.config_class(**(config or {}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidInputError(f"invalid options for pass '{cls.name}': {problems}") from None

    @abstractmethod
    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        """Write the optimized model to ``output`` and return its artifact (``model.derive(output, self.name)``)."""
