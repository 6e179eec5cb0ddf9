"""Training-aware compression benchmark (issue 14): QAT vs post-training INT8 vs NNCF's QAT, and prune + distillation
fine-tuning vs training-free channel pruning, on scikit-learn's digits (real labelled data, nothing downloaded).

    .venv/bin/python bench/training.py                 # full run (a few minutes on 2 cores)
    .venv/bin/python bench/training.py --quick         # smoke run: fewer epochs, short timings (figures mean little)
    .venv/bin/python bench/training.py --write-docs    # also replace the section in docs/benchmarks.md

Parts, each measured side by side in this one run:

* **QAT**: a small depthwise-separable CNN (width 4) trained here, quantized by the ``int8`` pass
  (``optimize --recipe simplify,int8``) with per-tensor weights and 7-bit weights (``per_channel=false``,
  ``reduce_range=true``: the layout the pass picks automatically on x86 CPUs without VNNI) vs
  ``accelserve.training`` QAT in the same layout, vs NNCF's QAT (``nncf.quantize`` + the same fine-tuning,
  exported to ONNX Q/DQ). Accuracy on the held-out split, INT8 latency under ONNX Runtime (interleaved), wall time.
  A control fine-tunes the FP32 model for the same epochs, so QAT's gain is not mistaken for extra training.
* **Pruning at 75%**: the digits CNN of ``accelserve.examples.digits``; the ONNX-level ``prune-channels`` pass
  (training-free, with and without least-squares reconstruction) vs ``prune_finetune`` (3 steps, distillation from
  the original) and one-shot pruning + distillation.

The machine (CPU, cores, ONNX Runtime) and its load average are recorded with the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: the int8 pass's options for the QAT comparison (and the QAT scheme's)
PTQ_OPTIONS = {"target": "ort-cpu", "per_channel": False, "reduce_range": True}


def dwsep_cnn(width: int = 4) -> Any:
    """Conv-BN-ReLU stem, then depthwise 3x3 + pointwise 1x1 blocks (MobileNet-style), global pool, linear."""
    import torch

    nn = torch.nn

    def dw(c: int) -> list[Any]:
        return [nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU()]

    def pw(a: int, b: int) -> list[Any]:
        return [nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]

    w = width
    return nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         *dw(w), *pw(w, 2 * w), nn.MaxPool2d(2), *dw(2 * w), *pw(2 * w, 4 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def train(model: Any, data: Any, epochs: int, lr: float = 3e-3, seed: int = 0) -> Any:
    """Adam, batch 64, on the training split (the recipe of accelserve.examples.digits)."""
    import torch

    from accelserve.examples.digits import fit_classifier

    torch.manual_seed(seed)
    return fit_classifier(model, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=seed)


def training_data(data: Any) -> Any:
    from accelserve.training.data import TrainingData, numpy_loader

    # calibration: the first 512 training samples, in order, for PTQ, QAT and NNCF alike
    calib = [data.x_train[i:i + 64] for i in range(0, 512, 64)]
    return TrainingData(train=numpy_loader(data.x_train, data.y_train, 64, seed=0),
                        eval=numpy_loader(data.x_test, data.y_test, 256, shuffle=False),
                        calibration=calib, input_names=["x"])


def onnx_accuracy(path: Path, data: Any) -> float:
    from accelserve.examples.digits import top1_accuracy

    return top1_accuracy(path, data.x_test, data.y_test, threads=1)


def latencies(paths: dict[str, Path], data: Any, batches: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Interleaved latency of every model (accelserve.evaluate.measure_latencies), per batch size."""
    from accelserve.evaluate.speed import measure_latencies

    feeds = [{"x": data.x_test[i:i + 1]} for i in range(64)]
    out: dict[str, Any] = {}
    for b in batches:
        stats = measure_latencies(list(paths.values()), feeds, batch_size=b, threads=1, max_seconds=seconds)
        out[str(b)] = {name: s.to_dict() for name, s in zip(paths, stats)}
    return out


def depthwise_spread(model: Any) -> float:
    """Largest ratio, over the depthwise convs (BatchNorm folded), between the largest and the smallest channel's
    max|w|: what one per-tensor scale has to cover."""
    import torch

    from accelserve.training.fake_quant import fold_batchnorm

    folded = fold_batchnorm(copy.deepcopy(model))
    worst = 1.0
    for m in folded.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            per = m.weight.detach().abs().reshape(m.weight.shape[0], -1).max(dim=1).values
            worst = max(worst, float(per.max() / per.min().clamp(min=1e-12)))
    return worst


# --------------------------------------------------------------------------------------------------------------
# QAT


def finetune_fp32(model: Any, tdata: Any, epochs: int, lr: float) -> float:
    from accelserve.training.loop import accuracy, cross_entropy, fit

    m = copy.deepcopy(model)
    fit(m, tdata, cross_entropy, epochs=epochs, lr=lr)
    return accuracy(m, tdata.eval)


def nncf_qat(model: Any, tdata: Any, data: Any, out: Path, epochs: int, lr: float) -> dict[str, Any]:
    """NNCF's QAT as its documentation describes it: nncf.quantize (PTQ init), fine-tune, strip, torch.onnx.export."""
    started = time.perf_counter()
    try:
        import nncf
        import torch
    except ImportError as exc:
        return {"error": f"nncf not installed ({exc}); pip install nncf"}

    from accelserve.training.loop import accuracy, cross_entropy, fit

    class Wrapped(torch.nn.Module):
        # NNCF 3.x attaches its hook storage as a child module; a bare nn.Sequential would call it in forward()
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return self.net(x)

    calib = nncf.Dataset([torch.from_numpy(b) for b in tdata.calibration])
    try:
        qmodel = nncf.quantize(Wrapped(copy.deepcopy(model)), calib)
        init = time.perf_counter() - started
        ptq_acc = accuracy(qmodel, tdata.eval)
        fit(qmodel, tdata, cross_entropy, epochs=epochs, lr=lr)
        acc = accuracy(qmodel, tdata.eval)
        trained = time.perf_counter() - started
        example = torch.from_numpy(data.x_test[:4])
        stripped = nncf.strip(qmodel, example_input=example)
        # the dynamo exporter (torch.export) fails on NNCF's quantizers (data-dependent guard); the TorchScript
        # exporter writes QuantizeLinear/DequantizeLinear
        torch.onnx.export(stripped, (example,), str(out), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the comparison reports why NNCF could not run, rather than failing
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}", "seconds": time.perf_counter() - started}
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(out)).graph
    ops = sorted({n.op_type for n in graph.node})
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    values = {**consts, **inits}
    weight_scales, act_types = [], set()
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in values:
            size = values[n.input[1]].size if n.input[1] in values else 1
            (weight_scales if size > 1 else []).append(size)
            act_types.add(str(values[n.input[2]].dtype))
    total = time.perf_counter() - started
    return {"init_seconds": init, "seconds": total, "export_seconds": total - trained,
            "ptq_accuracy": ptq_acc, "torch_accuracy": acc, "onnx_accuracy": onnx_accuracy(out, data), "ops": ops,
            "per_channel_quantizers": len(weight_scales), "zero_point_types": sorted(act_types),
            "version": nncf.__version__}


def bench_qat(work: Path, quick: bool, seconds: float) -> dict[str, Any]:
    from accelserve.examples.digits import digits_data
    from accelserve.optimize import optimize
    from accelserve.training import export as export_mod
    from accelserve.training.api import train_compress
    from accelserve.training.qat import QATConfig

    data = digits_data(0)
    tdata = training_data(data)
    epochs, lr = (1, 1e-3) if quick else (20, 3e-4)
    import torch

    torch.manual_seed(0)  # the initial weights, then the training order (train() seeds again)
    model = train(dwsep_cnn(4), data, epochs=15)
    fp32 = export_mod.export_float(model, work / "qat_fp32.onnx", tdata, ["x"])
    ptq = work / "qat_ptq.onnx"
    t0 = time.perf_counter()
    optimize(fp32, ["simplify", "int8"], ptq, dict(PTQ_OPTIONS),
             calibration=lambda: [{"x": b} for b in tdata.calibration], evaluate=False)
    ptq_seconds = time.perf_counter() - t0
    qat_runs: dict[str, Any] = {}
    for ranges in ("ema", "learnable"):
        config = QATConfig(target="ort-cpu", per_channel=False, reduce_range=True, epochs=epochs, lr=lr,
                           ranges=ranges)
        path = work / f"qat_int8_{ranges}.onnx"
        t0 = time.perf_counter()
        result = train_compress(model, tdata, "qat", path, config=config, evaluate_speed=False, quiet=True)
        qat_runs[f"INT8 QAT (accelserve, {ranges} ranges)"] = {
            "path": path, "seconds": time.perf_counter() - t0, "figures": result.figures}
    nncf_path = work / "nncf_int8.onnx"
    nncf_result = nncf_qat(model, tdata, data, nncf_path, epochs, lr)
    paths = {"FP32": fp32, "INT8 PTQ (int8 pass)": ptq, **{k: v["path"] for k, v in qat_runs.items()}}
    if "error" not in nncf_result:
        paths["INT8 QAT (NNCF)"] = nncf_path
    return {
        "model": "depthwise-separable CNN, width 4 (stem 4, dw 4, pw 8, dw 8, pw 16; 15 epochs Adam)",
        "layout": PTQ_OPTIONS, "epochs": epochs, "lr": lr, "test_samples": int(len(data.y_test)),
        "depthwise_channel_spread": depthwise_spread(model),
        "accuracy": {"FP32": onnx_accuracy(fp32, data), "INT8 PTQ (int8 pass)": onnx_accuracy(ptq, data),
                     **{k: onnx_accuracy(v["path"], data) for k, v in qat_runs.items()},
                     "FP32 fine-tuned (control)": finetune_fp32(model, tdata, epochs, lr)},
        "qat": {k: {"seconds": v["seconds"], "figures": v["figures"]} for k, v in qat_runs.items()},
        "ptq_seconds": ptq_seconds,
        "nncf": nncf_result,
        "latency": latencies(paths, data, (1, 32), seconds),
    }


# --------------------------------------------------------------------------------------------------------------
# Pruning at 75%


def bench_prune(work: Path, quick: bool, seconds: float) -> dict[str, Any]:
    return {"models": [prune_one(work / f"w{width}{head}", quick, seconds, width, head)
                       for width, head in ((32, "dense"), (16, "pool"))]}


def prune_one(work: Path, quick: bool, seconds: float, width: int, head: str) -> dict[str, Any]:
    from accelserve.examples.digits import digits_data, train_digits_cnn
    from accelserve.optimize import optimize
    from accelserve.training import export as export_mod
    from accelserve.training.api import train_compress
    from accelserve.training.distill import DistillConfig, PruneFinetuneConfig
    from accelserve.training.prune_torch import parameter_count

    data = digits_data(0)
    tdata = training_data(data)
    work.mkdir(parents=True, exist_ok=True)
    model = train_digits_cnn(data, width=width, head=head, epochs=8 if quick else 15)
    fp32 = export_mod.export_float(model, work / "prune_fp32.onnx", tdata, ["x"])
    calib = [{"x": b} for b in tdata.calibration]
    paths, seconds_taken = {"FP32": fp32}, {}
    for name, cfg in (("prune-channels 75%, no reconstruction", {"ratio": 0.75, "reconstruct": False}),
                      ("prune-channels 75% + least-squares reconstruction", {"ratio": 0.75})):
        out = work / f"pc_{len(paths)}.onnx"
        t0 = time.perf_counter()
        optimize(fp32, ["prune-channels"], out, cfg, calibration=lambda: calib, evaluate=False)
        seconds_taken[name], paths[name] = time.perf_counter() - t0, out
    per_step = 1 if quick else 6
    pf_name = f"prune -> fine-tune with distillation (3 steps x {per_step} epochs)"
    out = work / "pf.onnx"
    t0 = time.perf_counter()
    pf = train_compress(model, tdata, "prune-finetune", out, evaluate_speed=False, quiet=True,
                        config=PruneFinetuneConfig(target_ratio=0.75, steps=3, epochs_per_step=per_step,
                                                   accuracy_budget=None))
    seconds_taken[pf_name], paths[pf_name] = time.perf_counter() - t0, out
    d_epochs = 1 if quick else 18
    d_name = f"prune 75% once + distillation ({d_epochs} epochs)"
    out = work / "distill.onnx"
    t0 = time.perf_counter()
    train_compress(model, tdata, "distill", out, evaluate_speed=False, quiet=True,
                   config=DistillConfig(prune_ratio=0.75, epochs=d_epochs))
    seconds_taken[d_name], paths[d_name] = time.perf_counter() - t0, out

    import onnx
    from onnx import numpy_helper

    def params(p: Path) -> int:
        return int(sum(numpy_helper.to_array(t).size for t in onnx.load(str(p)).graph.initializer))

    return {"model": (f"digits CNN (accelserve.examples.digits), width {width}, {head} head"
                      f"{' (the pruning benchmark' + chr(39) + 's model)' if head == 'dense' else ''}, 15 epochs"),
            "torch_parameters": parameter_count(model), "test_samples": int(len(data.y_test)),
            "accuracy": {k: onnx_accuracy(p, data) for k, p in paths.items()},
            "parameters": {k: params(p) for k, p in paths.items()}, "seconds": seconds_taken,
            "prune_finetune_steps": pf.figures.get("steps"),
            "latency": latencies(paths, data, (32,), seconds)}


# --------------------------------------------------------------------------------------------------------------
# Report


def markdown(r: dict[str, Any]) -> str:
    m, q = r["machine"], r["qat"]
    smoke = " -- **QUICK SMOKE RUN: figures mean little**" if r["quick"] else ""
    lines = [
        (f"Machine: {m.get('cpu', m.get('model', '?'))}, {m.get('cores', '?')} cores, ONNX Runtime "
         f"{m.get('onnxruntime', '?')}, torch {r['torch']}; load average {r['load_before']} before, "
         f"{r['load_after']} after (shared machine); ONNX Runtime 1 thread, torch 1 thread; {r['date']}{smoke}"),
        "",
        (f"**QAT vs post-training INT8** -- {q['model']}; digits, {q['test_samples']} held-out samples (1 sample = "
         f"{100 / q['test_samples']:.2f} points). INT8 layout: the `int8` pass with `per_channel=false, "
         f"reduce_range=true` (per-tensor 7-bit weights, U8 activations); QAT: `accelserve.training` in the same "
         f"layout, {q['epochs']} epochs at lr {q['lr']}. Depthwise channel spread (largest/smallest channel "
         f"max|w| after BatchNorm folding): {q['depthwise_channel_spread']:.1f}x."),
        "",
        "| model | accuracy | vs FP32 (points) | p50 ms b=1 | p50 ms b=32 | fine-tuning wall s |",
        "|---|---|---|---|---|---|",
    ]
    base = q["accuracy"]["FP32"]
    nn = q["nncf"]
    acc = dict(q["accuracy"])
    if "error" not in nn:
        acc["INT8 QAT (NNCF)"] = nn["onnx_accuracy"]
    walls = {"INT8 PTQ (int8 pass)": q["ptq_seconds"], "INT8 QAT (NNCF)": nn.get("seconds"),
             **{k: v["seconds"] for k, v in q["qat"].items()}}
    for name, a in acc.items():
        lat1, lat32 = q["latency"]["1"].get(name), q["latency"]["32"].get(name)
        lines.append(f"| {name} | {100 * a:.2f}% | {100 * (a - base):+.2f} | "
                     f"{lat1['p50_ms']:.4f} | {lat32['p50_ms']:.4f} | " if lat1 else
                     f"| {name} | {100 * a:.2f}% | {100 * (a - base):+.2f} | - | - | ")
        lines[-1] += f"{walls[name]:.1f} |" if walls.get(name) is not None else "- |"
    for name, run in q["qat"].items():
        f = run["figures"]
        lines += ["", (f"{name}: fake-quant accuracy before fine-tuning (simulated PTQ) "
                       f"{100 * f['ptq_accuracy']:.2f}%, "
                       f"after {100 * f['qat_accuracy']:.2f}%; {f['ranges_from_training']} activation ranges written "
                       f"from the training into the Q/DQ model, which agrees with the fake-quant torch model on "
                       f"{100 * f['onnx_vs_fake_quant_agreement']:.1f}% of the held-out samples.")]
    lines += ["", "Wall times include export, quantization and verification (QAT) / export (NNCF)."]
    if "error" in nn:
        lines += ["", f"NNCF QAT could not run here: {nn['error']}"]
    else:
        lines += ["", (f"NNCF {nn['version']} (`nncf.quantize` defaults, its own layout: "
                       f"{nn['per_channel_quantizers']} per-channel quantizers, zero-point types "
                       f"{', '.join(nn['zero_point_types'])}; then the same fine-tuning, `nncf.strip`, "
                       f"`torch.onnx.export` "
                       f"(TorchScript exporter; the dynamo exporter fails on NNCF's quantizers)): accuracy after "
                       f"`nncf.quantize` {100 * nn['ptq_accuracy']:.2f}%, after fine-tuning "
                       f"{100 * nn['torch_accuracy']:.2f}% in torch and {100 * nn['onnx_accuracy']:.2f}% as ONNX; "
                       f"init {nn['init_seconds']:.1f} s, export {nn['export_seconds']:.1f} s; ONNX ops: "
                       f"{', '.join(nn['ops'])}.")]
    for p in r["prune"]["models"]:
        lines += ["", (f"**Channel pruning at 75%** -- {p['model']}; {p['test_samples']} held-out samples; latency "
                       "at batch 32, interleaved:"), "",
                  "| model | parameters | accuracy | vs FP32 (points) | p50 ms b=32 | wall s |",
                  "|---|---|---|---|---|---|"]
        base = p["accuracy"]["FP32"]
        for name, a in p["accuracy"].items():
            lat = p["latency"]["32"][name]
            wall = p["seconds"].get(name)
            lines.append(f"| {name} | {p['parameters'][name]:,} | {100 * a:.2f}% | {100 * (a - base):+.2f} | "
                         f"{lat['p50_ms']:.4f} | {f'{wall:.1f}' if wall is not None else '-'} |")
        steps = p.get("prune_finetune_steps") or []
        if steps:
            lines += ["", "prune -> fine-tune steps: " + "; ".join(
                f"{100 * st['ratio']:.0f}%: {100 * st['accuracy_before_finetune']:.2f}% -> {100 * st['accuracy']:.2f}%"
                for st in steps)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one epoch, short timings")
    parser.add_argument("--only", choices=["qat", "prune"], help="run one part (the docs are then not written)")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=RESULTS / "training", help="results prefix (.json, .md)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seconds = 1.0 if args.quick else 4.0
    results: dict[str, Any] = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                               "torch": torch.__version__, "load_before": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="accelserve-bench-training-") as tmp:
        work = Path(tmp)
        for part, fn in (("qat", bench_qat), ("prune", bench_prune)):
            if args.only and part != args.only:
                continue
            started = time.perf_counter()
            results[part] = fn(work, args.quick, seconds)
            print(f"[{part}] done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    results["load_after"] = round(os.getloadavg()[0], 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    if args.only:
        print(json.dumps({k: results[k] for k in results if k in ("qat", "prune")}, indent=1, default=str)[:6000])
        return 0
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if args.write_docs and not args.quick:
        write_docs_section("training", table, "Training-aware compression (QAT, distillation, prune + fine-tune)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
