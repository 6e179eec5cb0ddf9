#!/usr/bin/env bash
# Run accelserve's GPU tests (TensorRT engines, GPU runtimes) on a host with an NVIDIA GPU.
#
# Intended for NVIDIA's Triton container, which has the driver mounted, CUDA and TensorRT's Python bindings:
#   docker run --gpus all --rm -v "$PWD":/work -w /work nvcr.io/nvidia/tritonserver:<yy.mm>-py3 bash scripts/gpu_check.sh
# On a bare GPU host, have the NVIDIA driver, CUDA 12 and `pip install tensorrt cuda-python onnxruntime-gpu` first.
# Prints what the machine holds (driver, CUDA, TensorRT), then runs the tests marked `gpu` (no test is skipped
# silently: pytest -rs prints why any is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || { echo "no NVIDIA GPU visible" >&2; exit 1; }
python3 - <<'PY'
import importlib
for mod in ("tensorrt", "cuda", "onnxruntime"):
    try:
        m = importlib.import_module(mod)
        print(f"{mod}: {getattr(m, '__version__', 'installed')}")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(f"{mod}: not importable ({exc})")
PY
python3 -m pip install -q -e ".[torch,test]" cuda-python
python3 -m pytest -q -rs -m gpu tests/tensorrt "$@"
