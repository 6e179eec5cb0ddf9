"""GPU checks: TensorRT engines and GPU runtimes on a real NVIDIA GPU. Skipped, with the reason, where there is no
GPU or no TensorRT (every machine this project's CI runs on). `scripts/gpu_check.sh` runs them on a GPU host.

Accuracy is measured on a trained model (the digits CNN, trained on scikit-learn's digits) and its held-out split,
never on random weights."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _gpu_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"TensorRT is not installed ({exc}); see scripts/gpu_check.sh"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU (nvidia-smi not found)"
    try:
        from cuda import cudart  # noqa: F401
    except ImportError:
        return "cuda-python is not installed (pip install cuda-python)"
    return None


REASON = _gpu_reason()
if REASON:
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=REASON)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    from accelserve.examples.digits import digits_cnn, digits_data

    root = tmp_path_factory.mktemp("gpu")
    data = digits_data()
    model = digits_cnn(root / "digits.onnx", width=32)
    np.savez(root / "calib.npz", input=data.x_train[:256])
    return root, model, data


def _timed(session, feed: dict, runs: int = 50) -> float:
    for _ in range(5):
        session.run(feed)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(feed)
    return (time.perf_counter() - start) / runs


def test_int8_engine_against_fp16_engine(digits):
    from accelserve.optimize import optimize
    from accelserve.runtimes.gpu import TensorRTSession
    from accelserve.tensorrt.build import EngineBuildConfig, build_engine

    root, model, data = digits
    qdq = root / "digits_int8.onnx"
    optimize(model, ["simplify", "int8"], qdq, {"target": "tensorrt"}, calibration=str(root / "calib.npz"),
             evaluate=False)
    fp16 = build_engine(model, root / "fp16.plan", EngineBuildConfig(max_batch_size=32))
    int8 = build_engine(qdq, root / "int8.plan", EngineBuildConfig(max_batch_size=32))
    assert int8.plan.strongly_typed and fp16.plan.fp16
    s16 = TensorRTSession(fp16.engine.read_bytes(), "fp16")
    s8 = TensorRTSession(int8.engine.read_bytes(), "int8")
    name = s16.inputs[0].name
    batch = {name: data.x_test[:32]}
    ratio = _timed(s16, batch) / _timed(s8, batch)
    print(f"batch 32: INT8 engine is {ratio:.2f}x the speed of the FP16 engine")
    # agreement with the FP32 model (ONNX Runtime on the CPU) on the held-out set, independent of calibration
    from accelserve.evaluate import run_model

    feeds = [{name: data.x_test[i:i + 32]} for i in range(0, len(data.x_test) - 31, 32)]
    ref = np.concatenate([o[next(iter(o))].argmax(1) for o in run_model(model, feeds)])
    got = np.concatenate([next(iter(s8.run(f).values())).argmax(1) for f in feeds])
    agreement = float((ref == got).mean())
    print(f"INT8 engine top-1 agreement with FP32: {agreement:.2%}")
    assert agreement >= 0.99


def test_runtimes_agree_with_cpu(digits):
    from accelserve.verify import verify

    root, model, data = digits
    feeds = [{"input": data.x_test[:16]}]
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

    cpu = OnnxRuntimeSession(model)
    for runtime in ("onnxruntime-cuda", "tensorrt"):
        report = verify(model, feeds, lambda f: cpu.run(dict(f)), precision="fp32", runtime=runtime)
        assert report.passed, report.table()


def test_tensorrt_reads_the_calibration_cache_accelserve_writes(digits):
    from accelserve.calibration import load_calibration
    from accelserve.tensorrt.build import EngineBuildConfig, build_engine
    from accelserve.tensorrt.calib_cache import cache_from_calibration

    root, model, data = digits
    cache = cache_from_calibration(model, load_calibration(str(root / "calib.npz"), model))
    cache.write(root / "digits.calib")
    before = (root / "digits.calib").read_bytes()
    result = build_engine(model, root / "implicit.plan",
                          EngineBuildConfig(precision="int8", calibration_cache=root / "digits.calib"))
    assert result.engine.stat().st_size > 0
    assert (root / "digits.calib").read_bytes() == before  # read, not recalibrated
