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
from accelserve.loadtest.results import RunResult, SweepSettings
from accelserve.loadtest.runner import RequestOptions
from tests.loadtest.synthetic import make_run

URL = "http://127.0.0.1:9"  # never contacted: the load run is replaced


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the load run (no server here) by a settable synthetic result; records each call."""
    calls: list[Any] = []
    state: dict[str, RunResult] = {"result": make_run([(1, 200, 2.0), (4, 600, 4.0)])}

    def run_loadtest(target: str, model: str, settings: Any, *args: Any, **kwargs: Any) -> RunResult:
        calls.append((target, model, settings, kwargs))
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


def test_default_settings_reach_the_load_run(fake_run: list[Any]) -> None:
    assert main(["loadtest", URL, "m"]) == 0
    [(target, model, settings, kwargs)] = fake_run[1:]
    assert (target, model) == (URL, "m")
    assert settings == SweepSettings(mode="concurrency", levels=(1,), rate_users=16, warmup_s=2.0, window_s=2,
                                     stability_tolerance=0.10, stability_windows=3, max_step_s=30.0,
                                     fixed_duration_s=None, workers=0, request_timeout_s=30.0)
    assert kwargs == {"protocol": None, "request": RequestOptions(), "connect_timeout_s": 5.0,
                      "server_timeout_s": 120.0, "work_dir": None}


def test_given_settings_reach_the_load_run(fake_run: list[Any], tmp_path: Path) -> None:
    assert main(["loadtest", URL, "m", "--rate", "10,20.5", "--rate-users", "4", "--workers", "2", "--duration", "5",
                 "--warmup", "0", "--window", "1", "--stability", "20%", "--stable-windows", "2",
                 "--max-step-time", "9", "--batch", "4", "--shape", "x=4x3", "--range", "x=0:5", "--seed", "3",
                 "--json-data", "--request-timeout", "7", "--timeout", "2", "--server-timeout", "60",
                 "--protocol", "grpc", "--work-dir", str(tmp_path)]) == 0
    [(_, _, settings, kwargs)] = fake_run[1:]
    assert settings == SweepSettings(mode="rate", levels=(10.0, 20.5), rate_users=4, warmup_s=0.0, window_s=1,
                                     stability_tolerance=0.20, stability_windows=2, max_step_s=9.0,
                                     fixed_duration_s=5, workers=2, request_timeout_s=7.0)
    assert kwargs == {"protocol": "grpc", "connect_timeout_s": 2.0, "server_timeout_s": 60.0, "work_dir": str(tmp_path),
                      "request": RequestOptions(batch=4, shapes={"x": (4, 3)}, ranges={"x": (0.0, 5.0)},
                                                binary_data=False, seed=3, request_timeout_s=7.0)}
    assert main(["loadtest", URL, "m", "--concurrency", "2,8", "--stability", "0.05"]) == 0
    settings = fake_run[-1][2]
    assert (settings.mode, settings.levels, settings.stability_tolerance) == ("concurrency", (2, 8), 0.05)


@pytest.mark.parametrize("args", [
    ["--rate-users", "1"], ["--duration", "1"], ["--window", "1"], ["--stable-windows", "2"], ["--warmup", "0"],
    ["--max-step-time", "0.5"], ["--stability", "99%"], ["--stability", "0.01"], ["--max-error-rate", "100%"],
    ["--max-error-rate", "1"], ["--max-error-rate", "0%"], ["--rate", "0.5"], ["--concurrency", "1"],
])
def test_smallest_and_largest_allowed_values_are_accepted(fake_run: list[Any], args: list[str]) -> None:
    assert main(["loadtest", URL, "m", *args]) == 0


@pytest.mark.parametrize("args, message", [
    (["--rate-users", "0"], "--rate-users must be >= 1, got 0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--duration", "0"], "--duration must be a whole number of seconds >= 1, got 0"),
    (["--window", "0"], "--window must be >= 1, --stable-windows >= 2, --warmup >= 0, --max-step-time > 0"),
    (["--stable-windows", "1"], "--window must be >= 1, --stable-windows >= 2, --warmup >= 0, --max-step-time > 0"),
    (["--warmup", "-1"], "--window must be >= 1, --stable-windows >= 2, --warmup >= 0, --max-step-time > 0"),
    (["--max-step-time", "0"], "--window must be >= 1, --stable-windows >= 2, --warmup >= 0, --max-step-time > 0"),
    (["--stability", "0%"], "--stability '0%' must be between 0% and 100%"),
    (["--stability", "100%"], "--stability '100%' must be between 0% and 100%"),
    (["--stability", "tight"], "--stability 'tight' is not a percentage like 10% or a fraction like 0.1"),
    (["--max-error-rate", "101%"], "--max-error-rate '101%' must be between 0 and 1 (or 0% and 100%)"),
    (["--max-error-rate", "-0.1"], "--max-error-rate '-0.1' must be between 0 and 1 (or 0% and 100%)"),
    (["--concurrency", "0"], "--concurrency '0' needs positive values, e.g. --concurrency 1,4,16"),
    (["--concurrency", ","], "--concurrency ',' needs positive values, e.g. --concurrency 1,4,16"),
    (["--concurrency", "1.5"], "--concurrency '1.5' needs whole numbers of concurrent requests"),
    (["--rate", "a,b"], "--rate 'a,b' is not a comma-separated list of numbers"),
    (["--rate", "0"], "--rate '0' needs positive values, e.g. --rate 1,4,16"),
    (["--regression-metrics", "p99_ms,fast"], "--regression-metrics: unknown metric 'fast'"),
])
def test_out_of_range_settings_are_user_errors(fake_run: list[Any], capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    assert main(["loadtest", URL, "m", *args]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"error: {message}"
    assert len(fake_run) == 1


def test_stability_as_a_percentage_is_divided_by_100(fake_run: list[Any]) -> None:
    assert main(["loadtest", URL, "m", "--stability", "50%"]) == 0
    assert fake_run[-1][2].stability_tolerance == 0.5
