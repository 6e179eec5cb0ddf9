"""``accelserve tune``: search a model's Triton serving config (instances, threads, batching) for the best
throughput or latency within SLOs, on the real server, through its model-control API. See ``search.tune``."""

from accelserve.tune.search import ConfigResult, TuneConfig, TuneResult, tune

__all__ = ["ConfigResult", "TuneConfig", "TuneResult", "tune"]
