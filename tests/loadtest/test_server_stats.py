from __future__ import annotations

import pytest

from accelserve.loadtest.server_stats import ServerBreakdown, parse_statistics


def _stats(n: int, ns: int, *, as_strings: bool = False) -> dict:
    v = (lambda x: str(x)) if as_strings else (lambda x: x)
    phase = lambda count, total: {"count": v(count), "ns": v(total)}
    return {"model_stats": [
        {"name": "other", "version": "1", "inference_count": v(999), "execution_count": v(999),
         "inference_stats": {"success": phase(999, 999)}},
        {"name": "m", "version": "1", "inference_count": v(4 * n), "execution_count": v(n // 2),
         "inference_stats": {
             "success": phase(n, ns), "fail": phase(1, 10), "queue": phase(n, ns // 10),
             "compute_input": phase(n, ns // 20), "compute_infer": phase(n, ns // 2), "compute_output": phase(n, ns // 20),
         }},
    ]}


@pytest.mark.parametrize("as_strings", [False, True])  # gRPC's JSON writes int64 as strings
def test_breakdown_is_per_request_over_the_window(as_strings: bool) -> None:
    before = parse_statistics(_stats(100, 100_000_000, as_strings=as_strings), "m")
    after = parse_statistics(_stats(300, 500_000_000, as_strings=as_strings), "m")
    b = ServerBreakdown.of_delta(after - before)
    assert b.requests == 200 and b.inferences == 800 and b.executions == 100
    assert b.request_ms == pytest.approx(400_000_000 / 200 / 1e6)
    assert b.queue_ms == pytest.approx(b.request_ms / 10, rel=1e-6)
    assert b.compute_infer_ms == pytest.approx(b.request_ms / 2, rel=1e-6)
    d = b.to_dict(client_avg_ms=3.0)
    assert d["client_overhead_ms"] == pytest.approx(3.0 - b.request_ms)


def test_unknown_model_names_the_ones_with_statistics() -> None:
    with pytest.raises(KeyError, match="other"):
        parse_statistics(_stats(1, 1), "nope")


def test_no_successful_request_gives_zero_not_a_division_error() -> None:
    s = parse_statistics(_stats(5, 50), "m")
    b = ServerBreakdown.of_delta(s - s)
    assert b.requests == 0 and b.request_ms == 0.0
    assert b.to_dict(client_avg_ms=1.0)["client_overhead_ms"] is None
