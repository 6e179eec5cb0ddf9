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
