from __future__ import annotations

import pytest

from accelserve.errors import InvalidInputError
from accelserve.loadtest.gates import Slo, check_regression, check_slo, evaluate, parse_regression, summary
from tests.loadtest.synthetic import make_run

RUN = make_run([(1, 200, 2.0), (4, 600, 4.0), (16, 900, 12.0)])


@pytest.mark.parametrize("text, expected", [
    ("p99_ms<=50", Slo("p99_ms", "<=", 50.0)),
    ("throughput >= 200", Slo("throughput", ">=", 200.0)),
    ("error_rate<=1%", Slo("error_rate", "<=", 0.01)),
    ("p95_ms<20@16", Slo("p95_ms", "<", 20.0, 16.0)),
])
def test_parse(text: str, expected: Slo) -> None:
    assert Slo.parse(text) == expected


@pytest.mark.parametrize("text", ["p99<=50", "p99_ms=50", "throughput>=fast", "p99_ms<=", ""])
def test_parse_rejects_with_a_user_error(text: str) -> None:
    with pytest.raises(InvalidInputError):
        Slo.parse(text)


def test_upper_bounds_must_hold_at_every_step_and_report_the_worst() -> None:
    failing = check_slo(RUN, Slo.parse("p99_ms<=10"))
    assert not failing.passed and "concurrency 16" in failing.detail
    assert check_slo(RUN, Slo.parse("p99_ms<=1000")).passed


def test_lower_bounds_must_hold_at_the_best_step() -> None:
    assert check_slo(RUN, Slo.parse("throughput>=800")).passed  # step 16 reaches it, step 1 does not
    gate = check_slo(RUN, Slo.parse("throughput>=5000"))
    assert not gate.passed and "concurrency 16" in gate.detail


def test_a_gate_pinned_to_a_level_looks_only_there() -> None:
    assert check_slo(RUN, Slo.parse("p99_ms<=10@1")).passed
    assert not check_slo(RUN, Slo.parse("p99_ms<=10@16")).passed
    missing = check_slo(RUN, Slo.parse("p99_ms<=10@64"))
    assert not missing.passed and "no measured step" in missing.detail


def test_throughput_counts_the_batch_size() -> None:
    batched = make_run([(4, 100, 5.0)], batch=8)
    assert batched.steps[0].inferences_per_s == pytest.approx(8 * batched.steps[0].requests_per_s)
    assert check_slo(batched, Slo.parse("throughput>=700")).passed
    assert not check_slo(batched, Slo.parse("rps>=700")).passed


def test_errors_fail_the_default_zero_error_rate_gate() -> None:
    with_errors = make_run([(1, 200, 2.0)], failures=3)
    [gate] = evaluate(with_errors, max_error_rate=0.0)
    assert not gate.passed
    [gate] = evaluate(with_errors, max_error_rate=0.05)
    assert gate.passed
    assert evaluate(with_errors) == []  # the library has no default gate; the CLI's default 0 is tested in
    # tests/cli/test_loadtest_gates_cli.py


def test_regression_against_a_baseline() -> None:
    slower = make_run([(1, 150, 2.0), (4, 590, 4.0), (16, 900, 20.0)])
    gates = {g.name: g for g in check_regression(slower, RUN, 0.10)}
    assert not gates["regression throughput@1"].passed  # 25% drop
    assert gates["regression throughput@4"].passed  # under 2% drop
    assert not gates["regression p99_ms@16"].passed  # latency rose a lot
    assert all(g.passed for g in check_regression(RUN, RUN, 0.10))


def test_regression_needs_comparable_runs() -> None:
    with pytest.raises(InvalidInputError, match="no step"):
        check_regression(make_run([(2, 100, 1.0)]), RUN, 0.1)
    with pytest.raises(InvalidInputError, match="batch size"):
        check_regression(make_run([(1, 100, 1.0)], batch=4), RUN, 0.1)
    with pytest.raises(InvalidInputError, match="rate"):
        check_regression(make_run([(1, 100, 1.0)], mode="rate"), RUN, 0.1)


@pytest.mark.parametrize("text, value", [("10%", 0.10), ("0.25", 0.25), ("0%", 0.0)])
def test_parse_regression(text: str, value: float) -> None:
    assert parse_regression(text) == pytest.approx(value)


def test_summary_lists_failures_first() -> None:
    gates = evaluate(RUN, [Slo.parse("p99_ms<=1000"), Slo.parse("throughput>=5000")], max_error_rate=0.0)
    text = summary(gates)
    assert text.splitlines()[0] == "gates: 2 passed, 1 failed"
    assert text.splitlines()[1].strip().startswith("FAIL")


def test_require_stable() -> None:
    run = make_run([(1, 200, 2.0), (4, 600, 4.0)])
    [gate] = evaluate(run, require_stable=True)
    assert gate.passed and gate.name == "stable" and gate.detail == "every step reached a stable measurement"
    run.steps[1].stable = None  # a fixed-duration step has no stability check: not a failure
    [gate] = evaluate(run, require_stable=True)
    assert gate.passed
    run.steps[0].stable = False
    [gate] = evaluate(run, require_stable=True)
    assert not gate.passed and gate.detail == "steps [1] did not stabilize within --max-step-time"
    assert evaluate(run) == []  # not asked for: no gate
