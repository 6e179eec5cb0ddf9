"""``accelserve run`` benchmark: wall time of a full ``auto`` pipeline and of an unchanged re-run, and what stacking
buys over single techniques on a trained ResNet-style model.

    .venv/bin/python bench/pipeline.py                 # both parts (several minutes on 2 cores)
    .venv/bin/python bench/pipeline.py --part digits   # the digits CNN only
    .venv/bin/python bench/pipeline.py --write-docs    # also replace the Pipeline block in docs/benchmarks.md

Parts:

* **digits**: the digits CNN (accelserve.examples.digits, trained here) through the issue's pipeline file as
  written: ``candidates: auto``, ``max_accuracy_drop: 0.5``, throughput at batch 16, the real tritonserver load
  test (concurrency 1 and 8, 10 s each, SLO gates). The CLI is run twice in fresh processes on a fresh work dir;
  both wall times include Python start-up. Training is not counted.
* **resnet**: a ResNet-style CNN (basic blocks, identity and 1x1-projection shortcuts, widths 16/32/64) trained
  here on the digits upsampled to 32x32, through ``auto`` with a 1-point budget at batch 16; the best qualifying
  single-technique candidate vs the best qualifying stacked one, with the accuracy of each.

Writes bench/results/pipeline.json; the machine is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_docs_section, write_result  # noqa: E402

MODEL_PY = '''\
from pathlib import Path

import numpy as np
import torch

from {module} import {factory}


def build():
    model = {factory}()
    with np.load(Path(__file__).with_name("weights.npz")) as w:
        model.load_state_dict({{k: torch.from_numpy(w[k]) for k in w.files}})
    return model.eval()
'''

ISSUE_YAML = """\
model:
  source: model_def:build
  framework: torch
  inputs: ["x:1x1x{size}x{size}:float32"]
  files: [weights.npz]
data:
  calibration: calib.npz
  evaluation: test.npz
  labels: test_labels.npy
search:
  candidates: auto
  max_accuracy_drop: {budget}
  objective: throughput
  batch_size: 16
  budget_minutes: 20
repository:
  path: model_repository
  name: {name}
  max_batch_size: 32
  dynamic_batching: true
{loadtest}"""

LOADTEST = """\
loadtest:
  concurrency: [1, 8]
  duration: 10
  slo: ["p99_ms<=50", "throughput>=200"]
"""


def digits_factory() -> Any:
    from accelserve.examples.digits import digits_module

    return digits_module(16, "pool")


def resnet_factory() -> Any:
    import torch

    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.short(x))

    layers: list[Any] = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        layers += [Block(cin, width, stride), Block(width, width, 1)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(x, factor, axis=2), factor, axis=3).astype(np.float32)


def train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    from accelserve.examples.digits import fit_classifier

    return fit_classifier(model, x, y, epochs=epochs, seed=0)


def make_project(root: Path, kind: str, epochs: int, loadtest: bool, budget: float) -> Path:
    from accelserve.examples.digits import digits_data

    data = digits_data(0)
    factor = 4 if kind == "resnet" else 1
    x_train, x_test = upsample(data.x_train, factor), upsample(data.x_test, factor)
    model = train(resnet_factory() if kind == "resnet" else digits_factory(), x_train, data.y_train, epochs)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    (root / "model_def.py").write_text(MODEL_PY.format(module="bench.pipeline", factory=f"{kind}_factory"))
    np.savez(root / "calib.npz", x=x_train[:256])
    np.savez(root / "test.npz", x=x_test)
    np.save(root / "test_labels.npy", data.y_test)
    (root / "pipeline.yaml").write_text(ISSUE_YAML.format(size=8 * factor, budget=budget, name=kind,
                                                          loadtest=LOADTEST if loadtest else ""))
    return root / "pipeline.yaml"


def cli_run(config: Path, work: Path) -> tuple[float, int, dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "accelserve", "run", str(config), "--work-dir", str(work), "--quiet"],
                          cwd=config.parent, capture_output=True, text=True, env={**__import__("os").environ,
                                                                                 "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    report = json.loads((work / "reports" / "report.json").read_text())
    return seconds, proc.returncode, report


def bench_digits(tmp: Path, epochs: int) -> dict[str, Any]:
    config = make_project(tmp / "digits", "digits", epochs, loadtest=True, budget=0.5)
    work = tmp / "digits" / "work"
    first_s, first_rc, first = cli_run(config, work)
    again_s, again_rc, again = cli_run(config, work)
    return {
        "first": {"seconds": first_s, "exit": first_rc, "stages": len(first["stages"]), "winner": first["winner"],
                  "candidates": first["candidates"], "base": first["base"], "gates": first["gates"]},
        "rerun": {"seconds": again_s, "exit": again_rc, "cached_stages": again["cached_stages"],
                  "stages": len(again["stages"])},
        "rerun_fraction": again_s / first_s,
    }


def bench_resnet(tmp: Path, epochs: int, budget: float) -> dict[str, Any]:
    config = make_project(tmp / "resnet", "resnet", epochs, loadtest=False, budget=budget)
    seconds, rc, report = cli_run(config, tmp / "resnet" / "work")
    ok = [c for c in report["candidates"] if c["verdict"] == "pass"]
    single = [c for c in ok if c["origin"] == "auto" and c["recipe"] != "simplify"]
    stacked = [c for c in ok if c["origin"] == "stacked"]
    best = lambda cs: max(cs, key=lambda c: c["throughput"]) if cs else None  # noqa: E731
    bs, bk = best(single), best(stacked)
    return {"seconds": seconds, "exit": rc, "base": report["base"], "candidates": report["candidates"],
            "best_single": bs, "best_stacked": bk, "winner": report["winner"],
            "stacked_vs_single": (bk["throughput"] / bs["throughput"]) if bs and bk else None}


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"Machine: {m.get('model', '?')} ({m.get('machine', 'x86_64')}), "
             f"{m.get('cores', '?')} cores, ONNX Runtime {m.get('onnxruntime')}; {res['written']}", ""]
    if "digits" in res:
        d = res["digits"]
        w = d["first"]["winner"] or {}
        lines += ["**Digits CNN, the issue's pipeline file** (auto, 0.5-point budget, throughput at batch 16, "
                  "tritonserver load test 2 x 10 s), CLI wall time incl. Python start-up:", "",
                  "| run | wall s | exit | stages (cached) | winner |", "|---|---|---|---|---|",
                  f"| first | {d['first']['seconds']:.1f} | {d['first']['exit']} | {d['first']['stages']} (0) | "
                  f"`{w.get('recipe')}` {_f(w.get('speedup'), '.2f')}x, drop {_f(w.get('accuracy_drop_points'), '+.2f')} |",
                  f"| unchanged re-run | {d['rerun']['seconds']:.1f} | {d['rerun']['exit']} | {d['rerun']['stages']} "
                  f"({d['rerun']['cached_stages']}) | same |", "",
                  f"Re-run / first: {100 * d['rerun_fraction']:.1f}% (target < 15%); first run target < 300 s.", ""]
    if "resnet" in res:
        r = res["resnet"]
        lines += [f"**ResNet-style CNN trained on digits upsampled to 32x32** (auto, {res['resnet_budget']:g}-point "
                  f"budget, batch 16; FP32 top-1 {_f(r['base'].get('metric'), '.4f')}; search wall {r['seconds']:.0f} s):",
                  "", "| recipe | origin | top-1 | drop (pts) | samples/s | speedup | verdict |", "|---|---|---|---|---|---|---|"]
        for c in r["candidates"]:
            if c["status"] != "built":
                lines.append(f"| `{c['recipe']}` | {c['origin']} | - | - | - | - | {c['status']}: {c['reason'][:80]} |")
                continue
            lines.append(f"| `{c['recipe']}` | {c['origin']} | {_f(c['metric'], '.4f')} | "
                         f"{_f(c['accuracy_drop_points'], '+.2f')} | {_f(c['throughput'], '.0f')} | "
                         f"{_f(c['speedup'], '.2f')} | {c['verdict']} |")
        bs, bk = r["best_single"], r["best_stacked"]
        lines += ["", f"Best qualifying single technique: `{bs['recipe'] if bs else None}` "
                  f"({_f(bs and bs['speedup'], '.2f')}x); best qualifying stack: `{bk['recipe'] if bk else None}` "
                  f"({_f(bk and bk['speedup'], '.2f')}x); stack / single = {_f(r['stacked_vs_single'], '.2f')}x "
                  "(target >= 1.5x)."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["digits", "resnet", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--resnet-epochs", type=int, default=8)
    ap.add_argument("--budget", type=float, default=1.0, help="resnet accuracy budget in points")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    res: dict[str, Any] = {}
    previous = ROOT / "bench" / "results" / "pipeline.json"
    if args.part != "all" and previous.exists():  # keep the other part's figures
        res = {k: v for k, v in json.loads(previous.read_text()).items() if k in ("digits", "resnet", "resnet_budget")}
    res.update({"written": time.strftime("%Y-%m-%d"), "machine": machine()})
    if args.part in ("resnet", "all"):
        res["resnet_budget"] = args.budget
    tmp = Path(tempfile.mkdtemp(prefix="accelserve-bench-pipeline-"))
    try:
        if args.part in ("digits", "all"):
            res["digits"] = bench_digits(tmp, args.epochs)
        if args.part in ("resnet", "all"):
            res["resnet"] = bench_resnet(tmp, args.resnet_epochs, args.budget)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result("pipeline", res)
    text = markdown(res)
    print(text)
    if args.write_docs:
        write_docs_section("pipeline", text, "Pipeline (`accelserve run`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
