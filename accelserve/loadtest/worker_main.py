"""A Locust worker for accelserve's distributed mode:
``python -m accelserve.loadtest.worker_main --master-host HOST --master-port PORT``.

It needs nothing but the master's address: the master sends the request plan (and, in rate mode, the pacing)
as custom messages before it spawns users. Each report to the master also carries the number of requests this
worker has completed, so the master can check that its aggregate is the sum of its workers.
"""

from __future__ import annotations

import locust  # noqa: F401 -- first: gevent must patch the process before anything opens a socket

# isort: split
import argparse
import sys
from typing import Any

from locust.env import Environment

from accelserve.loadtest import users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelserve.loadtest.worker_main")
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=5557)
    args = parser.parse_args(argv)

    users.tune_locust()
    env = Environment(user_classes=[users.TritonUser], stop_timeout=0.0)
    completed = {"n": 0}

    def on_request(**_kw: Any) -> None:
        completed["n"] += 1

    def on_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
        data["accelserve_requests"] = completed["n"]

    env.events.request.add_listener(on_request)
    env.events.report_to_master.add_listener(on_report)
    try:
        runner = env.create_worker_runner(args.master_host, args.master_port)
    except ConnectionError:
        sys.stderr.write(f"error: cannot connect to the Locust master at {args.master_host}:{args.master_port}\n")
        return 1
    runner.register_message(users.MSG_PLAN, lambda environment, msg, **_: users.configure(msg.data))
    runner.register_message(users.MSG_PACING, lambda environment, msg, **_: users.set_pacing(msg.data["interval"]))
    runner.greenlet.join()
    return 0


if __name__ == "__main__":
    from accelserve.loadtest.driver import exit_now

    exit_now(main())
