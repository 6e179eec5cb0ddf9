"""Pipeline reports: JSON (versioned), Markdown (a pull-request comment), JUnit XML (one test case per gate and
per candidate constraint, as pytest's junitxml shapes it) and a PNG of the accuracy-vs-speed Pareto front."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from accelserve.evaluate.report import atomic_write_bytes
from accelserve.pipeline.search import pareto_front

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(text: Any) -> str:
    return _XML_ILLEGAL.sub(lambda m: f"#x{ord(m.group()):02X}", str(text))


def _num(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    status = report["status"]
    icon = {"passed": "PASSED", "failed": "FAILED", "interrupted": "INTERRUPTED", "error": "ERROR"}.get(status, status)
    w = report.get("winner")
    base = report.get("base") or {}
    lines = [f"## accelserve pipeline: {icon}", ""]
    if w:
        how = " (FP32 fallback)" if w.get("fallback") else ""
        lines.append(f"**Winner**: `{w['recipe']}`{how}: {report['objective']} "
                     f"{_num(w.get('throughput'), '.1f')} samples/s, p50 {_num(w.get('latency_p50_ms'), '.3f')} ms at "
                     f"batch {report['batch_size']}, {_num(w.get('speedup'), '.2f')}x FP32, accuracy drop "
                     f"{_num(w.get('accuracy_drop_points'), '+.2f')} points (budget {report['max_accuracy_drop']:g}).")
    else:
        lines.append("**No winner.**")
    repo = report.get("repository")
    if repo:
        lines.append(f"Repository: {repo['detail']} ({repo['path']}).")
    elif status != "passed":
        lines.append("Repository: not changed.")
    lines += ["", "### Gates", "", "| gate | result | detail |", "|---|---|---|"]
    for g in report.get("gates", []):
        lines.append(f"| {g['name']} | {'pass' if g['passed'] else '**FAIL**'} | {g['detail']} |")
    lines += ["", "### Candidates", "",
              f"FP32: metric {_num(base.get('metric'), '.4f')}, p50 {_num(base.get('latency_ms'), '.3f')} ms, "
              f"{_num(base.get('throughput'), '.1f')} samples/s, {_num((base.get('size_bytes') or 0) / 1e6, '.3f')} MB",
              "", "| recipe | status | metric | drop (pts) | p50 ms | samples/s | speedup | size MB | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in report.get("candidates", []):
        verdict = "pass" if c["verdict"] == "pass" else "; ".join(
            f"{n}: {v['detail']}" for n, v in c["constraints"].items() if not v["passed"]) or c["reason"]
        mark = " **winner**" if w and c["recipe"] == w["recipe"] else ""
        lines.append(f"| `{c['recipe']}`{mark} | {c['status']} | {_num(c['metric'], '.4f')} | "
                     f"{_num(c['accuracy_drop_points'], '+.2f')} | {_num(c['latency_p50_ms'], '.3f')} | "
                     f"{_num(c['throughput'], '.1f')} | {_num(c['speedup'], '.2f')} | "
                     f"{_num((c['size_bytes'] or 0) / 1e6 if c['size_bytes'] else None, '.3f')} | {verdict} |")
    lt = report.get("loadtest")
    if lt:
        lines += ["", "### Load test (tritonserver)" + (" (reused from cache)" if lt.get("cached") else ""), "",
                  "| concurrency | infer/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
        for s in lt["result"].get("steps", []):
            lines.append(f"| {s['level']:g} | {_num(_get(s, 'throughput'), '.1f')} | {_num(_get(s, 'p50_ms'), '.2f')}"
                         f" | {_num(_get(s, 'p99_ms'), '.2f')} | {_get(s, 'errors')} |")
    stages = report.get("stages", [])
    per: dict[str, list[int]] = {}
    for st in stages:
        per.setdefault(st["stage"], [0, 0])[0 if st["cached"] else 1] += 1
    detail = ", ".join(f"{name} {c} cached / {r} run" for name, (c, r) in per.items())
    lines += ["", f"Stages: {len(stages)}, {sum(c for c, _ in per.values())} reused from cache ({detail}); "
              f"wall time {report['wall_seconds']:.1f}s."]
    for m in report.get("messages", []):
        lines.append(f"> {m}")
    return "\n".join(lines) + "\n"


def _get(step: dict[str, Any], metric: str) -> Any:
    from accelserve.loadtest.results import StepResult

    try:
        return StepResult.from_dict(step).metric(metric)
    except Exception:
        return step.get(metric)


def junit_xml(report: dict[str, Any]) -> bytes:
    suites = ET.Element("testsuites", name="accelserve pipeline")

    def suite(name: str, cases: list[tuple[str, str, bool | None, str, float]]) -> None:
        failures = sum(1 for c in cases if c[2] is False)
        skipped = sum(1 for c in cases if c[2] is None)
        el = ET.SubElement(suites, "testsuite", name=name, tests=str(len(cases)), failures=str(failures),
                           errors="0", skipped=str(skipped), time=f"{sum(c[4] for c in cases):.3f}",
                           timestamp=report.get("started", ""), hostname=socket.gethostname())
        for classname, case, passed, detail, secs in cases:
            tc = ET.SubElement(el, "testcase", classname=_x(classname), name=_x(case), time=f"{secs:.3f}")
            if passed is False:
                ET.SubElement(tc, "failure", message=_x(detail)).text = _x(detail)
            elif passed is None:
                ET.SubElement(tc, "skipped", message=_x(detail))
            else:
                ET.SubElement(tc, "system-out").text = _x(detail)

    gates = [("pipeline.gates", g["name"], bool(g["passed"]), g["detail"], 0.0) for g in report.get("gates", [])]
    if report["status"] in ("interrupted", "error"):
        gates.append(("pipeline.gates", "run completed", False, "; ".join(report.get("messages", [])), 0.0))
    suite("gates", gates)
    cases = []
    for c in report.get("candidates", []):
        cls = f"pipeline.candidates.{c['recipe']}"
        if c["status"] != "built":
            passed = False if c["status"] == "failed" else None
            cases.append((cls, "built", passed, f"{c['status']}: {c['reason']}", c["seconds"]))
            continue
        for name, v in c["constraints"].items():
            cases.append((cls, name, bool(v["passed"]), v["detail"], 0.0))
    suite("candidates", cases)
    ET.indent(suites)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="utf-8")


def plot_png(report: dict[str, Any], path: Path) -> Path | None:
    """Accuracy drop vs speedup of every timed candidate; the Pareto front joined, the winner marked."""
    pts = [c for c in report.get("candidates", []) if c.get("speedup") is not None]
    if not pts:
        return None
    from accelserve._lazy import require

    matplotlib = require("matplotlib", "the Pareto plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the Pareto plot")
    import io

    xy = [(c["speedup"], c["accuracy_drop_points"]) for c in pts]
    front = sorted(pareto_front(xy), key=lambda i: xy[i][0])
    fig, ax = plt.subplots(figsize=(8, 5))
    for c, (x, y) in zip(pts, xy):
        ok = c["verdict"] == "pass"
        ax.scatter(x, y, c="tab:blue" if ok else "tab:gray", marker="o" if ok else "x", zorder=3)
        ax.annotate(c["recipe"].replace("simplify,", ""), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", c="tab:orange", label="Pareto front", zorder=2)
    ax.scatter([1.0], [0.0], c="black", marker="s", label="FP32", zorder=3)
    w = report.get("winner")
    if w and w.get("speedup") is not None:
        ax.scatter([w["speedup"]], [w["accuracy_drop_points"] or 0.0], s=250, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"winner: {w['recipe']}", zorder=4)
    ax.axhline(report["max_accuracy_drop"], c="red", lw=0.8, ls=":", label="accuracy budget")
    ax.set_xlabel(f"speedup vs FP32 ({report['objective']}, batch {report['batch_size']})")
    ax.set_ylabel("accuracy drop (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_all(report: dict[str, Any], directory: Path, *, json_path: Any = None, junit_path: Any = None,
              markdown_path: Any = None, plot_path: Any = None) -> list[Path]:
    """Write every report under ``directory`` and to the paths asked for."""
    body = {
        "json": json.dumps(report, indent=2, sort_keys=True, default=str).encode(),
        "md": markdown(report).encode(),
        "xml": junit_xml(report),
    }
    files: list[Path] = []
    for ext, extra in (("json", json_path), ("md", markdown_path), ("xml", junit_path)):
        for p in [directory / f"report.{ext}", *( [Path(extra)] if extra else [])]:
            files.append(atomic_write_bytes(p, body[ext]))
    for p in [directory / "pareto.png", *([Path(plot_path)] if plot_path else [])]:
        written = plot_png(report, p)
        if written:
            files.append(written)
    return files
