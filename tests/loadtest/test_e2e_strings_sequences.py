"""`accelserve loadtest` on BYTES and sequence models (the ONNX Runtime stand-in on the real tritonserver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from accelserve.triton.client import TritonClient
from tests.loadtest.e2e_helpers import assert_sane_step, load_json, requires_stack, run_cli
from tests.triton.sequence_helpers import add_accumulator, add_string_models

pytestmark = requires_stack
SHORT = ["--duration", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from accelserve.triton.server import TritonServer

    repo = tmp_path_factory.mktemp("loadtest_seq") / "repo"
    add_string_models(repo)
    add_accumulator(repo, "acc", idle_us=2_000_000)
    with TritonServer(repo) as s:
        yield s


def _stats(server, model: str) -> dict:  # noqa: ANN001
    with TritonClient(server.http_url) as client:
        return client.statistics(model)["model_stats"][0]


@pytest.mark.parametrize(("model", "extra"), [("strings", ["--string-length", "8", "--shape", "INPUT0=1x4"]),
                                              ("simple_string", ["--string-data", "12"])])
def test_bytes_models_load_test_without_errors(server, model: str, extra: list[str], tmp_path: Path,  # noqa: ANN001
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = run_cli([server.grpc_url, model, "--concurrency", "2", *SHORT, *extra, "--json", str(out)])
    assert code == 0, capsys.readouterr()
    assert_sane_step(load_json(out)["steps"][0])


def test_random_letters_into_string_arithmetic_are_counted_as_errors(server, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "simple_string", "--concurrency", "1", *SHORT, "--json", str(out)])
    assert code == 2  # the error-rate gate: random letters do not cast to integers (the server says so per request)
    assert load_json(out)["steps"][0]["error_rate"] == 1.0


def test_sequences_with_flags_and_ids_from_concurrent_users(server, tmp_path: Path,  # noqa: ANN001
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = _stats(server, "acc")
    out = tmp_path / "r.json"
    code = run_cli([server.http_url, "acc", "--concurrency", "3", "--sequence-length", "4", *SHORT,
                    "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sequences of 4 requests per user" in err
    step = load_json(out)["steps"][0]
    assert_sane_step(step)  # no errors: Triton refuses a non-START request of an unknown sequence
    after = _stats(server, "acc")
    assert after["inference_count"] - before["inference_count"] >= step["requests"]
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    # the state was carried through every sequence of the run: a fresh sequence still accumulates correctly
    with TritonClient(server.http_url) as client:
        got = [client.infer("acc", {"INPUT": np.array([[v]], dtype=np.int32)}, sequence_id=424242,
                            sequence_start=v == 1, sequence_end=v == 3)["OUTPUT"].item() for v in (1, 2, 3)]
    assert got == [1, 3, 6]


def test_sequence_model_without_sequence_flags_is_refused_before_the_run(server, capsys) -> None:  # noqa: ANN001
    assert run_cli([server.http_url, "acc", "--batch", "2", *SHORT]) == 1
    assert "batch size 1" in capsys.readouterr().err
    assert run_cli([server.http_url, "simple_string", "--sequence-length", "3", *SHORT]) == 1
    assert "no sequence_batching" in capsys.readouterr().err
