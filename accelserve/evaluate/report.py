"""Evaluation report output: JSON (stable keys), a Markdown table, and a PNG plot of accuracy drop vs latency."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from accelserve._lazy import require

if TYPE_CHECKING:
    from accelserve.evaluate.harness import EvaluationReport, ModelEvaluation


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory (never a half-written file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _flag(acc: object) -> str:
    return "" if getattr(acc, "meaningful", True) else " (not meaningful)"


def _row(report: EvaluationReport, ev: ModelEvaluation, is_base: bool) -> list[str]:
    acc = ev.accuracy
    drop = None if is_base else report.metric_drop(ev)
    cells = [
        ev.name,
        _mb(ev.size.file_bytes),
        "1.00" if is_base else f"{report.compression_ratio(ev):.2f}",
        f"{ev.size.parameters:,}",
        f"{ev.size.nonzero_parameters:,}",
        _fmt(ev.flops / 1e9 if ev.flops is not None else None, ".3g"),
        "-" if acc is None else f"{acc.max_abs_error:.3g}",
        "-" if acc is None else f"{acc.cosine:.5f}" + _flag(acc),
        "-" if acc is None else f"{acc.centered_cosine:.5f}",
        "-" if acc is None or acc.top1_agreement is None else f"{100 * acc.top1_agreement:.2f}%" + _flag(acc),
    ]
    if report.metric_name:
        cells += [_fmt(ev.metric, ".4f"), _fmt(100 * drop if drop is not None else None, "+.2f")]
    for b in report.batch_sizes:
        lat = next((x for x in ev.latency if x.batch_size == b), None)
        speedup = None if is_base else report.speedup(ev, b)
        cells += [
            "-" if lat is None else f"{lat.p50_ms:.3g} / {lat.p99_ms:.3g}" + ("" if lat.stable else " (unstable)"),
            "-" if lat is None else f"{lat.throughput:.1f}",
            "1.00x" if is_base else (_fmt(speedup, ".2f") + "x" if speedup else "-"),
        ]
    cells.append("-" if ev.memory is None else _mb(ev.memory.session_bytes))
    return cells


def to_markdown(report: EvaluationReport) -> str:
    head = ["model", "size MB", "compression", "params", "non-zero", "GFLOPs", "max abs err", "cosine",
            "centred cosine", "top-1 agree"]
    if report.metric_name:
        head += [report.metric_name, "drop (points)"]
    for b in report.batch_sizes:
        head += [f"p50 / p99 ms (bs {b})", f"samples/s (bs {b})", f"speed-up (bs {b})"]
    head.append("session peak MB")
    rows = [_row(report, report.base, True)] + [_row(report, c, False) for c in report.candidates]
    lines = []
    if report.smoke_only:
        lines.append("> **Smoke only:** evaluated on random data; the accuracy figures mean nothing.\n")
    for ev in report.candidates:
        if ev.accuracy is not None and not ev.accuracy.meaningful:
            lines.append(f"> **{ev.name}: cosine and top-1 agreement with the base are not meaningful:** "
                         + "; ".join(ev.accuracy.not_meaningful)
                         + ". Read the centred cosine (agreement on what depends on the input), or measure "
                           "against labels of real data with a trained model.\n")
    m = report.machine
    lines.append(
        f"Data: {report.data.get('source')} ({report.data.get('feeds')} feeds). Machine: {m.get('model')}, "
        f"{report.threads} thread(s), ONNX Runtime {m.get('onnxruntime')}.\n"
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if report.gates:
        from accelserve.evaluate.gates import summary

        lines += ["", "Accuracy gates:", "", *[f"- {line}" for line in summary(report.gates).splitlines()]]
    return "\n".join(lines) + "\n"


def plot_png(report: EvaluationReport, path: str | Path) -> Path:
    """Accuracy drop vs p50 latency (smallest batch size), one point per model."""
    matplotlib = require("matplotlib", "plotting the evaluation report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = report.batch_sizes[0] if report.batch_sizes else None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    label = "accuracy drop"
    points = []
    for ev in [report.base, *report.candidates]:
        lat = next((x for x in ev.latency if x.batch_size == batch), None)
        if lat is None:
            continue
        if ev is report.base:
            drop = 0.0
        else:
            drop, label = report.accuracy_drop(ev)
        points.append((lat.p50_ms, drop, ev.name))
    for x, y, name in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"p50 latency, ms (batch {batch}, {report.threads} threads)" if batch else "latency not measured")
    ax.set_ylabel(label)
    title = "accuracy drop vs latency"
    if report.smoke_only:
        title += " (SMOKE ONLY: random data)"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return p


def write_report(report: EvaluationReport, *, json_path: str | Path | None = None,
                 markdown_path: str | Path | None = None, plot_path: str | Path | None = None) -> list[Path]:
    written = []
    if json_path:
        text = json.dumps(report.to_dict(), indent=2, sort_keys=True, default=float)
        written.append(atomic_write_bytes(json_path, text.encode()))
    if markdown_path:
        written.append(atomic_write_bytes(markdown_path, report.markdown().encode()))
    if plot_path:
        written.append(plot_png(report, plot_path))
    return written
