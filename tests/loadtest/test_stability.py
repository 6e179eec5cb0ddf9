from __future__ import annotations

import pytest

from accelserve.loadtest.stability import StabilityRule, is_stable, within


def test_within_tolerance_of_the_mean() -> None:
    assert within([100, 105, 95], 0.10)
    assert not within([100, 130, 95], 0.10)
    assert within([0, 0, 0], 0.1)
    assert not within([], 0.1)


def test_needs_the_last_n_windows_to_agree_on_throughput_and_p95() -> None:
    rule = StabilityRule(tolerance=0.10, windows=3)
    assert not is_stable([100, 101], [5.0, 5.0], rule)  # too few windows
    assert is_stable([50, 100, 102, 98], [9.0, 5.0, 5.1, 4.9], rule)  # only the last 3 count
    assert not is_stable([100, 100, 100], [5.0, 5.0, 7.0], rule)  # latency still moving
    assert not is_stable([100, 80, 100], [5.0, 5.0, 5.0], rule)  # throughput still moving


@pytest.mark.parametrize("kwargs", [{"tolerance": 0.0}, {"tolerance": 1.5}, {"windows": 1}])
def test_rejects_meaningless_rules(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        StabilityRule(**kwargs)


def test_rule_bounds_and_messages() -> None:
    with pytest.raises(ValueError, match=r"^stability tolerance must be in \(0, 1\), got 1.0$"):
        StabilityRule(tolerance=1.0)
    with pytest.raises(ValueError, match="^stability needs at least 2 windows, got 1$"):
        StabilityRule(windows=1)
    assert StabilityRule(tolerance=0.99, windows=2).windows == 2  # the smallest meaningful rule is allowed


def test_within_is_inclusive_and_handles_a_mean_of_one() -> None:
    assert within([1.0, 3.0], 0.5)  # both exactly 50 % off their mean of 2
    assert not within([1.0, 3.0], 0.49)
    assert within([1.0, 1.0], 0.01)  # a mean of exactly 1 is an ordinary mean
    assert not within([0.0, 2.0], 0.5)


def test_exactly_n_windows_are_enough_and_both_series_need_n() -> None:
    rule = StabilityRule(tolerance=0.10, windows=3)
    assert is_stable([100, 100, 100], [5.0, 5.0, 5.0], rule)
    assert not is_stable([100, 100, 100], [5.0, 5.0], rule)  # too few p95 windows
    assert not is_stable([100, 100], [5.0, 5.0, 5.0], rule)
    # the last 3 windows, not the windows after the third: an outlier in window 2 of 4 still counts
    assert not is_stable([100, 50, 100, 100], [5.0, 5.0, 5.0, 5.0], rule)
    assert not is_stable([100, 100, 100, 100], [5.0, 9.0, 5.0, 5.0], rule)
