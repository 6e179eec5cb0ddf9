"""``accelserve infer`` on BYTES and sequence models served by the stand-in on the real tritonserver.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from accelserve.cli.main import main
from accelserve.triton.server import TritonServer
from tests.triton import onnx_builders as ob
from tests.triton.sequence_helpers import add_accumulator, add_string_models

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, dict[str, Path]]]:
    repo = tmp_path_factory.mktemp("infer_seq") / "repo"
    models = add_string_models(repo)
    models["acc"] = add_accumulator(repo, "acc", strategy="oldest")
    models["bounded"] = ob.save(ob.identity(("batch", "seq")), repo / "bounded" / "1" / "model.onnx")
    (repo / "bounded" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'parameters { key: "accelserve_max_shape" value { string_value: "{\\"x\\": [128]}" } }\n'
    )
    with TritonServer(repo, timeout=180) as server:
        yield server, models


def test_random_strings_compare_with_onnxruntime(served, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    server, models = served
    code = main(["infer", server.http_url, "strings", "--random", "--batch", "2", "--shape", "INPUT0=2x3",
                 "--string-length", "5", "--compare", str(models["strings"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "dtype=object" in out and "PASS" in out and "b'" in out


def test_unicode_npz_over_grpc(served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    server, models = served
    data = tmp_path / "strings.npz"
    np.savez(data, INPUT0=np.array([["Hello", "wörld"]]))
    code = main(["infer", server.grpc_url, "strings", "--data", str(data), "--compare", str(models["strings"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "w\\xc3\\xb6rld" in out


def test_fixed_string_data_through_string_arithmetic(served,  # noqa: ANN001
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    server, models = served
    code = main(["infer", server.grpc_url, "simple_string", "--random", "--string-data", "21",
                 "--compare", str(models["simple_string"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "b'42'" in out and "b'0'" in out


@pytest.mark.parametrize("source", ["random", "data"])
def test_sequence_compares_step_by_step_with_local_state(served, source: str, tmp_path: Path,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    server, models = served
    url = server.grpc_url if source == "random" else server.http_url  # gRPC's config JSON omits enum zeros (START)
    args = ["infer", url, "acc", "--sequence-length", "4", "--compare", str(models["acc"])]
    if source == "random":
        args += ["--random", "--seed", "3"]
    else:
        np.savez(tmp_path / "steps.npz", INPUT=np.array([[1], [2], [3], [4]], dtype=np.int32))
        args += ["--data", str(tmp_path / "steps.npz"), "--sequence-id", "99"]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "sent 4 request(s) as sequence" in out and "4 input set(s)" in out
    if source == "data":
        assert "[4/4] outputs:" in out and "OUTPUT  shape=1x1 dtype=int32  [10]" in out
        assert "CORRID_OUT  shape=1x1 dtype=uint64  [99]" in out


def test_infer_refuses_a_shape_over_the_known_bound(served, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    server, _ = served
    assert main(["infer", server.http_url, "bounded", "--random", "--shape", "x=1x128"]) == 0
    capsys.readouterr()
    assert main(["infer", server.http_url, "bounded", "--random", "--shape", "x=1x200"]) == 1
    err = capsys.readouterr().err
    assert "x has 200 along dim 1" in err and "at most 128" in err
    assert "the server would refuse this request" in err  # checked before sending


def test_loadtest_refuses_a_shape_over_the_known_bound_before_the_run(served,  # noqa: ANN001
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = served
    code = main(["loadtest", server.http_url, "bounded", "--shape", "x=1x200", "--duration", "1"])
    assert code == 1 and "at most 128" in capsys.readouterr().err
