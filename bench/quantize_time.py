"""Wall time and peak memory of `accelserve optimize --recipe simplify,int8` against an ONNX Runtime script
(`quant_pre_process` + `quantize_static`, U8S8 per-channel MinMax: the same numerics) on a ResNet-18-layout CNN
(accelserve.examples.onnx_models.resnet18_onnx, 224x224, random weights: a speed-only model) with the same 64
calibration images.

    python bench/quantize_time.py                # 3 interleaved rounds
    python bench/quantize_time.py --quick        # smoke: 112x112, 16 images, 1 round; never writes the docs
    python bench/quantize_time.py --write-docs   # also update docs/benchmarks.md
    python bench/quantize_time.py --before-python /tmp/old/bin/python   # also time another install (before a change)

Each tool runs as a fresh process (what a CI job runs), the two alternating within every round (ABBA order), so
machine load drifts hit both alike. Recorded per run: wall time, process CPU time (user + sys) and the peak RSS of
the child (``os.wait4``). accelserve runs with ``--no-evaluate`` (the ORT script evaluates nothing either) and with
its calibration-statistics cache off. The two quantized models are compared on held-out images (max abs
difference of the outputs) to show the numerics are the same.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOCS, RESULTS, image_batches, write_docs_section, write_result

ORT_SCRIPT = '''
import sys
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

model, calib, pre, out = sys.argv[1:5]


class Reader(CalibrationDataReader):
    def __init__(self, x, batch=8):
        self.it = iter([{"input": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.it, None)


x = np.load(calib)["input"]
quant_pre_process(model, pre)
quantize_static(pre, out, Reader(x), per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8)
'''


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run ``cmd`` in ``cwd`` to completion; wall seconds, CPU seconds and peak RSS (MB) of that child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close() if proc.stderr else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def run(quick: bool, rounds: int, before: str | None = None) -> dict[str, Any]:
    from accelserve.evaluate import compare_outputs, run_model
    from accelserve.examples.onnx_models import resnet18_onnx

    image, count = (112, 16) if quick else (224, 64)
    with tempfile.TemporaryDirectory(prefix="accelserve-bench-qtime-") as tmp:
        work = Path(tmp)
        model = resnet18_onnx(work / "resnet18.onnx", image=image)
        np.savez(work / "calib.npz", input=image_batches(count // 8, 8, size=image))
        (work / "ort_quantize.py").write_text(ORT_SCRIPT)
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        tools = {
            "ONNX Runtime quant_pre_process + quantize_static": [
                sys.executable, str(work / "ort_quantize.py"), str(model), str(work / "calib.npz"),
                str(work / "ort_pre.onnx"), str(work / "ort_int8.onnx")],
            "accelserve optimize simplify,int8": [
                sys.executable, "-m", "accelserve", "optimize", str(model), "-o", str(work / "acc_int8.onnx"),
                "--recipe", "simplify,int8", "--calib", str(work / "calib.npz"), "--no-evaluate",
                "--set", "use_calibration_cache=false"],
        }
        if before is not None:  # the same command with another interpreter (another accelserve install)
            tools["accelserve optimize simplify,int8 (before)"] = [
                before, *tools["accelserve optimize simplify,int8"][1:]]
        names = list(tools)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]  # ABBA: neither tool always goes first
            for name in order:
                # cwd: the temporary directory, so `-m accelserve` imports the interpreter's install, not ./accelserve
                runs[name].append(timed(tools[name], env, work))
                print(f"round {r + 1}: {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
        held_out = image_batches(2, 8, seed=7, size=image)
        feeds = [{"input": held_out[i:i + 8]} for i in range(0, 16, 8)]
        same = compare_outputs(run_model(work / "ort_int8.onnx", feeds), run_model(work / "acc_int8.onnx", feeds))
    rows = []
    for name in names:
        wall = [x["wall_s"] for x in runs[name]]
        rows.append({"tool": name, "runs": len(wall), "wall_s_median": float(np.median(wall)),
                     "wall_s_min": float(np.min(wall)), "wall_s_max": float(np.max(wall)),
                     "cpu_s_median": float(np.median([x["cpu_s"] for x in runs[name]])),
                     "peak_rss_mb_max": float(np.max([x["peak_rss_mb"] for x in runs[name]])),
                     "raw": runs[name]})
    ort, acc = rows[0], rows[1]
    return {"model": f"ResNet-18 layout (accelserve.examples.onnx_models.resnet18_onnx), {image}x{image}, "
                     "random weights (speed only)",
            "calibration_images": count, "rounds": rounds, "rows": rows,
            "wall_ratio": acc["wall_s_median"] / ort["wall_s_median"],
            "cpu_ratio": acc["cpu_s_median"] / ort["cpu_s_median"],
            "rss_ratio": acc["peak_rss_mb_max"] / ort["peak_rss_mb_max"],
            "outputs_max_abs_difference": same.max_abs_error}


def markdown(results: dict[str, Any]) -> str:
    m, r = results["machine"], results["result"]
    lines = [
        (f"Measured {results['written']} on {m['model']} ({m['machine']}, {m['cores']} cores, flags: "
         f"{', '.join(m['flags'])}), ONNX Runtime {m['onnxruntime']}, Python {m['python']}"
         + (" -- QUICK SMOKE RUN, not a measurement" if results["quick"] else "") + "."),
        (f"{r['model']}; {r['calibration_images']} calibration images; {r['rounds']} interleaved rounds (ABBA), "
         "each tool a fresh process; medians. Outputs of the two INT8 models differ by at most "
         f"{r['outputs_max_abs_difference']:.3g} (max abs) on 16 held-out images."),
        "",
        "| tool | wall s (median) | wall s (min-max) | CPU s (median) | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['tool']} | {row['wall_s_median']:.1f} | {row['wall_s_min']:.1f}-{row['wall_s_max']:.1f} "
                     f"| {row['cpu_s_median']:.1f} | {row['peak_rss_mb_max']:.0f} |")
    lines += ["", f"accelserve / ONNX Runtime: wall {r['wall_ratio']:.2f}x, CPU {r['cpu_ratio']:.2f}x, "
                  f"peak RSS {r['rss_ratio']:.2f}x (target: wall <= 1.3x)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 112x112, 16 images, 1 round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--before-python", help="also time `PYTHON -m accelserve optimize ...` with this interpreter "
                        "(an environment with an older accelserve installed), interleaved with the others")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-render the Markdown (and docs) from bench/results/quantize_time.json")
    args = parser.parse_args(argv)
    if args.render_only:
        import json

        text = markdown(json.loads((RESULTS / "quantize_time.json").read_text()))
        print(text)
        if args.write_docs:
            write_docs_section("quantize-time", text, "Quantization time: accelserve vs ONNX Runtime")
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    name = "quantize_time" + ("_quick" if args.quick else "")
    path = write_result(name, {"quick": args.quick, "result": run(args.quick, rounds, args.before_python)})
    import json

    text = markdown(json.loads(path.read_text()))
    (RESULTS / f"{name}.md").write_text(text + "\n")
    print(text)
    if args.write_docs and not args.quick:
        write_docs_section("quantize-time", text, "Quantization time: accelserve vs ONNX Runtime")
        print(f"updated {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
