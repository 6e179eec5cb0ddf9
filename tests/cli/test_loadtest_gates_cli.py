"""``accelserve loadtest``'s gate handling and exit codes (0 every gate passed, 2 a gate failed, 1 a user error or an
incomplete run), without a server: the load run itself (``runner.run_loadtest``, which needs tritonserver and
Locust and is covered by tests/loadtest/test_e2e_loadtest.py) is replaced by a synthetic result. Everything else is
the real command: argument parsing and defaults, gate evaluation, reports and the exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accelserve.cli.main import main
from accelserve.loadtest import runner
from accelserve.loadtest.results import RunResult
from tests.loadtest.synthetic import make_run

URL = "http://127.0.0.1:9"  # never contacted: the load run is replaced


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the load run (no server here) by a settable synthetic result; records each call."""
    calls: list[Any] = []
    state: dict[str, RunResult] = {"result": make_run([(1, 200, 2.0), (4, 600, 4.0)])}

    def run_loadtest(target: str, model: str, settings: Any, *args: Any, **kwargs: Any) -> RunResult:
        calls.append((target, model, settings))
        return state["result"]

    monkeypatch.setattr(runner, "run_loadtest", run_loadtest)
    calls.append(state)  # calls[0] is the settable state, the rest are calls
    return calls


def _set(fake_run: list[Any], result: RunResult) -> None:
    fake_run[0]["result"] = result


def _loadtest(*extra: str) -> int:
    return main(["loadtest", URL, "m", "--concurrency", "1,4", *extra])


def test_all_gates_pass_exits_0(fake_run: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert _loadtest("--slo", "p99_ms<=1000", "--slo", "throughput>=500") == 0
    out = capsys.readouterr().out
    assert "gates: 3 passed, 0 failed" in out  # the two SLOs and the default max-error-rate 0
    assert len(fake_run) == 2


def test_one_failing_gate_among_passing_ones_exits_2(fake_run: list[Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    assert _loadtest("--slo", "p99_ms<=1000", "--slo", "throughput>=5000", "--json", str(report)) == 2
    assert "gates: 2 passed, 1 failed" in capsys.readouterr().out
    verdicts = {g["name"]: g["passed"] for g in json.loads(report.read_text())["gates"]}
    assert verdicts == {"slo p99_ms<=1000": True, "slo throughput>=5000": False, "max-error-rate 0": True}


def test_every_gate_failing_exits_2(fake_run: list[Any]) -> None:
    _set(fake_run, make_run([(1, 200, 2.0), (4, 600, 4.0)], failures=50))  # ~4 % errors
    assert _loadtest("--slo", "p99_ms<=0.001", "--slo", "throughput>=5000", "--max-error-rate", "1%") == 2


def test_no_gate_but_the_default_passes(fake_run: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert _loadtest() == 0
    assert "PASS  max-error-rate 0" in capsys.readouterr().out


def test_errors_fail_the_default_max_error_rate_of_0(fake_run: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    _set(fake_run, make_run([(1, 200, 2.0)], failures=1))  # one failed request in ~600
    assert _loadtest() == 2  # no --max-error-rate given
    assert "FAIL  max-error-rate 0" in capsys.readouterr().out
    assert _loadtest("--max-error-rate", "1%") == 0
    assert _loadtest("--max-error-rate", "0.0001") == 2


def test_require_stable_passes_on_stable_steps_and_fails_on_an_unstable_one(
    fake_run: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _loadtest("--require-stable") == 0
    assert "PASS  stable: every step reached a stable measurement" in capsys.readouterr().out
    unstable = make_run([(1, 200, 2.0), (4, 600, 4.0)])
    unstable.steps[1].stable = False
    _set(fake_run, unstable)
    assert _loadtest() == 0  # unstable steps are reported but not a failure without --require-stable
    assert _loadtest("--require-stable") == 2
    assert "FAIL  stable: steps [4] did not stabilize" in capsys.readouterr().out


def test_baseline_regression_gates(fake_run: list[Any], tmp_path: Path) -> None:
    baseline = tmp_path / "base.json"
    assert _loadtest("--json", str(baseline)) == 0
    assert _loadtest("--baseline", str(baseline)) == 0  # the same numbers: no regression
    _set(fake_run, make_run([(1, 150, 2.0), (4, 600, 4.0)]))  # throughput at concurrency 1 dropped 25 %
    assert _loadtest("--baseline", str(baseline)) == 2
    assert _loadtest("--baseline", str(baseline), "--max-regression", "30%") == 0


def test_an_incomplete_run_exits_1_even_when_its_gates_pass(
    fake_run: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = make_run([(1, 200, 2.0)])
    partial.complete, partial.abort_reason = False, "the server stopped answering"
    _set(fake_run, partial)
    report = tmp_path / "r.json"
    assert _loadtest("--json", str(report)) == 1
    captured = capsys.readouterr()
    assert "stopped early: the server stopped answering" in captured.err
    assert json.loads(report.read_text())["complete"] is False  # the partial report is still written


@pytest.mark.parametrize("args, phrase", [
    (["--slo", "p99<=5"], "unknown metric 'p99'"),
    (["--max-error-rate", "lots"], "--max-error-rate 'lots'"),
    (["--max-error-rate", "150%"], "must be between 0 and 1"),
    (["--max-regression", "x"], "--max-regression 'x'"),
    (["--regression-metrics", "speed"], "unknown metric 'speed'"),
    (["--baseline", "/nonexistent/base.json"], "no such file"),
])
def test_bad_gate_arguments_exit_1_before_any_load(fake_run: list[Any], capsys: pytest.CaptureFixture[str],
                                                  args: list[str], phrase: str) -> None:
    assert _loadtest(*args) == 1
    assert phrase in capsys.readouterr().err
    assert len(fake_run) == 1  # the load never ran
