"""Sequence-model requests for the load test, as perf_analyzer sends them: each user sends sequences of
``plan.sequence_length`` requests under a correlation ID of its own, START on the first request and END on the
last; concurrent users are concurrent sequences. Imported only in the load process (after Locust's gevent patch),
by :mod:`accelserve.loadtest.users`.

Correlation IDs come from :func:`accelserve.triton.sequence_client.new_sequence_id` (a random base per process, so
the workers of a distributed run do not collide), and a failed request starts a new sequence: the server ends the
broken one when it has been idle for ``max_sequence_idle_microseconds``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accelserve.loadtest.plan import RequestPlan
from accelserve.triton.sequence_client import new_sequence_id


class SequenceInfer:
    """The per-user sender for sequence models: ``infer(i)`` sends request ``i`` of the pool as the next step of
    the current sequence."""

    def __init__(self, plan: RequestPlan, requests: list[dict[str, np.ndarray]]) -> None:
        self.plan = plan
        self.length = max(1, plan.sequence_length)
        self.step = 0
        self.sequence_id = 0
        self.sequences_done = 0
        if plan.protocol == "grpc":
            import tritonclient.grpc as tc

            self.client: Any = tc.InferenceServerClient(plan.host_port)
            self.kwargs: dict[str, Any] = {"client_timeout": plan.request_timeout_s}
            binary: dict[str, Any] = {}
        else:
            import tritonclient.http as tc  # type: ignore[no-redef]

            self.client = tc.InferenceServerClient(
                plan.host_port, connection_timeout=min(5.0, plan.request_timeout_s),
                network_timeout=plan.request_timeout_s,
            )
            self.kwargs = {}
            binary = {"binary_data": plan.binary_data}
        self.requests = []
        for arrays in requests:
            inputs = []
            for t in plan.inputs:
                tensor = tc.InferInput(t.name, list(arrays[t.name].shape), t.datatype)
                tensor.set_data_from_numpy(arrays[t.name], **binary)
                inputs.append(tensor)
            self.requests.append(inputs)
        self.outputs = [tc.InferRequestedOutput(n, **binary) for n in plan.outputs]

    def infer(self, i: int) -> None:
        if self.step == 0:
            self.sequence_id = new_sequence_id()
        start, end = self.step == 0, self.step == self.length - 1
        try:
            self.client.infer(self.plan.model, self.requests[i % len(self.requests)], outputs=self.outputs,
                              sequence_id=self.sequence_id, sequence_start=start, sequence_end=end, **self.kwargs)
        except Exception:
            self.step = 0  # the sequence is broken: the next request starts a new one
            raise
        self.step = 0 if end else self.step + 1
        self.sequences_done += int(end)

    def close(self) -> None:
        self.client.close()
