"""Load tests against Triton with Locust.

The pieces, and where they run:

* CLI process (never gevent-patched): :mod:`.plan` (preflight: server reachable, model ready, request shapes
  valid), :mod:`.runner` (starts the load process, reads its result file), :mod:`.gates`, :mod:`.reports`.
* Load process (``python -m accelserve.loadtest.driver``, imports Locust first): :mod:`.driver` (concurrency or
  request-rate sweep, warm-up, stable measurement windows, Triton statistics), :mod:`.users` (the Locust users),
  :mod:`.worker_main` (Locust workers for ``--workers N``).
* Pure, shared by both: :mod:`.histogram` (window deltas and percentiles of Locust's response-time histograms),
  :mod:`.stability`, :mod:`.server_stats`, :mod:`.results`.

Nothing here imports Locust at import time except :mod:`.users`, :mod:`.driver` and :mod:`.worker_main`.
"""
