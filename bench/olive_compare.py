"""accelserve's search (`accelserve run`) side by side with Microsoft Olive's (`olive run --config`) on the same
trained model, the same calibration data and the same held-out labelled data.

Olive is not an accelserve dependency and never will be: it wants numpy 2 (accelserve pins numpy<2), torch,
transformers and optuna. Give it its own virtual environment, outside the repository:

    python3 -m venv /tmp/olive-venv
    /tmp/olive-venv/bin/pip install olive-ai onnxruntime onnx requests   # requests: Olive 0.13's telemetry imports it

then, from the repository root (accelserve's own environment):

    .venv/bin/python bench/olive_compare.py --olive-venv /tmp/olive-venv              # or ACCELSERVE_OLIVE_VENV=...
    .venv/bin/python bench/olive_compare.py --olive-venv /tmp/olive-venv --write-docs # also the docs table
    .venv/bin/python bench/olive_compare.py --quick                                   # one run each, short timing

Without that environment the script prints why it skips and exits 0 (bench/run_all.py stays green).

What is compared (one process drives both, each tool in a fresh subprocess with a fresh cache/work dir):

* **Model and data**: the digits CNN (accelserve.examples.digits, trained here, seeded) exported once to ONNX;
  calibration = the first 256 training digits (calib.npz), evaluation = the 540 held-out digits (test.npz) with
  their labels (test_labels.npy). Both tools read these same files.
* **accelserve**: a pipeline file with the ONNX model, ``candidates: auto`` (or ``--candidates int8``: INT8
  recipes only), ``max_accuracy_drop: 0.5`` points, ``objective: latency`` at ``batch_size: 16``, no load test.
* **Olive**: a workflow with ``OnnxStaticQuantization`` and every searchable parameter left to Olive's declared
  search space (precision, per_channel, reduce_range, quant_preprocess, calibrate_method, quant_format,
  activation_type: 72 valid points), the ``joint`` search strategy with the ``sequential`` sampler (exhaustive),
  an accuracy metric (torchmetrics accuracy_score) on the same held-out data with a ``max-degradation`` goal of
  0.005 (= 0.5 points) and a latency metric (avg, Olive's default warm-up/repeat counts) at batch 16.
  Latency has priority 1 and accuracy priority 2, so Olive, like accelserve, picks the fastest model among those
  that meet the accuracy goal (Olive ranks lexicographically by priority).
* **Search wall time**: each tool's command from start to exit (Python start-up included; Olive's import of
  torch is part of it). With ``--repeats 2`` the runs alternate A-B-B-A.
* **Accuracy drop and speedup** are not taken from either tool's own report: both winners and the FP32 model are
  evaluated here with accelserve.evaluate (top-1 on the held-out labels) and timed together, interleaved, with
  ``measure_latencies`` at batch 16 in this one process. Each tool's own figures are recorded beside them.

Writes bench/results/olive_compare.json (with the machine) and, with --write-docs, the ``olive_compare`` block of
the Pipeline section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section, write_result  # noqa: E402

USER_SCRIPT = Path(__file__).resolve().parent / "olive_user_script.py"
BATCH = 16

PIPELINE_YAML = """\
model:
  source: digits_cnn.onnx
  framework: onnx
data:
  calibration: calib.npz
  evaluation: test.npz
  labels: test_labels.npy
search:
  candidates: {candidates}
  max_accuracy_drop: {budget}
  objective: latency
  batch_size: {batch}
  budget_minutes: 20
repository:
  path: model_repository
  name: digits
  max_batch_size: 32
  dynamic_batching: true
"""

INT8_RECIPES = ["simplify,int8", "simplify,int8(method=entropy)", "simplify,int8(method=percentile)",
                "simplify,int8(per_channel=false)"]


def olive_config(work: Path, run_dir: Path, budget_points: float, batch: int) -> dict[str, Any]:
    def data(name: str, inputs: str, labels: str | None) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": name, "user_script": str(USER_SCRIPT),
                               "load_dataset_config": {"type": "accelserve_npz_dataset",
                                                       "inputs_file": str(work / inputs)},
                               "dataloader_config": {"batch_size": batch}}
        if labels:
            cfg["load_dataset_config"]["labels_file"] = str(work / labels)
            cfg["post_process_data_config"] = {"type": "accelserve_argmax"}
        return cfg

    return {
        "input_model": {"type": "ONNXModel", "model_path": str(work / "digits_cnn.onnx")},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data("calib", "calib.npz", None), data("eval", "test.npz", "test_labels.npy")],
        # "type" is set because Olive 0.13.0 crashes (AttributeError in find_all_resources) on an evaluator without it
        "evaluators": {"common": {"type": "OnnxEvaluator", "metrics": [
            {"name": "latency", "type": "latency", "data_config": "eval",
             "sub_types": [{"name": "avg", "priority": 1}]},
            {"name": "accuracy", "type": "accuracy", "data_config": "eval",
             "sub_types": [{"name": "accuracy_score", "priority": 2,
                            "goal": {"type": "max-degradation", "value": budget_points / 100},
                            "metric_config": {"task": "multiclass", "num_classes": 10}}]},
        ]}},
        "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calib"}},
        "search_strategy": {"execution_order": "joint", "sampler": "sequential"},
        "evaluator": "common",
        "host": "local_system",
        "target": "local_system",
        "evaluate_input_model": True,
        "cache_dir": str(run_dir / "cache"),
        "output_dir": str(run_dir / "out"),
    }


def olive_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def olive_versions(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['olive-ai', 'onnxruntime', 'onnx', 'numpy', 'torch']}))")
    out = subprocess.run([str(olive_python(venv)), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def prepare(work: Path, epochs: int, candidates: str, budget: float) -> None:
    from accelserve.examples.digits import digits_cnn

    _, data = digits_cnn(work / "digits_cnn.onnx", width=16, head="pool", epochs=epochs)
    np.savez(work / "calib.npz", x=data.x_train[:256])
    np.savez(work / "test.npz", x=data.x_test)
    np.save(work / "test_labels.npy", data.y_test)
    cands = "auto" if candidates == "auto" else json.dumps(INT8_RECIPES)
    (work / "pipeline.yaml").write_text(PIPELINE_YAML.format(candidates=cands, budget=budget, batch=BATCH))


def run_accelserve(work: Path, i: int) -> dict[str, Any]:
    run_dir = work / f"accelserve_run{i}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "accelserve", "run", str(work / "pipeline.yaml"), "--work-dir",
                           str(run_dir), "--no-cache", "--quiet"], cwd=work, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"accelserve run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    report = json.loads((run_dir / "reports" / "report.json").read_text())
    w = report["winner"]
    tried = [c for c in report["candidates"] if c["status"] == "built"]
    return {"seconds": seconds, "exit": proc.returncode, "model": w["model"], "recipe": w["recipe"],
            "candidates": len(report["candidates"]), "built": len(tried),
            "own": {"metric": w["metric"], "base_metric": report["base"]["metric"],
                    "accuracy_drop_points": w["accuracy_drop_points"], "speedup": w["speedup"]}}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_olive(work: Path, venv: Path, i: int, budget: float) -> dict[str, Any]:
    run_dir = work / f"olive_run{i}"
    run_dir.mkdir()
    cfg = run_dir / "olive.json"
    cfg.write_text(json.dumps(olive_config(work, run_dir, budget, BATCH), indent=2))
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1"}
    env.pop("PYTHONPATH", None)
    t0, wall0 = time.perf_counter(), time.time()
    proc = subprocess.run([str(venv / "bin" / "olive"), "run", "--config", str(cfg)], cwd=run_dir,
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    stamp = re.search(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", proc.stdout + proc.stderr, re.M)
    # start-up: from the command's start to Olive's first log line (imports: olive, torch, onnxruntime ...)
    startup = (datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0) if stamp else None
    (run_dir / "olive.log").write_text(proc.stdout + proc.stderr)
    out = run_dir / "out" / "model.onnx"
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"olive run failed (exit {proc.returncode}); log: {run_dir / 'olive.log'}\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    footprint = json.loads((run_dir / "out" / "footprint.json").read_text())
    base_metrics = json.loads((run_dir / "out" / "input_model_metrics.json").read_text())
    nodes = [n for n in footprint.values() if n.get("from_pass")]
    digest = _sha(out)
    chosen = next((n for n in nodes if Path(n["model_config_data"]["config"]["model_path"]).exists()
                   and _sha(Path(n["model_config_data"]["config"]["model_path"])) == digest), None)
    own: dict[str, Any] = {"base_metric": base_metrics["accuracy-accuracy_score"]["value"],
                           "base_latency_ms": base_metrics["latency-avg"]["value"]}
    recipe = None
    if chosen:
        keys = ("precision", "per_channel", "reduce_range", "quant_preprocess", "calibrate_method", "quant_format",
                "activation_type")
        recipe = {k: chosen["pass_run_config"].get(k) for k in keys}
        m = chosen["metrics"]["value"]
        own.update(metric=m["accuracy-accuracy_score"]["value"], latency_ms=m["latency-avg"]["value"],
                   accuracy_drop_points=100 * (own["base_metric"] - m["accuracy-accuracy_score"]["value"]),
                   speedup=own["base_latency_ms"] / m["latency-avg"]["value"])
    kept = run_dir / "winner.onnx"
    shutil.copy(out, kept)
    return {"seconds": seconds, "startup_s": startup, "exit": proc.returncode, "model": str(kept), "recipe": recipe,
            "candidates": len(nodes), "goals_met": sum(1 for n in nodes if n["metrics"].get("if_goals_met")),
            "own": own}


def activation_type(path: str) -> str | None:
    """Element type of the first QuantizeLinear's zero point (the activations' type), or None."""
    import onnx

    model = onnx.load(path)
    init = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in init:
            return onnx.helper.tensor_dtype_to_np_dtype(init[node.input[2]].data_type).name
    return None


def op_counts(path: str) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(path).graph.node).items()))


def measure(models: dict[str, str], work: Path, max_seconds: float, rounds: int) -> dict[str, dict[str, Any]]:
    from accelserve.evaluate._ort import run_model
    from accelserve.evaluate.accuracy import load_labels, top1_accuracy
    from accelserve.evaluate.speed import measure_latencies

    with np.load(work / "test.npz") as z:
        x = z["x"]
    labels = load_labels(work / "test_labels.npy")
    feeds = [{"x": x[i:i + 256]} for i in range(0, len(x), 256)]
    out: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        outputs = run_model(path, feeds)
        out[name] = {"top1": top1_accuracy({"y": np.concatenate([next(iter(o.values())) for o in outputs])}, labels),
                     "size_bytes": Path(path).stat().st_size, "ops": op_counts(path),
                     "activations": activation_type(path)}
    names = list(models)
    # several interleaved timing calls, the model order reversed every other call; p50 = median over calls
    per_call: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name, st in zip(order, measure_latencies([models[n] for n in order], feeds, batch_size=BATCH,
                                                     max_seconds=max_seconds)):
            per_call[name].append(st.p50_ms)
            out[name].update(threads=st.threads, stable=bool(out[name].get("stable", True) and st.stable))
    for name in names:
        out[name]["p50_ms_per_call"] = per_call[name]
        out[name]["p50_ms"] = float(np.median(per_call[name]))
    for name in names:
        out[name]["accuracy_drop_points"] = 100 * (out["fp32"]["top1"] - out[name]["top1"])
        # per call (same load for FP32 and the candidate), then the median over calls
        out[name]["speedup"] = float(np.median(np.asarray(per_call["fp32"]) / np.asarray(per_call[name])))
    return out


def _recipe(recipe: Any) -> str:
    if isinstance(recipe, dict):  # Olive: the searched parameters of the chosen point
        short = {"precision": "weights", "per_channel": "per_channel", "reduce_range": "reduce_range",
                 "quant_preprocess": "preprocess", "calibrate_method": "", "quant_format": "",
                 "activation_type": "act"}
        parts = []
        for k, v in recipe.items():
            if isinstance(v, bool):
                parts.append(short[k] + ("" if v else "=no"))
            elif short.get(k):
                parts.append(f"{short[k]}={v}")
            else:
                parts.append(str(v))
        return " ".join(parts)
    return str(recipe)


def _quant_ops(ops: dict[str, int]) -> str:
    keep = {k: v for k, v in ops.items() if "quant" in k.lower() or "QLinear" in k or "Integer" in k}
    return ", ".join(f"{k} {v}" for k, v in keep.items()) or "-"


def markdown(res: dict[str, Any]) -> str:
    m, v = res["machine"], res["olive_env"]
    ev = res["evaluated"]
    f = ev["fp32"]
    lines = [f"Machine: {m.get('model', '?')} ({m.get('machine', 'x86_64')}), {m.get('cores', '?')} cores, "
             f"accelserve's ONNX Runtime {m.get('onnxruntime')}; Olive's venv: olive-ai {v['olive-ai']}, onnxruntime "
             f"{v['onnxruntime']}, onnx {v['onnx']}, numpy {v['numpy']}, torch {v['torch']}; {res['written']}; "
             f"load average (1/5/15 min) {res['loadavg_start']} at start, {res['loadavg_end']} at end.",
             "",
             f"Digits CNN trained here, FP32 top-1 {f['top1']:.4f} on the 540 held-out digits, "
             f"p50 {f['p50_ms']:.3f} ms at batch {BATCH}. Budget {res['budget']:g} points; objective latency at "
             f"batch {BATCH}; accelserve candidates `{res['candidates']}`. Search runs in the order "
             f"{' '.join(res['order'])}, each from a fresh cache.",
             "",
             "| run | search wall s | candidates | winner | top-1 | drop (pts) | p50 ms @16 | speedup | "
             "tool's own drop / speedup | activations | Q/DQ ops |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tool in ("accelserve", "olive"):
        for k, run in enumerate(res["runs"][tool]):
            e = ev[f"{tool}#{k + 1}"]
            own = run["own"]
            own_text = (f"{own['accuracy_drop_points']:+.2f} / {own['speedup']:.2f}x"
                        if "speedup" in own else "-")
            wall = f"{run['seconds']:.1f}"
            if run.get("startup_s") is not None:
                wall += f" (start-up {run['startup_s']:.1f})"
            tried = f"{run['candidates']} ({run['built']} built)" if "built" in run else str(run["candidates"])
            lines.append(f"| {tool} #{k + 1} | {wall} | {tried} | `{_recipe(run['recipe'])}` | "
                         f"{e['top1']:.4f} | {e['accuracy_drop_points']:+.2f} | {e['p50_ms']:.3f} | "
                         f"{e['speedup']:.2f}x | {own_text} | {e['activations']} | {_quant_ops(e['ops'])} |")
    lines += ["", "Top-1, drop, p50 and speedup: every winner and the FP32 model evaluated here with "
              "accelserve.evaluate, all timed together, interleaved, at batch 16 in one process; p50 is the median of "
              f"{res['timing_rounds']} such timing calls (model order reversed every other call), speedup the median "
              "of the per-call FP32/model ratios. \"Tool's own\": what "
              "each tool reported for its winner (Olive: accuracy_score and avg latency from its footprint). Olive's "
              "start-up: from the command's start to its first log line."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--olive-venv", default=os.environ.get("ACCELSERVE_OLIVE_VENV", "/tmp/olive-venv"),
                    help="virtual environment with olive-ai installed (default: $ACCELSERVE_OLIVE_VENV or "
                    "/tmp/olive-venv)")
    ap.add_argument("--repeats", type=int, default=2, help="search runs per tool, alternating A-B-B-A")
    ap.add_argument("--budget", type=float, default=0.5, help="accuracy budget in points of top-1")
    ap.add_argument("--candidates", choices=["auto", "int8"], default="auto", help="accelserve's candidates")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--timing-seconds", type=float, default=10.0, help="final interleaved timing, per model")
    ap.add_argument("--timing-rounds", type=int, default=4, help="interleaved timing calls (order alternates)")
    ap.add_argument("--quick", action="store_true", help="one run each, short timing; nothing written")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--docs-only", action="store_true",
                    help="rewrite the docs block from bench/results/olive_compare.json; runs nothing")
    args = ap.parse_args()
    if args.docs_only:
        write_docs_section("olive_compare", markdown(json.loads((ROOT / "bench" / "results" / "olive_compare.json")
                                                                .read_text())), "Pipeline (`accelserve run`) vs Olive")
        return 0
    venv = Path(args.olive_venv)
    if not (venv / "bin" / "olive").exists():
        print(f"olive_compare: SKIPPED, no Olive environment at {venv} (no {venv / 'bin' / 'olive'}). Set it up with\n"
              f"  python3 -m venv {venv} && {venv}/bin/pip install olive-ai onnxruntime onnx requests\n"
              "and pass --olive-venv or set ACCELSERVE_OLIVE_VENV.")
        return 0
    if args.quick:
        args.repeats, args.timing_seconds, args.timing_rounds = 1, 2.0, 1
    versions = olive_versions(venv)
    work = Path(tempfile.mkdtemp(prefix="accelserve-bench-olive-"))
    try:
        print(f"preparing model and data in {work}", flush=True)
        prepare(work, args.epochs, args.candidates, args.budget)
        order: list[str] = []
        for r in range(args.repeats):
            order += ["accelserve", "olive"] if r % 2 == 0 else ["olive", "accelserve"]
        runs: dict[str, list[dict[str, Any]]] = {"accelserve": [], "olive": []}
        loadavg_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
        for i, tool in enumerate(order):
            res = run_accelserve(work, i) if tool == "accelserve" else run_olive(work, venv, i, args.budget)
            runs[tool].append(res)
            print(f"{tool}: {res['seconds']:.1f} s, winner {res['recipe']}", flush=True)
        # every run's winner is evaluated and timed (each tool's pick can change from run to run under noise)
        models = {"fp32": str(work / "digits_cnn.onnx")}
        for tool in ("accelserve", "olive"):
            for k, r in enumerate(runs[tool]):
                models[f"{tool}#{k + 1}"] = r["model"]
        evaluated = measure(models, work, args.timing_seconds, args.timing_rounds)
        loadavg_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"written": time.strftime("%Y-%m-%d"), "machine": machine(), "olive_env": versions,
              "budget": args.budget, "candidates": args.candidates, "order": order, "runs": runs,
              "evaluated": evaluated, "timing_rounds": args.timing_rounds,
              "loadavg_start": loadavg_start, "loadavg_end": loadavg_end,
              "note": "model paths point into a deleted temporary directory"}
    text = markdown(result)
    print(text)
    if args.quick:
        return 0
    write_result("olive_compare", result)
    if args.write_docs:
        write_docs_section("olive_compare", text, "Pipeline (`accelserve run`) vs Olive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
