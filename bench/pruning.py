"""Pruning and low-rank benchmark: every model measured by accelserve's evaluation harness (parameters, file size,
FLOPs, latency/throughput under ONNX Runtime CPU, accuracy vs labels or vs the base model).

    .venv/bin/python bench/pruning.py                 # full run (a few minutes)
    .venv/bin/python bench/pruning.py --quick         # smoke run: smaller models, short timings (numbers mean little)
    .venv/bin/python bench/pruning.py --write-docs    # also replace the Pruning table in docs/benchmarks.md

Parts:

* digits CNN trained here on scikit-learn's digits: 50% of the channels removed (weights only / least-squares
  reconstruction with L2 or activation importance), accuracy on the held-out test split, latency at batch 32;
  unstructured 80% magnitude and 2:4 pruning for size;
* a ResNet-style CNN (random weights) pruned at 25/50/75%: FLOPs and latency at batch 8 (speed only);
* a ResNet-style CNN *trained* on the digits upsampled to 16x16 (accelserve.examples.digits.digits_resnet) pruned
  at 25/50/75% with reconstruction: held-out accuracy of residual-group pruning;
* a transformer feed-forward block (d_model 256, d_ff 1024, seq 64, batch 8): lowrank at 50% rank, with a
  decaying singular spectrum (like trained weights) and plain Gaussian weights (the worst case).

Writes bench/results/pruning.{json,md}; the machine (CPU, cores, ONNX Runtime) is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accelserve.artifact import ModelArtifact  # noqa: E402
from accelserve.calibration import load_calibration  # noqa: E402
from accelserve.evaluate import evaluate_models  # noqa: E402
from accelserve.evaluate.flops import flops  # noqa: E402
from accelserve.passes.base import PassContext  # noqa: E402
from accelserve.plugins import load as load_plugin  # noqa: E402
from bench.common import write_docs_section  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def run_pass(name: str, config: dict[str, Any], model: Path, out: Path, calib: Any) -> dict[str, Any]:
    ctx = PassContext(out.parent / f"work_{out.stem}", calibration=calib)
    started = time.perf_counter()
    load_plugin("passes", name)(config).run(ModelArtifact.from_onnx(model), out, ctx)
    return {"report": ctx.report, "log": ctx.log, "seconds": time.perf_counter() - started}


def rows_from(report: Any, names: list[str], batch: int, flop_shapes: dict | None = None) -> list[dict[str, Any]]:
    """One row per model from an EvaluationReport."""
    rows = []
    for name, ev in zip(["base", *names], [report.base, *report.candidates]):
        lat = next(x for x in ev.latency if x.batch_size == batch)
        row = {
            "model": name, "parameters": ev.size.parameters, "nonzero": ev.size.nonzero_parameters,
            "file_kb": ev.size.file_bytes / 1024,
            "mflops": (flops(ev.path, flop_shapes).total if flop_shapes else (ev.flops or 0)) / 1e6,
            "p50_ms": lat.p50_ms, "throughput": lat.throughput, "stable": lat.stable,
            "speedup": report.speedup(ev, batch) if ev is not report.base else 1.0,
            "accuracy": ev.metric,
            "top1_agreement": ev.accuracy.top1_agreement if ev.accuracy else None,
            "rel_l2_error": ev.accuracy.rel_l2_error if ev.accuracy else 0.0,
        }
        rows.append(row)
    return rows


def bench_digits(work: Path, quick: bool, threads: int | None, seconds: float) -> dict[str, Any]:
    from accelserve.examples.digits import digits_cnn

    model, data = digits_cnn(work / "digits.onnx", width=16 if quick else 32, head="dense", epochs=2 if quick else 8)
    np.savez(work / "calib.npz", x=data.x_train[:512])
    np.save(work / "calib_labels.npy", data.y_train[:512])
    calib = load_calibration(work / "calib.npz", model)
    labels = str(work / "calib_labels.npy")
    variants = {
        "channels 50%, no reconstruction": ("prune-channels", {"ratio": 0.5, "reconstruct": False}),
        "channels 50%, L2 + reconstruction": ("prune-channels", {"ratio": 0.5, "labels": labels}),
        "channels 50%, activation + reconstruction": ("prune-channels",
                                                      {"ratio": 0.5, "importance": "activation", "labels": labels}),
        "magnitude 80% (global)": ("prune-magnitude", {"sparsity": 0.8, "scope": "global", "labels": labels}),
        "2:4": ("prune-2:4", {"labels": labels}),
        "channels up to 75%, budget 1 point": ("prune-channels", {"ratio": 0.75, "importance": "activation",
                                                                  "accuracy_budget": 1.0, "labels": labels}),
    }
    passes, paths = {}, []
    for i, (label, (name, config)) in enumerate(variants.items()):
        out = work / f"digits_{i}.onnx"
        passes[label] = run_pass(name, config, model, out, calib)
        paths.append(out)
    test = [{"x": data.x_test[s:s + 64]} for s in range(0, len(data.y_test), 64)]
    report = evaluate_models(model, paths, test, labels=data.y_test, batch_sizes=(32,), threads=threads,
                             memory=False, names=list(variants), max_seconds=seconds)
    rows = rows_from(report, list(variants), 32)
    for row in rows[1:]:
        rep = passes[row["model"]]["report"]
        row["zipped_kb"] = rep["sizes"]["zipped_bytes"]["after"] / 1024 if "sizes" in rep else None
    rows[0]["zipped_kb"] = next((p["report"]["sizes"]["zipped_bytes"]["before"] / 1024
                                 for p in passes.values() if "sizes" in p["report"]), None)
    return {"rows": rows, "passes": {k: {"log": v["log"], "seconds": v["seconds"]} for k, v in passes.items()},
            "machine": report.machine, "threads": report.threads, "test_samples": len(data.y_test)}


def bench_resnet(work: Path, quick: bool, threads: int | None, seconds: float) -> dict[str, Any]:
    from accelserve.examples.onnx_models import resnet_onnx

    model = resnet_onnx(work / "resnet.onnx", widths=(16, 32, 64) if quick else (32, 64, 128), image=32)
    rng = np.random.default_rng(0)
    np.savez(work / "rcalib.npz", input=rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    calib = load_calibration(work / "rcalib.npz", model)
    ratios = [0.5] if quick else [0.25, 0.5, 0.75]
    paths, names, groups = [], [], {}
    for r in ratios:
        out = work / f"resnet_{int(r * 100)}.onnx"
        res = run_pass("prune-channels", {"ratio": r}, model, out, calib)
        paths.append(out)
        names.append(f"channels {int(r * 100)}%")
        groups[names[-1]] = {"pruned": res["report"]["groups_pruned"], "groups": len(res["report"]["groups"]),
                             "coupled": [g["sources"] for g in res["report"]["groups"] if len(g["sources"]) > 1]}
    feeds = [{"input": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)}]
    report = evaluate_models(model, paths, feeds, batch_sizes=(8,), threads=threads, memory=False, names=names,
                             max_seconds=seconds)
    return {"rows": rows_from(report, names, 8), "groups": groups, "threads": report.threads}


def bench_resnet_digits(work: Path, quick: bool, threads: int | None, seconds: float) -> dict[str, Any]:
    from accelserve.examples.digits import digits_resnet

    model, data = digits_resnet(work / "digits_resnet.onnx", epochs=2 if quick else 6)
    np.savez(work / "rd_calib.npz", x=data.x_train[:256])
    calib = load_calibration(work / "rd_calib.npz", model)
    ratios = [0.5] if quick else [0.25, 0.5, 0.75]
    paths, names = [], []
    for r in ratios:
        out = work / f"digits_resnet_{int(r * 100)}.onnx"
        run_pass("prune-channels", {"ratio": r}, model, out, calib)
        paths.append(out)
        names.append(f"channels {int(r * 100)}% + reconstruction")
    test = [{"x": data.x_test[s:s + 64]} for s in range(0, len(data.y_test), 64)]
    report = evaluate_models(model, paths, test, labels=data.y_test, batch_sizes=(32,), threads=threads,
                             memory=False, names=names, max_seconds=seconds)
    return {"rows": rows_from(report, names, 32), "threads": report.threads, "test_samples": len(data.y_test),
            "date": time.strftime("%Y-%m-%d")}


def bench_ffn(work: Path, quick: bool, threads: int | None, seconds: float) -> dict[str, Any]:
    from accelserve.examples.onnx_models import ffn_onnx

    d_model, d_ff, seq = (128, 512, 32) if quick else (256, 1024, 64)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"shape": {"d_model": d_model, "d_ff": d_ff, "seq": seq, "batch": 8}}
    for spectrum in ("decaying", "gaussian"):
        model = ffn_onnx(work / f"ffn_{spectrum}.onnx", d_model=d_model, d_ff=d_ff, spectrum=spectrum)
        np.savez(work / "fcalib.npz", input=rng.standard_normal((32, seq, d_model)).astype(np.float32))
        calib = load_calibration(work / "fcalib.npz", model)
        lr = work / f"ffn_{spectrum}_lowrank.onnx"
        res = run_pass("lowrank", {"ratio": 0.5}, model, lr, calib)
        feeds = [{"input": rng.standard_normal((8, seq, d_model)).astype(np.float32)}]
        report = evaluate_models(model, [lr], feeds, batch_sizes=(8,), threads=threads, memory=False,
                                 names=["lowrank 50%"], max_seconds=seconds)
        rows = rows_from(report, ["lowrank 50%"], 8, {"input": (1, seq, d_model)})
        out[spectrum] = {"rows": rows, "layers": res["report"]["layers"], "threads": report.threads}
    return out


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    m = results["digits"]["machine"]
    smoke = " -- **QUICK SMOKE RUN: numbers mean little**" if results["quick"] else ""
    lines = [
        (f"Machine: {m.get('model', '?')} ({m.get('machine', '?')}), {m.get('cores', '?')} cores, "
         f"ONNX Runtime {m.get('onnxruntime', '?')}; {results['date']}{smoke}"),
        "",
        (f"**Digits CNN** (trained here; accuracy on the {results['digits']['test_samples']} held-out test digits; "
         f"latency at batch 32, {results['digits']['threads']} thread(s)):"),
        "",
        "| model | parameters (non-zero) | file KB | zipped KB | MFLOPs/sample | p50 ms | speed-up | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["digits"]["rows"]:
        lines.append(f"| {r['model']} | {_fmt(r['parameters'])} ({_fmt(r['nonzero'])}) | {_fmt(r['file_kb'], '.1f')} "
                     f"| {_fmt(r.get('zipped_kb'), '.1f')} | {_fmt(r['mflops'])} | {_fmt(r['p50_ms'], '.3f')} "
                     f"| {_fmt(r['speedup'])}x | {_fmt(100 * r['accuracy'], '.2f')}% |")
    # random weights: the outputs barely depend on the input, so an error against the base is no evidence of
    # accuracy (issue 12): FLOPs, size and speed only
    lines += ["", (f"**ResNet-style CNN, speed only** (random weights, 32x32 input, batch 8, "
                   f"{results['resnet']['threads']} thread(s); residual groups pruned as one):"), "",
              "| model | parameters | MFLOPs/sample | p50 ms | speed-up |",
              "|---|---|---|---|---|"]
    for r in results["resnet"]["rows"]:
        lines.append(f"| {r['model']} | {_fmt(r['parameters'])} | {_fmt(r['mflops'])} | {_fmt(r['p50_ms'], '.3f')} "
                     f"| {_fmt(r['speedup'])}x |")
    if "resnet_digits" in results:
        rd = results["resnet_digits"]
        lines += ["", (f"**ResNet-style CNN trained on the digits** (upsampled to 16x16; widths 16/32/64, one basic "
                       f"block per stage, 1x1 projection shortcuts; accuracy on the {rd['test_samples']} held-out "
                       f"test digits; batch 32, {rd['threads']} thread(s); measured {rd['date']}):"), "",
                  "| model | parameters | MFLOPs/sample | p50 ms | speed-up | accuracy |",
                  "|---|---|---|---|---|---|"]
        for r in rd["rows"]:
            lines.append(f"| {r['model']} | {_fmt(r['parameters'])} | {_fmt(r['mflops'])} | "
                         f"{_fmt(r['p50_ms'], '.3f')} | {_fmt(r['speedup'])}x | {_fmt(100 * r['accuracy'], '.2f')}% |")
    ffn = results["ffn"]
    lines += ["", (f"**Feed-forward block** (d_model {ffn['shape']['d_model']}, d_ff {ffn['shape']['d_ff']}, seq "
                   f"{ffn['shape']['seq']}, batch 8), lowrank at 50% rank:"), "",
              ("Output rel. L2 error: against the unfactorized block on random inputs, a property of the weight "
               "spectrum (how much a truncated SVD loses), not task accuracy."), "",
              "| weights | model | parameters | MFLOPs/sample | p50 ms | speed-up | output rel. L2 error |",
              "|---|---|---|---|---|---|---|"]
    for spectrum in ("decaying", "gaussian"):
        for r in ffn[spectrum]["rows"]:
            lines.append(f"| {spectrum} | {r['model']} | {_fmt(r['parameters'])} | {_fmt(r['mflops'])} | "
                         f"{_fmt(r['p50_ms'], '.3f')} | {_fmt(r['speedup'])}x | {_fmt(r['rel_l2_error'], '.4f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small models, short timings")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the harness's)")
    parser.add_argument("--write-docs", action="store_true", help="replace the Pruning table in docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=RESULTS / "pruning", help="results prefix (.json, .md)")
    parser.add_argument("--only", help="re-measure only these parts (comma-separated: digits, resnet, "
                        "resnet_digits, ffn); the others are kept from the stored results JSON")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-render the Markdown (and docs) from the stored results JSON")
    args = parser.parse_args(argv)
    if args.render_only:
        table = markdown(json.loads(args.out.with_suffix(".json").read_text()))
        args.out.with_suffix(".md").write_text(table)
        print(table)
        if args.write_docs:
            write_docs_section("pruning", table, "Pruning")
        return 0
    seconds = 1.0 if args.quick else 8.0
    results: dict[str, Any] = {"quick": args.quick, "date": time.strftime("%Y-%m-%d")}
    parts = {"digits": bench_digits, "resnet": bench_resnet, "resnet_digits": bench_resnet_digits, "ffn": bench_ffn}
    chosen = list(parts)
    if args.only:
        chosen = [p.strip() for p in args.only.split(",") if p.strip()]
        if set(chosen) - set(parts):
            parser.error(f"--only: parts are {', '.join(parts)}")
        # the other parts stay as recorded (their own date stays in the header / section)
        results = {**json.loads(args.out.with_suffix(".json").read_text()), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="accelserve-bench-pruning-") as tmp:
        work = Path(tmp)
        for part, fn in ((p, parts[p]) for p in chosen):
            started = time.perf_counter()
            results[part] = fn(work, args.quick, args.threads, seconds)
            print(f"[{part}] done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    table = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if args.write_docs:
        if args.quick:
            print("not writing docs from a --quick run", file=sys.stderr)
        else:
            write_docs_section("pruning", table, "Pruning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
