"""Window arithmetic over Locust-style histograms, and percentiles of histograms merged across workers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

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


# Independent references for the percentile: numpy on the same samples, and Locust's own function (run in a child
# process: importing Locust gevent-patches the process that imports it).
FRACTIONS = (0.5, 0.9, 0.95, 0.99)

LOCUST_CHILD = r"""
import json, sys
from locust.stats import RequestStats, calculate_response_time_percentile

job = json.load(sys.stdin)
out = {"percentiles": [calculate_response_time_percentile({float(k): n for k, n in case["hist"]}, case["count"],
                                                          case["fraction"]) for case in job["cases"]]}
stats = RequestStats(use_response_times_cache=False)
for rt in job["log_ms"]:
    stats.log_request("POST", "infer", rt, 10)
for _ in range(job["none_requests"]):
    stats.log_request("POST", "infer", None, 0)
for _ in range(job["errors"]):
    stats.log_error("POST", "infer", "boom")
e = stats.total
out["entry"] = {
    "num_requests": e.num_requests, "num_failures": e.num_failures, "num_none_requests": e.num_none_requests,
    "total_response_time": e.total_response_time, "response_times": list(e.response_times.items()),
    "num_reqs_per_sec": list(e.num_reqs_per_sec.items()), "num_fail_per_sec": list(e.num_fail_per_sec.items()),
}
out["entry_percentiles"] = [e.get_response_time_percentile(f) for f in job["fractions"]]
print(json.dumps(out))
"""


def _locust(cases: list[tuple[dict[float, int], int, float]], log_ms: tuple[int, ...] | list[int] = (), none_requests: int = 0,
            errors: int = 0) -> dict:
    job = {"cases": [{"hist": list(h.items()), "count": c, "fraction": f} for h, c, f in cases],
           "log_ms": list(log_ms), "none_requests": none_requests, "errors": errors, "fractions": list(FRACTIONS)}
    proc = subprocess.run([sys.executable, "-c", LOCUST_CHILD], input=json.dumps(job), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _distributions(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "lognormal": rng.lognormal(0.0, 0.7, size=n),
        "exponential": rng.exponential(2.0, size=n),
        "uniform": rng.uniform(0.5, 80.0, size=n),
        "bimodal": np.concatenate([rng.normal(1.2, 0.05, size=n - n // 20), rng.normal(40.0, 3.0, size=n // 20)]),
        "long tail": rng.pareto(1.5, size=n) + 0.8,
    }


@pytest.mark.parametrize("name", list(_distributions(10)))
def test_percentile_is_numpys_inverted_cdf_quantile_of_the_same_samples(name: str) -> None:
    # Locust's percentile is the sample of rank int(n * f) (0-based) in sorted order; with n * f not a whole number
    # that is numpy's "inverted_cdf" quantile (the smallest sample whose empirical CDF reaches f)
    n = 4999
    samples = np.array([bucket_ms(v) for v in _distributions(n)[name]])
    hist = _hist(list(samples))
    for fraction in FRACTIONS:
        assert (n * fraction) % 1 != 0
        expected = float(np.quantile(samples, fraction, method="inverted_cdf"))
        assert percentile(hist, n, fraction) == expected, fraction
        assert percentile(hist, n, fraction) == float(np.sort(samples)[int(n * fraction)])


def test_percentiles_of_a_sample_with_known_quantiles() -> None:
    samples = [float(v) for v in np.random.default_rng(3).permutation(np.arange(1, 1001))]  # 1..1000 ms
    hist = _hist(samples)
    assert hist == {float(v): 1 for v in range(1, 1001)}
    # 500 of 1000 samples lie below 501 ms; 900 below 901 ms; ...
    assert [percentile(hist, 1000, f) for f in FRACTIONS] == [501.0, 901.0, 951.0, 991.0]
    assert percentile(hist, 1000, 1.0) == 1000.0 and percentile(hist, 1000, 0.0) == 1.0
    assert percentile(hist, 1000, 0.999) == 1000.0 and percentile(hist, 1000, 0.001) == 2.0


def test_bucketed_percentiles_stay_within_the_bucket_error_of_the_raw_samples() -> None:
    # exponential(1 ms): the true quantile is -ln(1 - f)
    raw = np.random.default_rng(5).exponential(1.0, size=40_001)
    hist = _hist(list(raw))
    for fraction in FRACTIONS:
        got = percentile(hist, raw.size, fraction)
        exact = float(np.quantile(raw, fraction, method="inverted_cdf"))  # of the unrounded samples
        assert got == bucket_ms(exact)  # rounding is monotonic: the bucketed rank statistic is the rounded one
        assert abs(got - exact) <= 0.005 * exact  # three significant digits: at most 0.5 % off
        assert got == pytest.approx(-np.log(1 - fraction), rel=0.05)  # and the sample estimates the distribution


def test_percentile_equals_locusts_own_function() -> None:
    rng = np.random.default_rng(2)
    cases: list[tuple[dict[float, int], int, float]] = []
    for n in (1, 2, 3, 10, 100, 1000, 5000):  # n * f whole and not whole
        hist = _hist(list(rng.lognormal(0.5, 1.0, size=n)))
        cases += [(hist, n, f) for f in (*FRACTIONS, 0.0, 0.999, 1.0)]
    cases.append(({5.0: 3, 9.0: 1}, 10, 0.5))  # count above the histogram's total (requests without a time)
    cases.append(({5.0: 3, 9.0: 1}, 10, 0.95))
    expected = _locust(cases)["percentiles"]
    got = [percentile(h, c, f) for h, c, f in cases]
    assert got == [float(v) for v in expected]


def test_snapshot_of_a_real_locust_entry_and_its_percentiles() -> None:
    log_ms = [int(v) for v in np.random.default_rng(4).integers(1, 400, size=300)]
    out = _locust([], log_ms=log_ms, none_requests=2, errors=3)
    raw = out["entry"]
    entry = SimpleNamespace(**{**raw, "response_times": dict(raw["response_times"]),
                               "num_reqs_per_sec": {int(k): v for k, v in raw["num_reqs_per_sec"]},
                               "num_fail_per_sec": {int(k): v for k, v in raw["num_fail_per_sec"]}})
    snap = ClientSnapshot.of_entry(entry)
    assert (snap.num_requests, snap.num_failures, snap.num_none_requests) == (302, 3, 2)
    assert snap.total_response_time == float(sum(log_ms))
    assert snap.response_times == entry.response_times and sum(snap.response_times.values()) == 300
    assert snap.reqs_per_sec == entry.num_reqs_per_sec and sum(snap.reqs_per_sec.values()) == 302
    assert snap.fails_per_sec == entry.num_fail_per_sec and sum(snap.fails_per_sec.values()) == 3
    timed = snap.num_requests - snap.num_none_requests
    assert [percentile(snap.response_times, timed, f) for f in FRACTIONS] == [float(v) for v in out["entry_percentiles"]]


def test_percentile_of_a_single_request_is_that_request() -> None:
    assert percentile({2.5: 1}, 1, 0.99) == 2.5
    assert percentile({2.5: 1}, 1, 0.5) == 2.5


def test_percentile_of_empty_histogram_is_zero() -> None:
    assert percentile({}, 0, 0.99) == 0.0
    assert percentile({}, 5, 0.99) == 0.0
    assert percentile({3.0: 2}, 0, 0.5) == 0.0  # nothing counted: nothing to report
    assert percentile({3.0: 2}, 10, 0.5) == 0.0  # most requests had no time: the median is unknown (Locust: 0)


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
    with pytest.raises(ValueError, match="bucket 1.0 went down from 2 to 1; stats were reset"):
        diff({1.0: 1}, {1.0: 2})
    assert diff({1.0: 2, 2.0: 3}, {1.0: 2}) == {2.0: 3}  # an unchanged bucket is dropped, not an error
    assert diff({1.0: 2}, {1.0: 2}) == {}


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
    with pytest.raises(ValueError, match="window end 102 is not after its start 102"):
        window(102, older, 102, newer)


def test_window_with_idle_seconds_and_requests_without_a_time() -> None:
    older = ClientSnapshot(num_requests=5, num_none_requests=1, total_response_time=8.0, response_times={2.0: 4},
                           reqs_per_sec={10: 5})
    newer = ClientSnapshot(num_requests=12, num_none_requests=3, total_response_time=23.0,
                           response_times={2.0: 6, 5.0: 3}, reqs_per_sec={10: 5, 12: 7})  # second 11 was idle
    w = window(11, older, 14, newer)
    assert (w.requests, w.failures) == (7, 0)
    assert w.avg_ms == pytest.approx(15.0 / 5)  # 7 requests, 2 of them without a response time
    nothing_timed = ClientSnapshot(num_requests=7, num_none_requests=3, total_response_time=8.0,
                                   response_times={2.0: 4}, reqs_per_sec={10: 5, 11: 2})
    w = window(10, older, 12, nothing_timed)
    assert w.avg_ms == 0.0 and w.histogram == {} and w.latency_ms(0.99) == 0.0 and w.max_ms == 0.0
    one_timed = ClientSnapshot(num_requests=6, num_none_requests=1, total_response_time=11.5,
                               response_times={2.0: 4, 3.5: 1}, reqs_per_sec={10: 6})
    assert window(10, older, 11, one_timed).avg_ms == pytest.approx(3.5)


def test_a_failure_filed_under_the_next_second_does_not_push_the_error_rate_over_one() -> None:
    """Locust files a failure under the second it is logged, which can follow its request's second."""
    newer = ClientSnapshot(num_requests=3, num_failures=3, reqs_per_sec={10: 2, 11: 1},
                           fails_per_sec={10: 1, 11: 2})
    w = window(10, ClientSnapshot(), 11, newer)
    assert (w.requests, w.failures) == (2, 1)
    late = ClientSnapshot(num_requests=2, num_failures=2, reqs_per_sec={10: 2}, fails_per_sec={10: 2, 11: 1})
    w = window(10, ClientSnapshot(), 12, late)
    assert (w.requests, w.failures) == (2, 2) and w.error_rate == 1.0
