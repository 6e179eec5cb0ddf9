"""Reporters turn a report object (anything with ``to_dict()`` and optionally ``table()``) into text.

They register in the ``accelserve.reporters`` entry-point group, so a third party can add e.g. a JUnit or
Markdown reporter and select it with ``--report NAME`` where a command offers it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Protocol


class Report(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Reporter:
    name: ClassVar[str]

    def render(self, report: Report) -> str:
        raise NotImplementedError


class TableReporter(Reporter):
    """Human-readable: the report's own ``table()`` if it has one, else aligned ``key: value`` lines."""

    name = "table"

    def render(self, report: Report) -> str:
        table = getattr(report, "table", None)
        if callable(table):
            return str(table())
        return "\n".join(f"{k}: {v}" for k, v in report.to_dict().items())


class JsonReporter(Reporter):
    """Machine-readable: the report's ``to_dict()`` as indented JSON with sorted keys (stable output)."""

    name = "json"

    def render(self, report: Report) -> str:
        return json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str)


def render(report: Report, reporter: str = "table") -> str:
    """Render ``report`` with the reporter plugin named ``reporter``."""
    from accelserve import plugins

    cls = plugins.load("reporters", reporter)
    return cls().render(report)
