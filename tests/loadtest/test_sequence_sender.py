"""The load test's sender for sequence models, without a server: START/END flags, one correlation ID per sequence,
a new sequence after a failure."""

from __future__ import annotations

import pytest

from accelserve.loadtest.plan import RequestPlan, TensorPlan, payloads
from accelserve.loadtest.sequences import SequenceInfer


class FakeClient:
    def __init__(self, fail_at: set[int]) -> None:
        self.calls: list[tuple[int, bool, bool]] = []
        self.fail_at = fail_at

    def infer(self, model, inputs, *, outputs, sequence_id, sequence_start, sequence_end, **kw):  # noqa: ANN001, ANN003
        self.calls.append((sequence_id, sequence_start, sequence_end))
        if len(self.calls) - 1 in self.fail_at:
            raise RuntimeError("refused")

    def close(self) -> None:
        pass


def _sender(length: int, fail_at: frozenset[int] = frozenset()) -> tuple[SequenceInfer, FakeClient]:
    plan = RequestPlan(url="grpc://127.0.0.1:1", protocol="grpc", model="acc", batch_size=1, max_batch_size=8,
                       inputs=(TensorPlan("INPUT", "INT32", (1, 1)),), outputs=("OUTPUT",), sequence_length=length)
    sender = SequenceInfer(plan, payloads(plan))
    sender.client.close()
    fake = FakeClient(set(fail_at))
    sender.client = fake
    return sender, fake


def test_sequences_get_start_end_and_their_own_ids() -> None:
    sender, fake = _sender(3)
    for i in range(7):
        sender.infer(i)
    flags = [(s, e) for _, s, e in fake.calls]
    assert flags == [(True, False), (False, False), (False, True)] * 2 + [(True, False)]
    ids = [c[0] for c in fake.calls]
    assert len(set(ids[0:3])) == 1 and len(set(ids[3:6])) == 1 and ids[0] != ids[3] != ids[6]
    assert all(i > 0 for i in ids) and sender.sequences_done == 2


def test_a_failed_request_starts_a_new_sequence() -> None:
    sender, fake = _sender(4, fail_at=frozenset({1}))
    sender.infer(0)
    with pytest.raises(RuntimeError):
        sender.infer(1)
    sender.infer(2)
    assert [s for _, s, _ in fake.calls] == [True, False, True]
    assert fake.calls[2][0] != fake.calls[0][0]


def test_length_one_sequences_are_start_and_end() -> None:
    sender, fake = _sender(1)
    sender.infer(0)
    assert fake.calls[0][1:] == (True, True)
