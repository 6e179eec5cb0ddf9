"""The evaluation harness on tiny graphs: size, FLOPs, accuracy, latency, memory, reports and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from accelserve.calibration import load_calibration
from accelserve.cli.main import main
from accelserve.errors import InvalidInputError
from accelserve.evaluate import speed
from accelserve.evaluate import (
    accuracy_vs_base,
    count_parameters,
    evaluate_models,
    flops,
    labelled_metric,
    make_batch,
    measure_latencies,
    measure_latency,
    peak_memory,
    run_model,
    size_stats,
)
from tests.evaluate.models import cnn_feeds, make_cnn, make_mlp_block


def test_parameters_count_float_initializers_and_nonzeros(cnn: Path, tmp_path: Path) -> None:
    model = onnx.load(str(cnn))
    expected = sum(numpy_helper.to_array(i).size for i in model.graph.initializer)
    assert count_parameters(cnn) == (expected, expected)
    w2 = next(i for i in model.graph.initializer if i.name == "w2")
    arr = numpy_helper.to_array(w2).copy()
    arr[:4] = 0  # prune 4 output channels
    w2.CopyFrom(numpy_helper.from_array(arr, "w2"))
    onnx.save(model, str(tmp_path / "pruned.onnx"))
    total, nonzero = count_parameters(tmp_path / "pruned.onnx")
    assert total == expected and nonzero == expected - 4 * 8 * 3 * 3
    stats = size_stats(cnn)
    assert stats.file_bytes == cnn.stat().st_size and stats.parameters == expected


def test_flops_of_conv_and_gemm_from_shapes(cnn: Path) -> None:
    count = flops(cnn)
    conv1 = 8 * 8 * 8 * (1 * 9)  # out C x H x W x (C_in/group x kernel)
    conv2 = 8 * 8 * 8 * (8 * 9)
    conv3 = 16 * 4 * 4 * (8 * 9)
    fc = 5 * 16
    assert count.per_node == {"conv1": 2 * conv1, "conv2": 2 * conv2, "conv3": 2 * conv3, "fc": 2 * fc}
    assert count.total == 2 * (conv1 + conv2 + conv3 + fc) and not count.unknown
    assert flops(cnn, {"x": (4, 1, 8, 8)}).total == 4 * count.total


def test_flops_of_matmul_needs_concrete_dims(tmp_path: Path) -> None:
    mlp = make_mlp_block(tmp_path / "mlp.onnx")
    assert sorted(flops(mlp).unknown) == ["down_proj", "up_proj"]  # "seq" stays dynamic
    count = flops(mlp, {"x": (2, 10, 16)})
    assert count.total == 2 * (2 * 10 * 32 * 16 + 2 * 10 * 16 * 32)


def test_accuracy_of_identical_and_different_models(cnn: Path, tmp_path: Path) -> None:
    feeds = cnn_feeds(count=2)
    same = accuracy_vs_base(cnn, cnn, feeds)
    assert same.max_abs_error == 0 and same.cosine == pytest.approx(1.0) and same.top1_agreement == 1.0
    assert same.samples == 16
    other = make_cnn(tmp_path / "other.onnx", seed=3)
    diff = accuracy_vs_base(cnn, other, feeds)
    assert diff.max_abs_error > 0 and diff.cosine < 0.99 and diff.top1_agreement < 1.0


def test_labelled_metric_default_top1_and_custom(cnn: Path) -> None:
    feeds = cnn_feeds(count=2)
    outputs = run_model(cnn, feeds)
    labels = np.concatenate([np.argmax(o["y"], axis=-1) for o in outputs])
    assert labelled_metric(outputs, labels) == 1.0
    flipped = (labels + 1) % 5
    assert labelled_metric(outputs, flipped) == 0.0
    assert labelled_metric(outputs, labels, lambda out, lab: float(out["y"].shape[0] == lab.size)) == 1.0
    with pytest.raises(InvalidInputError, match="there are 3 labels but 16 predictions"):
        labelled_metric(outputs, labels[:3])


def test_latency_stats_are_ordered_and_batch_is_built_cyclically(cnn: Path) -> None:
    feeds = cnn_feeds(count=1, batch=3)
    batch = make_batch(feeds, 7)
    assert batch["x"].shape == (7, 1, 8, 8)
    np.testing.assert_array_equal(batch["x"][3:6], feeds[0]["x"])
    stats = measure_latency(cnn, feeds, batch_size=4, threads=1, warmup=2, min_runs=5, max_seconds=2.0)
    assert stats.runs >= 5 and stats.threads == 1 and stats.batch_size == 4
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.throughput == pytest.approx(4 / (stats.p50_ms / 1e3))


def test_compared_models_are_timed_interleaved_in_equal_rounds(
    cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_cnn(tmp_path / "other.onnx", seed=1)
    order: list[str] = []  # which model each ONNX Runtime call ran (the real call still runs)
    real_run = speed.run_session

    def recording_run(session, feed, path):  # noqa: ANN001, ANN202 - same signature as the wrapped function
        order.append(Path(path).name)
        return real_run(session, feed, path)

    monkeypatch.setattr(speed, "run_session", recording_run)
    stats = measure_latencies([cnn, other], cnn_feeds(count=1, batch=2), batch_size=2, threads=1,
                              warmup=1, min_runs=3, max_seconds=1.0)
    assert len(stats) == 2
    assert stats[0].runs == stats[1].runs and stats[0].runs % 3 == 0 and stats[0].runs >= 6
    assert all(0 < s.p50_ms <= s.p99_ms for s in stats)
    # one warm-up each, then rounds of 3 runs of the first model followed by 3 of the second, never all of one
    # model and then all of the other (which would let machine drift favour one of them)
    a, b = cnn.name, other.name
    rounds = stats[0].runs // 3
    assert order == [a, b] + [a, a, a, b, b, b] * rounds


def test_fixed_batch_model_cannot_be_timed_at_another_batch(tmp_path: Path) -> None:
    model = onnx.load(str(make_cnn(tmp_path / "cnn.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    with pytest.raises(InvalidInputError, match="fixed batch size of 2"):
        measure_latency(tmp_path / "fixed.onnx", cnn_feeds(batch=2), batch_size=4, min_runs=1)


def _matmul_model(path: Path, rows: int, cols: int) -> Path:
    w = numpy_helper.from_array(np.full((rows, cols), 0.01, np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", rows])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", cols])], initializer=[w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_peak_memory_is_measured_in_a_fresh_process(cnn: Path) -> None:
    import resource

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB resident in THIS process; a fresh process does not have it
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert own_peak > ballast.nbytes
    mem = peak_memory(cnn, cnn_feeds(count=1), threads=1)
    assert mem.peak_rss_bytes >= mem.baseline_rss_bytes > 10_000_000  # python + onnxruntime are > 10 MB
    assert mem.peak_rss_bytes < ballast.nbytes  # measured elsewhere: this process's 400 MB do not count
    assert mem.peak_rss_bytes < own_peak
    # the peak counter is reset after the imports: even a tiny session shows up (it used to read 0)
    assert mem.method == "vmhwm-reset" and mem.session_bytes > 0
    del ballast


def test_peak_memory_of_a_model_grows_with_its_weights(tmp_path: Path) -> None:
    small = _matmul_model(tmp_path / "small.onnx", 256, 256)  # 0.26 MB of weights
    big = _matmul_model(tmp_path / "big.onnx", 2048, 8192)  # 67 MB of weights
    mem_small = peak_memory(small, [{"x": np.ones((1, 256), np.float32)}], threads=1, runs=1)
    mem_big = peak_memory(big, [{"x": np.ones((1, 2048), np.float32)}], threads=1, runs=1)
    assert 0 < mem_small.session_bytes < 30_000_000
    assert mem_big.session_bytes - mem_small.session_bytes > 60_000_000
    assert mem_big.peak_rss_bytes - mem_small.peak_rss_bytes > 60_000_000


def test_report_json_markdown_and_png(cnn: Path, tmp_path: Path) -> None:
    other = make_cnn(tmp_path / "other.onnx", seed=3)
    data = load_calibration(lambda: cnn_feeds(count=2), cnn)
    labels = np.concatenate([np.argmax(o["y"], -1) for o in run_model(cnn, data.feeds())])
    report = evaluate_models(cnn, [cnn, other], data, labels=labels, batch_sizes=(1, 4), threads=1, memory=False,
                             names=["same", "other"], max_seconds=0.5)
    files = report.write(json=tmp_path / "r.json", markdown=tmp_path / "r.md", plot=tmp_path / "r.png")
    assert [f.name for f in files] == ["r.json", "r.md", "r.png"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc) == {"schema_version", "smoke_only", "accuracy_meaningful", "accuracy_warnings", "data", "threads",
                        "batch_sizes", "metric_name", "machine", "base", "candidates", "gates", "gates_passed"}
    assert doc["smoke_only"] is False and doc["metric_name"] == "top1_accuracy"
    same, diff = doc["candidates"]
    assert set(same) >= {"name", "size", "flops", "accuracy", "metric", "metric_drop", "latency", "memory",
                         "compression_ratio", "speedup_p50"}
    assert same["metric_drop"] == 0.0 and diff["metric_drop"] > 0
    assert [lat["batch_size"] for lat in same["latency"]] == [1, 4]
    md = (tmp_path / "r.md").read_text()
    assert "| same |" in md and "| other |" in md and "top1_accuracy" in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_data_reports_say_smoke_only(cnn: Path) -> None:
    data = load_calibration(None, cnn, random=True, count=2)
    report = evaluate_models(cnn, [cnn], data, speed=False, memory=False)
    assert report.to_dict()["smoke_only"] is True
    assert "Smoke only" in report.markdown()


def test_evaluate_cli_writes_json_and_fails_cleanly(cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.savez(tmp_path / "d.npz", x=np.concatenate([f["x"] for f in cnn_feeds(count=2)]))
    code = main(["evaluate", str(cnn), str(cnn), "--data", str(tmp_path / "d.npz"), "--no-memory",
                 "--max-seconds", "0.3", "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png")])
    assert code == 0
    assert json.loads((tmp_path / "e.json").read_text())["candidates"][0]["accuracy"]["cosine"] == pytest.approx(1.0)
    assert (tmp_path / "e.png").exists()
    assert main(["evaluate", str(cnn), str(tmp_path / "missing.onnx"), "--random-data", "--no-speed",
                 "--no-memory"]) == 1
    assert "does not exist" in capsys.readouterr().err


def _nearly_constant_cnn(path: Path, cnn: Path) -> Path:
    """The tiny CNN with a head whose output barely depends on the input (like a random-weight network: one class
    for every input, outputs of different inputs at cosine ~1)."""
    model = onnx.load(str(cnn))
    for init in model.graph.initializer:
        if init.name == "wf":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e-3, "wf"))
        if init.name == "bf":
            init.CopyFrom(numpy_helper.from_array(np.array([3.0, 1.0, 0.5, -1.0, 0.0], np.float32), "bf"))
    onnx.save(model, str(path))
    return path


def _perturbed_head(path: Path, base: Path, scale: float, seed: int = 1) -> Path:
    model = onnx.load(str(base))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name == "wf":
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + scale * rng.standard_normal(w.shape)).astype(np.float32), "wf"))
    onnx.save(model, str(path))
    return path


def test_agreement_with_a_degenerate_base_is_flagged_not_meaningful(cnn: Path, tmp_path: Path) -> None:
    base = _nearly_constant_cnn(tmp_path / "flat.onnx", cnn)
    cand = _perturbed_head(tmp_path / "flat_cand.onnx", base, 1e-3)  # changes the input-dependent part entirely
    feeds = cnn_feeds(count=2)  # 16 samples
    stats = accuracy_vs_base(base, cand, feeds)
    # the raw figures look perfect ...
    assert stats.cosine > 0.999 and stats.top1_agreement == 1.0
    # ... but carry no information, and say so; the centred cosine shows the candidate is unrelated
    assert not stats.meaningful and stats.degenerate_base
    assert stats.dominant_class == 0 and stats.dominant_class_share == 1.0
    assert any("predicts class 0 for 100% of the 16 inputs" in r for r in stats.not_meaningful)
    assert any("barely depends on the input" in r for r in stats.not_meaningful)
    assert stats.centered_cosine < 0.9
    report = evaluate_models(base, [cand], feeds, speed=False, memory=False, names=["cand"])
    doc = report.to_dict()
    assert doc["accuracy_meaningful"] is False and doc["accuracy_warnings"][0].startswith("cand: degenerate base")
    acc = doc["candidates"][0]["accuracy"]
    assert acc["meaningful"] is False and acc["degenerate_base"] is True and acc["centered_cosine"] < 0.9
    md = report.markdown()
    assert "cosine and top-1 agreement with the base are not meaningful" in md
    assert "100.00% (not meaningful)" in md and "centred cosine" in md


def test_agreement_with_an_input_dependent_base_is_meaningful(cnn: Path, tmp_path: Path) -> None:
    cand = _perturbed_head(tmp_path / "cand.onnx", cnn, 0.01)
    stats = accuracy_vs_base(cnn, cand, cnn_feeds(count=4))
    assert stats.meaningful and not stats.not_meaningful and stats.input_spread > 0.1
    assert 0.95 < stats.centered_cosine < stats.cosine  # the input-dependent part is the stricter figure
    md = evaluate_models(cnn, [cand], cnn_feeds(count=4), speed=False, memory=False).markdown()
    assert "not meaningful" not in md
    # an error as large as the base's variation across inputs makes the raw figures uninformative too
    bad = accuracy_vs_base(cnn, _perturbed_head(tmp_path / "bad.onnx", cnn, 5.0), cnn_feeds(count=4))
    assert not bad.meaningful and not bad.degenerate_base and "the candidate's error is" in bad.not_meaningful[0]
