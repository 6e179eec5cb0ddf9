"""Locust load test of a model on NVIDIA Triton, usable with plain Locust.

    locust -f loadtests/triton_locustfile.py --headless -u 8 -r 8 -t 30s \
        --triton-url http://127.0.0.1:8000 --triton-model mymodel [--triton-batch 4] [--triton-shape ids=4x128]

gRPC: ``--triton-url grpc://127.0.0.1:8001``. HTTP sends binary tensors (``--triton-json`` for JSON). Requests are
built from the model's metadata and config read from the server: the config's dims, ``--triton-shape`` for
dynamic dims, random data in ``--triton-range`` or real samples from ``--triton-data FILE.npz``.

Distributed (master on one host, workers on others, same file everywhere; the master sends its ``--triton-*``
options to the workers):

    locust -f loadtests/triton_locustfile.py --master --headless -u 64 -r 64 -t 60s --expect-workers 4 \
        --triton-url http://TRITON:8000 --triton-model mymodel
    locust -f loadtests/triton_locustfile.py --worker --master-host MASTER      # on each load-generator host

``accelserve loadtest`` runs the same user (``accelserve.loadtest.users.TritonUser``) with sweeps, stability
windows, Triton's server-side statistics, reports and SLO gates.
"""

from __future__ import annotations

import locust  # noqa: F401 -- Locust (gevent) first, before anything that opens sockets or imports ssl

# isort: split
from locust import events

from accelserve.loadtest import users
from accelserve.loadtest.users import TritonUser  # noqa: F401  -- the user class Locust runs

users.tune_locust()


@events.init_command_line_parser.add_listener
def _add_triton_arguments(parser, **_kw):  # type: ignore[no-untyped-def]
    users.add_arguments(parser)


@events.init.add_listener
def _check_early(environment, **_kw):  # type: ignore[no-untyped-def]
    # fail fast on the master / a standalone run; workers get the options with the first spawn message
    from locust.runners import WorkerRunner

    if not isinstance(environment.runner, WorkerRunner) and environment.parsed_options is not None:
        users.configure_from_options(environment)


@events.test_start.add_listener
def _configure(environment, **_kw):  # type: ignore[no-untyped-def]
    users.configure_from_options(environment)
