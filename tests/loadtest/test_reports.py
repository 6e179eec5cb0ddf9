from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from accelserve.loadtest import reports
from accelserve.loadtest.gates import Slo, evaluate
from accelserve.loadtest.results import RunResult
from tests.loadtest.synthetic import make_run


@pytest.fixture
def run() -> RunResult:
    result = make_run([(1, 200, 2.0), (4, 600, 4.0)])
    result.gates = [g.to_dict() for g in evaluate(result, [Slo.parse("throughput>=5000")], max_error_rate=0.0)]
    return result


def test_json_round_trips_with_stable_keys(run: RunResult, tmp_path: Path) -> None:
    path = reports.write_json(run, tmp_path / "out" / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "accelserve.loadtest/1"
    assert list(data) == ["schema", "complete", "abort_reason", "started_at", "finished_at", "target", "settings",
                          "load_generator", "steps", "gates"]
    step = data["steps"][0]
    for key in ("level", "requests_per_s", "inferences_per_s", "latency_ms", "server", "errors", "error_rate", "stable"):
        assert key in step
    assert set(step["latency_ms"]) == {"avg", "p50", "p90", "p95", "p99", "max"}
    again = RunResult.load(path)
    assert again.to_dict() == run.to_dict()


def test_loading_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"steps": []}')
    with pytest.raises(ValueError, match="schema"):
        RunResult.load(tmp_path / "x.json")


def test_csv_has_one_row_per_step_and_the_documented_columns(run: RunResult, tmp_path: Path) -> None:
    steps_csv, windows_csv = reports.write_csv(run, tmp_path / "csv")
    rows = list(csv.DictReader(steps_csv.open()))
    assert [r["level"] for r in rows] == ["1", "4"]
    assert list(rows[0]) == reports.STEP_COLUMNS
    assert float(rows[1]["inferences_per_s"]) == pytest.approx(run.steps[1].inferences_per_s)
    windows = list(csv.DictReader(windows_csv.open()))
    assert len(windows) == sum(s.windows for s in run.steps)


def test_html_has_the_plot_the_tables_and_the_verdict(run: RunResult, tmp_path: Path) -> None:
    page = reports.write_html(run, tmp_path / "r.html").read_text()
    svg = page[page.index("<svg"): page.index("</svg>") + len("</svg>")]
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 3  # p50, p95, p99
    assert len(root.findall(f"{ns}circle")) == 3 * len(run.steps)
    assert "1 of 2 gates FAILED" in page
    assert page.count("<table>") == 3


def test_html_of_an_incomplete_run_says_so(run: RunResult) -> None:
    run.complete, run.abort_reason = False, "Triton stopped answering"
    assert "INCOMPLETE: Triton stopped answering" in reports.render_html(run)


def test_text_table_flags_incomplete_and_saturated_steps(run: RunResult) -> None:
    run.steps[1].complete = False
    run.steps[0].load_generator_cpu_percent = 85.0
    text = reports.text_table(run)
    assert "INCOMPLETE" in text.splitlines()[3]
    assert "85% CPU: it may have limited this step (try --workers auto)" in text.splitlines()[2]
    assert "CPU" not in text.splitlines()[3]  # 40%: not flagged
