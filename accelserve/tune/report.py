"""Reports of a tune run: a text table, JSON, CSV (one row per config and per point), HTML and a PNG plot of
throughput vs p99 (every measured point, each config's best point, the SLO line, the winner marked)."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from accelserve._lazy import require
from accelserve.evaluate.report import atomic_write_bytes
from accelserve.tune.search import ConfigResult, TuneResult


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def rows(result: TuneResult) -> list[dict[str, str]]:
    out = []
    for r in result.configs:
        b = r.best
        out.append({
            "config": r.name + (" *" if r is result.winner else ""),
            "settings": r.candidate.label(),
            "best concurrency": str(b.concurrency) if b else "-",
            "throughput inf/s": _fmt(b.throughput if b else None, ".1f"),
            "p50 ms": _fmt(b.p50_ms if b else None),
            "p99 ms": _fmt(b.p99_ms if b else None),
            "server queue / compute ms": f"{_fmt(b.queue_ms if b else None, '.3f')} / "
                                         f"{_fmt(b.compute_ms if b else None, '.3f')}",
            "generator CPU": (f"{b.generator_cpu_percent:.0f}%" + (" (limited?)" if b.generator_limited else ""))
            if b and b.generator_cpu_percent is not None else "-",
            "meets SLO": "yes" if r.passes else ("load failed" if r.error and not r.points else "no"),
        })
    return out


def text_table(result: TuneResult) -> str:
    data = rows(result)
    if not data:
        return "(no config measured)"
    keys = list(data[0])
    widths = {k: max(len(k), *(len(row[k]) for row in data)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys), "  ".join("-" * widths[k] for k in keys)]
    lines += ["  ".join(row[k].ljust(widths[k]) for k in keys) for row in data]
    return "\n".join(lines)


def summary(result: TuneResult) -> str:
    head = f"winner: {result.winner.name} ({result.winner.candidate.label()})" if result.winner else "no winner"
    stopped = {"budget": " [stopped at the time budget]", "interrupted": " [interrupted: partial]"}.get(
        result.stopped or "", "")
    return f"{head}{stopped}\n  why: {result.why}"


def write_json(result: TuneResult, path: str | Path) -> Path:
    return atomic_write_bytes(Path(path), (json.dumps(result.to_dict(), indent=2) + "\n").encode())


def write_csv(result: TuneResult, path: str | Path) -> Path:
    """One row per measured point (config x concurrency), with the config's settings and whether it is best."""
    buf = io.StringIO()
    fields = ["config", "winner", "instances", "threads", "max_batch_size", "dynamic_batching",
              "preferred_batch_sizes", "max_queue_delay_us", "concurrency", "best_point", "throughput",
              "requests_per_s", "p50_ms", "p99_ms", "avg_ms", "error_rate", "queue_ms", "compute_ms",
              "generator_cpu_percent", "generator_limited", "passes", "violations", "error"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in result.configs:
        c = r.candidate
        common = {"config": r.name, "winner": r is result.winner, "instances": c.instances, "threads": c.threads,
                  "max_batch_size": c.max_batch_size, "dynamic_batching": c.dynamic_batching,
                  "preferred_batch_sizes": " ".join(map(str, c.preferred_batch_sizes)),
                  "max_queue_delay_us": c.max_queue_delay_us, "error": r.error or ""}
        if not r.points:
            writer.writerow(common)
        for p in r.points:
            writer.writerow({**common, "concurrency": p.concurrency, "best_point": p is r.best,
                             "throughput": f"{p.throughput:.3f}", "requests_per_s": f"{p.requests_per_s:.3f}",
                             "p50_ms": f"{p.p50_ms:.3f}", "p99_ms": f"{p.p99_ms:.3f}", "avg_ms": f"{p.avg_ms:.3f}",
                             "error_rate": f"{p.error_rate:.5f}", "queue_ms": p.queue_ms, "compute_ms": p.compute_ms,
                             "generator_cpu_percent": p.generator_cpu_percent,
                             "generator_limited": p.generator_limited, "passes": p.passes,
                             "violations": "; ".join(p.violations)})
    return atomic_write_bytes(Path(path), buf.getvalue().encode())


def _p99_bound(result: TuneResult) -> float | None:
    bounds = [s for s in result.config.parsed_slos() if s.metric == "p99_ms" and s.upper_bound]
    return min((s.value for s in bounds), default=None)


def plot_png(result: TuneResult, path: str | Path) -> Path:
    """Throughput vs p99 of every measured point; each config a line over its concurrencies."""
    matplotlib = require("matplotlib", "plotting the tune report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in result.configs:
        if not r.points:
            continue
        xs, ys = [p.p99_ms for p in r.points], [p.throughput for p in r.points]
        style = {"lw": 2.5, "color": "tab:green", "zorder": 3} if r is result.winner else {"lw": 0.8, "alpha": 0.6}
        ax.plot(xs, ys, marker=".", **style)
    for r in result.configs:
        if r.best is not None and r is not result.winner:
            ax.scatter([r.best.p99_ms], [r.best.throughput], s=14, color="gray", zorder=2)
    if result.winner is not None and result.winner.best is not None:
        b = result.winner.best
        ax.scatter([b.p99_ms], [b.throughput], s=160, marker="*", color="tab:green", zorder=4,
                   label=f"winner {result.winner.name}: {b.throughput:.0f} inf/s, p99 {b.p99_ms:.2f} ms")
    bound = _p99_bound(result)
    if bound is not None:
        ax.axvline(bound, color="tab:red", ls="--", label=f"SLO p99 <= {bound:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title(f"accelserve tune {result.config.model} ({result.config.mode}, {len(result.configs)} configs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def write_html(result: TuneResult, path: str | Path, png: str | Path | None = None) -> Path:
    data = rows(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (data[0] if data else {}))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in data)
    image = ""
    if png is not None:
        import base64

        image = f'<img alt="throughput vs p99" src="data:image/png;base64,{base64.b64encode(Path(png).read_bytes()).decode()}">'
    winner_cfg = ""
    if result.winner is not None:
        winner_cfg = f"<h2>Winning config.pbtxt</h2><pre>{html.escape(result.winner.config_text)}</pre>"
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>accelserve tune {html.escape(result.config.model)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style>
</head><body><h1>accelserve tune: {html.escape(result.config.model)}</h1>
<p>mode {result.config.mode}, objective {result.config.objective}, constraints {html.escape(', '.join(result.config.slos) or 'none')},
max error rate {result.config.max_error_rate:g}; {len(result.configs)} configs in {result.seconds:.0f} s{' (stopped: ' + result.stopped + ')' if result.stopped else ''}.</p>
<p><b>{html.escape(summary(result))}</b></p>
<table><tr>{head}</tr>{body}</table>{image}{winner_cfg}</body></html>
"""
    return atomic_write_bytes(Path(path), doc.encode())


def write_all(result: TuneResult, out_dir: str | Path) -> list[Path]:
    """tune.json, tune.csv, tune.png (when matplotlib is installed) and tune.html under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(result, out / "tune.json"), write_csv(result, out / "tune.csv")]
    png = None
    if any(r.points for r in result.configs):
        png = plot_png(result, out / "tune.png")
        written.append(png)
    written.append(write_html(result, out / "tune.html", png))
    return written
