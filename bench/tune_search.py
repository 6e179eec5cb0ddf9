"""Does `accelserve tune` find a better serving config than the default, and does `quick` find it cheaply?

    .venv/bin/python bench/tune_search.py                 # digits CNN and ResNet-style CNN, SLO p99 <= 20 ms
    .venv/bin/python bench/tune_search.py --write-docs    # ... and put the table into docs/benchmarks.md
    .venv/bin/python bench/tune_search.py --models resnet --slo 'p99_ms<=10' --duration 3

Per model (served on the local tritonserver; ONNX models run through accelserve's ONNX Runtime stand-in here):
1. ``brute`` over instances {1,2} x intra-op threads {1,2} x dynamic batching {off, on} x queue delay {0, 1000 us}
   (12 distinct configs, plus the default), client concurrency 1,2,4,8,16 per config (stopping early);
2. ``quick`` over the same space, from the default;
3. side by side, in one interleaved run (A-B-B-A): the default config and brute's winner, each swept again; the
   gain is the ratio of their best throughputs within the SLO.
The models: the digits CNN (trained here on scikit-learn's digits) and the ResNet-style CNN (accelserve.examples).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section, write_result  # noqa: E402

SPACE = {"instances": (1, 2), "threads": (1, 2), "dynamic_batching": (False, True), "max_queue_delays_us": (0, 1000)}


def build_repo(name: str, workdir: Path) -> Path:
    from accelserve.triton.config import TritonModelOptions
    from accelserve.triton.repository import add_model

    if name == "digits":
        from accelserve.examples.digits import digits_cnn

        path, _ = digits_cnn(workdir / "digits.onnx", epochs=10)
    elif name == "resnet":
        from accelserve.examples.onnx_models import resnet_onnx

        path = resnet_onnx(workdir / "resnet.onnx", widths=(16, 32, 64), blocks=1, image=32)
    else:
        raise SystemExit(f"unknown model {name}: digits or resnet")
    repo = workdir / f"repo_{name}"
    add_model(path, repo, name, TritonModelOptions(max_batch_size=16))
    return repo


def side_by_side(repo: Path, model: str, configs: dict[str, str], args: argparse.Namespace, log: Any) -> dict:
    """Each config swept ``args.repeat`` times in A-B-B-A order on one server; best passing throughput per sweep."""
    from accelserve.loadtest.gates import Slo
    from accelserve.loadtest.runner import RequestOptions
    from accelserve.triton.config import parse_config_text
    from accelserve.tune.measure import Target, measure_points

    slos = [Slo.parse(args.slo)]
    names = list(configs)
    out: dict[str, list[dict]] = {n: [] for n in names}
    with Target(str(repo), model, None) as target, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name in (names if r % 2 == 0 else names[::-1]):
                target.load(parse_config_text(configs[name]))
                log(f"  side by side: {name} (round {r + 1})")
                points = measure_points(target.url, None, model, [1, 2, 4, 8, 16], request=RequestOptions(), slos=slos,
                                        max_error_rate=0.0, warmup_s=args.warmup, duration_s=args.duration, workers=0,
                                        workers_auto=False, work_dir=Path(tmp) / f"{name}{r}", log=log)
                passing = [p for p in points if p.passes]
                best = max(passing, key=lambda p: p.throughput) if passing else None
                out[name].append({"throughput": best.throughput if best else 0.0,
                                  "p99_ms": best.p99_ms if best else None,
                                  "concurrency": best.concurrency if best else None})
    return {n: {"runs": runs, "mean_throughput": sum(x["throughput"] for x in runs) / len(runs)}
            for n, runs in out.items()}


def run_model(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    from accelserve.tune.search import TuneConfig, tune

    def log(line: str) -> None:
        print(line, flush=True)

    repo = build_repo(name, workdir)
    results = {}
    for mode in ("brute", "quick"):
        log(f"== {name}: {mode}")
        t0 = time.monotonic()
        config = TuneConfig(target=str(repo), model=name, mode=mode, slos=(args.slo,), budget_minutes=args.budget,
                            concurrency=(1, 2, 4, 8, 16), duration_s=args.duration, warmup_s=args.warmup, **SPACE)
        r = tune(config, log=log)
        if r.stopped == "interrupted":
            raise KeyboardInterrupt
        results[mode] = {
            "trials": len(r.configs), "seconds": time.monotonic() - t0, "passed": r.passed, "stopped": r.stopped,
            "winner": r.winner.name if r.winner else None, "why": r.why,
            "winner_label": r.winner.candidate.label() if r.winner else None,
            "best_throughput": r.winner.best.throughput if r.winner and r.winner.best else 0.0,
            "default_throughput": r.default.best.throughput if r.default and r.default.best and r.default.passes else 0.0,
            "winner_config": r.winner.config_text if r.winner else None,
            "default_config": r.default.config_text if r.default else None,
            "configs": [{k: v for k, v in c.to_dict().items() if k != "config_pbtxt"} for c in r.configs],
        }
    brute = results["brute"]
    sbs = None
    if brute["winner_config"] and brute["winner"] != "config_default":
        log(f"== {name}: default vs brute's winner, side by side")
        sbs = side_by_side(repo, name, {"default": brute["default_config"], "tuned": brute["winner_config"]}, args, log)
    return {"model": name, **results, "side_by_side": sbs}


HEADER = ("| model | default config: best inf/s within SLO | tuned (brute winner) | side-by-side gain | brute: trials, "
          "best inf/s | quick: trials, best inf/s (vs brute) |\n|---|---:|---|---:|---:|---:|")


def format_row(r: dict) -> str:
    b, q, s = r["brute"], r["quick"], r["side_by_side"]
    if s:
        d, t = s["default"]["mean_throughput"], s["tuned"]["mean_throughput"]
        gain = f"{d:.0f} -> {t:.0f} ({t / d - 1:+.0%})" if d else f"default: no point within the SLO; tuned {t:.0f}"
    else:
        gain = "default config won"
    vs = f"{q['best_throughput'] / b['best_throughput'] - 1:+.0%}" if b["best_throughput"] else "-"
    return (f"| {r['model']} | {b['default_throughput']:.0f} | {b['winner_label']}: {b['best_throughput']:.0f} | {gain} | "
            f"{b['trials']}, {b['best_throughput']:.0f} | {q['trials']}, {q['best_throughput']:.0f} ({vs}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,resnet")
    parser.add_argument("--slo", default="p99_ms<=20")
    parser.add_argument("--duration", type=int, default=2, help="seconds per measured point")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=2, help="side-by-side sweeps per config (A-B-B-A)")
    parser.add_argument("--budget", type=float, default=15.0, help="minutes per search")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet, instances 1,2 only, 1 s points")
    args = parser.parse_args()
    if args.quick:
        args.models, args.duration, args.warmup, args.repeat = "resnet", 1, 0.2, 1
        SPACE.update(threads=(1,), dynamic_batching=(True,), max_queue_delays_us=(0,))
    import os

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(run_model(name, args, Path(tmp)))
            print(HEADER + "\n" + format_row(rows[-1]), flush=True)
    table = "\n".join([HEADER, *(format_row(r) for r in rows)])
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(table)
    print(load)
    info = machine()
    if args.quick:
        return 0
    space = {k: list(v) for k, v in SPACE.items()}
    write_result("tune_search", {"load": load, "slo": args.slo, "duration_s": args.duration, "space": space, "rows": rows})
    if args.write_docs and not args.quick:
        note = (f"Measured {time.strftime('%Y-%m-%d')} on {info['model']} ({info['cores']} cores, shared with other "
                f"jobs: {load}), SLO `{args.slo}`, {args.duration} s per point after {args.warmup} s warm-up, concurrency 1-16 "
                f"per config; space: instances 1,2 x intra-op threads 1,2 x dynamic batching off/on x queue delay "
                f"0/1000 us. Side-by-side gain: default and tuned config swept {args.repeat}x each, A-B-B-A.")
        write_docs_section("tune-search", f"{note}\n\n{table}", "Serving-config search (`accelserve tune`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
