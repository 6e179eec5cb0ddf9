"""Load-test reports: a text table, JSON, CSV and a self-contained HTML page with a latency-vs-throughput plot.

The HTML plot is inline SVG written here (no plotting library needed, no external assets).
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

from accelserve.loadtest.results import RunResult, StepResult, write_json_atomic

#: CSV columns of steps.csv, in order (stable: scripts read them by name)
STEP_COLUMNS = [
    "mode", "level", "users", "batch_size", "duration_s", "stable", "complete",
    "requests", "errors", "error_rate", "requests_per_s", "inferences_per_s",
    "latency_avg_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
    "server_requests", "server_request_ms", "server_queue_ms", "server_compute_input_ms", "server_compute_infer_ms",
    "server_compute_output_ms", "client_overhead_ms", "load_generator_cpu_percent",
]
WINDOW_COLUMNS = ["mode", "level", "start_s", "requests_per_s", "p95_ms"]


def step_row(step: StepResult) -> dict[str, Any]:
    srv = step.server or {}
    lat = step.latency_ms
    return {
        "mode": step.mode, "level": step.level, "users": step.users, "batch_size": step.batch_size,
        "duration_s": step.duration_s, "stable": "" if step.stable is None else step.stable, "complete": step.complete,
        "requests": step.requests, "errors": step.errors, "error_rate": step.error_rate,
        "requests_per_s": step.requests_per_s, "inferences_per_s": step.inferences_per_s,
        **{f"latency_{k}_ms": lat.get(k) for k in ("avg", "p50", "p90", "p95", "p99", "max")},
        "server_requests": srv.get("requests", ""),
        "server_request_ms": srv.get("request_ms", ""),
        "server_queue_ms": srv.get("queue_ms", ""),
        "server_compute_input_ms": srv.get("compute_input_ms", ""),
        "server_compute_infer_ms": srv.get("compute_infer_ms", ""),
        "server_compute_output_ms": srv.get("compute_output_ms", ""),
        "client_overhead_ms": "" if srv.get("client_overhead_ms") is None else srv["client_overhead_ms"],
        "load_generator_cpu_percent": "" if step.load_generator_cpu_percent is None else step.load_generator_cpu_percent,
    }


def text_table(result: RunResult) -> str:
    head = (f"{'level':>8} {'infer/s':>10} {'req/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'errors':>7} {'server ms':>9} {'queue ms':>8} {'overhd ms':>9}  note")
    lines = [head, "-" * len(head)]
    for s in result.steps:
        lat, srv = s.latency_ms, s.server or {}
        note = [] if s.complete else ["INCOMPLETE"]
        if s.stable is False:
            note.append("unstable")
        if s.generator_limited:
            note.append(f"load generator at {s.load_generator_cpu_percent:.0f}% CPU: it may have limited this step"
                        + ("" if result.settings.workers_auto else " (try --workers auto)"))

        def num(key: str, srv: dict = srv) -> str:
            v = srv.get(key)
            return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

        lines.append(
            f"{s.level:>8g} {s.inferences_per_s:>10.1f} {s.requests_per_s:>10.1f} {lat['p50']:>8.3f} {lat['p90']:>8.3f} "
            f"{lat['p95']:>8.3f} {lat['p99']:>8.3f} {lat['max']:>8.2f} {s.errors:>7d} {num('request_ms'):>9} "
            f"{num('queue_ms'):>8} {num('client_overhead_ms'):>9}  {', '.join(note)}"
        )
    return "\n".join(lines)


def write_json(result: RunResult, path: str | Path) -> Path:
    p = Path(path)
    write_json_atomic(p, result.to_dict())
    return p


def write_csv(result: RunResult, directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    steps_path, windows_path = d / "steps.csv", d / "windows.csv"
    with open(steps_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS)
        writer.writeheader()
        for step in result.steps:
            writer.writerow(step_row(step))
    with open(windows_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=WINDOW_COLUMNS)
        writer.writeheader()
        for step in result.steps:
            for w in step.window_series:
                writer.writerow({"mode": step.mode, "level": step.level, **{k: w[k] for k in WINDOW_COLUMNS[2:]}})
    return [steps_path, windows_path]


# -------------------------------------------------------------------------------------------------------- html

_COLORS = {"p50": "#1f77b4", "p95": "#ff7f0e", "p99": "#d62728"}


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    import math

    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def latency_throughput_svg(steps: list[StepResult], width: int = 720, height: int = 400) -> str:
    """Latency percentiles (y, ms) against throughput (x, inferences/s), one point per step, labelled by level."""
    left, right, top, bottom = 70, 20, 20, 50
    pw, ph = width - left - right, height - top - bottom
    xmax = _nice_max(max((s.inferences_per_s for s in steps), default=0) * 1.05)
    ymax = _nice_max(max((s.latency_ms["p99"] for s in steps), default=0) * 1.05)

    def x(v: float) -> float:
        return left + pw * v / xmax

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12" role="img" aria-label="latency versus throughput">')]
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(6):
        xv, yv = xmax * i / 5, ymax * i / 5
        out.append(f'<line x1="{x(xv):.1f}" y1="{top + ph}" x2="{x(xv):.1f}" y2="{top + ph + 5}" stroke="#999"/>')
        out.append(f'<text x="{x(xv):.1f}" y="{top + ph + 18}" text-anchor="middle">{xv:g}</text>')
        out.append(f'<line x1="{left - 5}" y1="{y(yv):.1f}" x2="{left + pw}" y2="{y(yv):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(yv) + 4:.1f}" text-anchor="end">{yv:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">throughput (inferences/s)</text>')
    out.append(f'<text transform="translate(16,{top + ph / 2}) rotate(-90)" text-anchor="middle">latency (ms)</text>')
    ordered = sorted(steps, key=lambda s: s.level)
    for key, color in _COLORS.items():
        points = " ".join(f"{x(s.inferences_per_s):.1f},{y(s.latency_ms[key]):.1f}" for s in ordered)
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for s in ordered:
            out.append(f'<circle cx="{x(s.inferences_per_s):.1f}" cy="{y(s.latency_ms[key]):.1f}" r="3.5" fill="{color}">'
                       f'<title>{s.mode} {s.level:g}: {key} {s.latency_ms[key]:.3f} ms at {s.inferences_per_s:.1f}/s</title>'
                       "</circle>")
    for s in ordered:  # label each point with its level, above the p99 marker
        out.append(f'<text x="{x(s.inferences_per_s):.1f}" y="{y(s.latency_ms["p99"]) - 8:.1f}" text-anchor="middle" '
                   f'fill="#555">{s.level:g}</text>')
    for i, (key, color) in enumerate(_COLORS.items()):
        lx = left + 10 + i * 70
        out.append(f'<rect x="{lx}" y="{top + 8}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{lx + 16}" y="{top + 18}">{key}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: RunResult) -> str:
    t = result.target
    status = "complete" if result.complete else f"INCOMPLETE: {html.escape(result.abort_reason or 'stopped early')}"
    failed = [g for g in result.gates if not g.get("passed")]
    verdict = ("not evaluated (the run is incomplete)" if not result.complete
               else f"{len(failed)} of {len(result.gates)} gates FAILED" if failed
               else f"all {len(result.gates)} gates passed" if result.gates else "no gates")
    gate_rows = [{"gate": g["name"], "result": "PASS" if g["passed"] else "FAIL", "detail": g["detail"]} for g in result.gates]
    step_rows = [step_row(s) for s in result.steps]
    shown = ["level", "users", "inferences_per_s", "requests_per_s", "latency_p50_ms", "latency_p90_ms",
             "latency_p95_ms", "latency_p99_ms", "latency_max_ms", "errors", "error_rate", "stable", "complete",
             "duration_s", "load_generator_cpu_percent"]
    server_cols = ["level", "server_requests", "server_request_ms", "server_queue_ms", "server_compute_input_ms",
                   "server_compute_infer_ms", "server_compute_output_ms", "latency_avg_ms", "client_overhead_ms"]
    settings = result.settings
    how = (f"fixed {settings.fixed_duration_s} s windows" if settings.fixed_duration_s else
           f"{settings.window_s} s windows until the last {settings.stability_windows} agree within "
           f"{settings.stability_tolerance:.0%} (max {settings.max_step_s:g} s)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>accelserve load test: {html.escape(str(t.get('model')))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child, th:first-child {{ text-align: left; }}
.fail {{ color: #b00; font-weight: bold; }} .ok {{ color: #070; font-weight: bold; }}
</style></head><body>
<h1>Load test: {html.escape(str(t.get('model')))}</h1>
<p>{html.escape(str(t.get('url')))} ({html.escape(str(t.get('protocol')))}), batch size {t.get('batch_size')},
{html.escape(settings.mode)} sweep {', '.join(f'{lv:g}' for lv in settings.levels)}, warm-up {settings.warmup_s:g} s, {html.escape(how)},
{settings.workers or 'no'} Locust worker processes. Started {html.escape(result.started_at)}, finished {html.escape(result.finished_at)}.</p>
<p>Run: <span class="{'ok' if result.complete else 'fail'}">{status}</span>.
Gates: <span class="{'fail' if failed or not result.complete else 'ok'}">{verdict}</span>.</p>
<h2>Latency vs throughput</h2>
{latency_throughput_svg(result.steps) if result.steps else '<p>no step was measured</p>'}
<h2>Gates</h2>
{_table(gate_rows, ["gate", "result", "detail"]) if gate_rows else '<p>none</p>'}
<h2>Steps (client side)</h2>
{_table(step_rows, shown)}
<h2>Server-side breakdown (Triton statistics, per request, same windows)</h2>
{_table(step_rows, server_cols)}
<p>Latencies in ms. Client overhead = client mean latency - Triton's mean request time (network, HTTP/gRPC framing,
client library). Load generator CPU: busiest Locust process (100% = one core); near 100% the client limits the result.</p>
</body></html>
"""


def write_html(result: RunResult, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(result), encoding="utf-8")
    return p
