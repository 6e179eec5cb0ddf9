"""Render a report's ``to_dict()`` as a two-column Markdown table."""

from __future__ import annotations

import json
from typing import Any


class MarkdownReporter:
    name = "markdown"

    def render(self, report: Any) -> str:
        rows = ["| key | value |", "|---|---|"]
        for key, value in report.to_dict().items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            escaped = text.replace("|", "\\|")
            rows.append(f"| {key} | {escaped} |")
        return "\n".join(rows)
