from __future__ import annotations

import pytest

from accelserve.errors import InvalidInputError
from accelserve.loadtest.gates import GateResult, Slo, check_regression, check_slo, evaluate, parse_regression, summary
from accelserve.loadtest.results import RunResult, StepResult, SweepSettings
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


def _exact_run(points: list[tuple[float, float, float]]) -> RunResult:
    """A run whose steps have exactly these (level, inferences/s, p99 ms); other latencies follow p99."""
    steps = [StepResult(mode="concurrency", level=lv, users=int(lv), batch_size=1, duration_s=3.0, windows=3,
                        stable=True, complete=True, requests=int(tp * 3), errors=0, requests_per_s=tp,
                        inferences_per_s=tp, latency_ms={"avg": p99 / 2, "p50": p99 / 2, "p90": p99 * 0.8,
                                                         "p95": p99 * 0.9, "p99": p99, "max": p99 * 2}, server=None)
             for lv, tp, p99 in points]
    return RunResult(target={"model": "m", "batch_size": 1},
                     settings=SweepSettings(levels=tuple(p[0] for p in points)), steps=steps, complete=True)


def test_regression_details_and_the_inclusive_limit() -> None:
    base = _exact_run([(1, 200.0, 2.0), (4, 800.0, 5.0)])
    new = _exact_run([(1, 180.0, 2.2), (4, 600.0, 5.0)])  # exactly 10 % less and 10 % slower at level 1
    gates = {g.name: g for g in check_regression(new, base, 0.10)}
    assert gates["regression throughput@1"].passed and gates["regression p99_ms@1"].passed  # 10 % is allowed
    assert gates["regression throughput@1"].detail == (
        "throughput 200.0 -> 180.0 at concurrency 1: 10.0% drop (within the 10% allowed)")
    assert gates["regression p99_ms@1"].detail == "p99_ms 2.000 -> 2.200 at concurrency 1: 10.0% rise (within the 10% allowed)"
    assert not gates["regression throughput@4"].passed
    assert gates["regression throughput@4"].detail == (
        "throughput 800.0 -> 600.0 at concurrency 4: 25.0% drop (over the 10% allowed)")
    assert gates["regression p99_ms@4"].detail == "p99_ms 5.000 -> 5.000 at concurrency 4: 0.0% rise (within the 10% allowed)"
    faster = {g.name: g for g in check_regression(base, new, 0.10)}  # improvements show as 0 %
    assert faster["regression p99_ms@1"].detail.endswith(": 0.0% rise (within the 10% allowed)")
    assert list(gates) == ["regression throughput@1", "regression p99_ms@1", "regression throughput@4",
                           "regression p99_ms@4"]


def test_regression_of_sub_millisecond_and_zero_baselines() -> None:
    fast = _exact_run([(1, 0.5, 0.8)])
    [tp, lat] = check_regression(_exact_run([(1, 0.48, 0.82)]), fast, 0.10)  # values below 1 are ordinary values
    assert tp.passed and lat.passed and "4.0% drop" in tp.detail and "2.5% rise" in lat.detail
    zero = _exact_run([(1, 0.0, 0.0)])
    [tp, lat] = check_regression(_exact_run([(1, 0.0, 0.0)]), zero, 0.10)  # nothing measured before or now
    assert tp.passed and lat.passed and "0.0% rise" in lat.detail
    [tp, lat] = check_regression(_exact_run([(1, 10.0, 3.0)]), zero, 0.10)  # from zero latency to some: infinite rise
    assert tp.passed and not lat.passed and "inf% rise (over" in lat.detail


def test_user_errors_name_the_problem_and_the_fix() -> None:
    with pytest.raises(InvalidInputError) as err:
        Slo.parse("p99 is fine")
    assert str(err.value).startswith("--slo 'p99 is fine' is not METRIC<=VALUE or METRIC>=VALUE[@LEVEL]")
    assert err.value.hint == "examples: --slo 'p99_ms<=50' --slo 'throughput>=200' --slo 'p95_ms<=20@16'"
    with pytest.raises(InvalidInputError) as err:
        Slo.parse("latency<=5")
    assert str(err.value).startswith("--slo 'latency<=5': unknown metric 'latency'")
    assert err.value.hint.startswith("metrics: throughput (inferences/s (requests/s x batch size)), rps (")
    with pytest.raises(InvalidInputError) as err:
        Slo.parse("p99_ms<=1.2.3")
    assert str(err.value).startswith("--slo 'p99_ms<=1.2.3': '1.2.3' is not a number")
    with pytest.raises(InvalidInputError) as err:
        check_regression(make_run([(1, 100, 1.0)], mode="rate"), RUN, 0.1)
    assert "a concurrency sweep and this run a rate sweep; they cannot be compared" in str(err.value)
    assert err.value.hint == "compare runs made with the same --concurrency or --rate option"
    with pytest.raises(InvalidInputError) as err:
        check_regression(RUN, RUN, 0.1, ["speed"])
    assert str(err.value).startswith("unknown regression metric 'speed'")
    assert err.value.hint == "metrics: throughput, rps, p50_ms, p90_ms, p95_ms, p99_ms, max_ms, avg_ms, error_rate, errors"
    with pytest.raises(InvalidInputError) as err:
        check_regression(make_run([(2, 100, 1.0)]), RUN, 0.1)
    assert err.value.hint == "run the same sweep as the baseline"


def test_summary_text() -> None:
    assert summary([]) == "no gates"
    gates = [GateResult("a", True, "fine"), GateResult("b", False, "bad"), GateResult("c", True, "ok")]
    assert summary(gates) == "gates: 2 passed, 1 failed\n  FAIL  b: bad\n  PASS  a: fine\n  PASS  c: ok"
