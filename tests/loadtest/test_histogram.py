"""Window arithmetic over Locust-style histograms, and percentiles of histograms merged across workers."""

from __future__ import annotations

import numpy as np
import pytest

from accelserve.loadtest.histogram import ClientSnapshot, bucket_ms, diff, merge, percentile, window


def _hist(samples: list[float]) -> dict[float, int]:
    out: dict[float, int] = {}
    for s in samples:
        key = bucket_ms(s)
        out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.parametrize("value", [0.0123456, 0.98765, 1.23456, 12.3456, 123.456, 4567.8, 98765.4])
def test_bucket_keeps_three_significant_digits(value: float) -> None:
    assert abs(bucket_ms(value) - value) <= 0.005 * value
    assert bucket_ms(value) == pytest.approx(float(f"{value:.3g}"), rel=1e-9)


def test_bucket_of_zero_and_negative_is_zero() -> None:
    assert bucket_ms(0.0) == 0.0
    assert bucket_ms(-1.0) == 0.0


def test_percentile_matches_nearest_rank_on_samples() -> None:
    rng = np.random.default_rng(0)
    samples = [bucket_ms(v) for v in rng.lognormal(0.0, 0.7, size=5000)]
    hist = _hist(samples)
    ordered = sorted(samples)
    for fraction in (0.5, 0.9, 0.95, 0.99):
        got = percentile(hist, len(samples), fraction)
        # Locust's definition: the smallest value with at most int(n * (1 - fraction)) samples above it
        above = sum(1 for s in ordered if s > got)
        assert above <= len(samples) - int(len(samples) * fraction)
        assert got in ordered


def test_percentile_of_empty_histogram_is_zero() -> None:
    assert percentile({}, 0, 0.99) == 0.0


def test_merged_worker_histograms_give_the_pooled_percentiles() -> None:
    rng = np.random.default_rng(1)
    worker_a = list(rng.lognormal(0.0, 0.5, size=3000))  # a fast worker
    worker_b = list(rng.lognormal(1.0, 0.5, size=1000))  # a slow one
    merged = merge([_hist(worker_a), _hist(worker_b)])
    pooled = _hist(worker_a + worker_b)
    assert merged == pooled
    assert sum(merged.values()) == 4000
    for fraction in (0.5, 0.9, 0.99):
        assert percentile(merged, 4000, fraction) == percentile(pooled, 4000, fraction)
    # and not the average of the workers' own percentiles
    p99_a = percentile(_hist(worker_a), 3000, 0.99)
    p99_b = percentile(_hist(worker_b), 1000, 0.99)
    assert percentile(merged, 4000, 0.99) != pytest.approx((p99_a + p99_b) / 2, rel=0.01)


def test_diff_rejects_a_histogram_that_went_down() -> None:
    assert diff({1.0: 5, 2.0: 3}, {1.0: 2}) == {1.0: 3, 2.0: 3}
    with pytest.raises(ValueError, match="reset"):
        diff({1.0: 1}, {1.0: 2})


def test_window_counts_whole_seconds_and_diffs_latencies() -> None:
    older = ClientSnapshot(num_requests=10, total_response_time=10.0, response_times={1.0: 10},
                           reqs_per_sec={99: 10})
    newer = ClientSnapshot(
        num_requests=40, num_failures=2, total_response_time=70.0, response_times={1.0: 20, 3.0: 20},
        reqs_per_sec={99: 10, 100: 14, 101: 16}, fails_per_sec={101: 2},
    )
    w = window(100, older, 102, newer)
    assert (w.requests, w.failures, w.successes) == (30, 2, 28)
    assert w.requests_per_s == pytest.approx(14.0)
    assert w.error_rate == pytest.approx(2 / 30)
    assert w.histogram == {1.0: 10, 3.0: 20}
    assert w.avg_ms == pytest.approx(60.0 / 30)
    assert w.latency_ms(0.5) == 3.0 and w.max_ms == 3.0
    with pytest.raises(ValueError):
        window(102, older, 102, newer)
