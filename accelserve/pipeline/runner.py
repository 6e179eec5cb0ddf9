"""``run_pipeline``: export, search candidates under an accuracy budget, pick the winner, load-test it on the real
tritonserver, and only then write it to the repository. Reports are written in every case (a partial one after
Ctrl-C or SIGTERM)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelserve.errors import AccelserveError, ExportError, InvalidInputError, Terminated
from accelserve.exporters.torch_loading import on_sys_path
from accelserve.pipeline.cache import StageCache, package_versions
from accelserve.pipeline.config import SCHEMA_VERSION, PipelineConfig, load_config
from accelserve.pipeline.progress import Progress
from accelserve.pipeline.search import (
    Candidate,
    Outcome,
    dominated_by_failure,
    parse_candidates,
    rank,
    stacked,
)
from accelserve.pipeline.stages import (
    RunContext,
    accuracy_stage,
    export_stage,
    load_data,
    loadtest_stage,
    optimize_step,
    repo_options,
    timing_stage,
    verify_stage,
)

EXIT_OK, EXIT_USER_ERROR, EXIT_GATE_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


@dataclass
class PipelineResult:
    exit_code: int
    status: str  #: passed | failed | interrupted | planned
    report: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def winner(self) -> dict[str, Any] | None:
        return self.report.get("winner")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) stops the run like Ctrl-C (as :class:`Terminated`): finished stages stay
    cached, a partial report is written, the repository is untouched. The CLI installs the same handler for every
    command; this one is for the Python API called from a main thread that has none."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # the CLI (or the caller) already handles it
        yield
        return
    fired = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:  # a second SIGTERM while the first one's cleanup runs is ignored
            fired.append(signum)
            raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def default_work_dir(config: PipelineConfig) -> Path:
    stem = Path(config.source).stem if config.source != "<dict>" else "pipeline"
    return config.base_dir / ".accelserve-run" / stem


def plan_text(config: PipelineConfig, work_dir: Path) -> str:
    s = config.search
    cands = parse_candidates(s)
    lines = [f"pipeline {config.source} (work dir {work_dir})",
             f"  1. export {config.model.resolved_framework} model {config.model.source}",
             f"  2. load calibration {config.data.calibration} and evaluation {config.data.evaluation}"
             f" (labels {config.data.labels or config.data.metric})",
             f"  3. search ({'auto' if s.candidates == 'auto' else 'given recipes'}): objective {s.objective} at "
             f"batch {s.batch_size}, max accuracy drop {s.max_accuracy_drop:g} points, budget {s.budget_minutes:g} min"]
    lines += [f"       - {c.label}" for c in cands]
    if s.candidates == "auto" and s.stack:
        lines.append("       - then each qualifying pruning/low-rank candidate stacked with the best qualifying "
                     "quantization")
    lines.append("     each: optimize -> verify -> accuracy on the labelled data; then all timed together (interleaved)")
    lines.append("  4. winner: best by objective meeting every constraint" +
                 (" (else FP32 if it meets every gate)" if s.fallback else ""))
    if config.loadtest:
        lt = config.loadtest
        lines.append(f"  5. serve the winner on tritonserver (staged repository), load test concurrency "
                     f"{lt.concurrency} for {lt.duration}s each; gates: {', '.join(lt.slo) or 'none'}, error rate <= "
                     f"{lt.max_error_rate:g}" + (f", baseline {lt.baseline}" if lt.baseline else ""))
    lines.append(f"  {6 if config.loadtest else 5}. add the winner to {config.path(config.repository.path)} as "
                 f"'{config.repository.name}' (only when every gate passed)")
    return "\n".join(lines)


def run_pipeline(config_or_path: PipelineConfig | str | Path | dict[str, Any], *, overrides: list[str] | None = None,
                 work_dir: str | Path | None = None, no_cache: bool = False, dry_run: bool = False,
                 json_path: str | Path | None = None, junit_path: str | Path | None = None,
                 markdown_path: str | Path | None = None, plot_path: str | Path | None = None,
                 progress: Progress | None = None) -> PipelineResult:
    """Run a pipeline. User errors (config, data, model) raise :class:`AccelserveError`; a failed gate returns
    ``exit_code`` 2; reports are written to the given paths, and always under ``WORK/reports/``."""
    config = config_or_path if isinstance(config_or_path, PipelineConfig) else load_config(config_or_path, overrides)
    work = Path(work_dir) if work_dir else default_work_dir(config)
    progress = progress or Progress()
    if dry_run:
        text = plan_text(config, work)
        return PipelineResult(EXIT_OK, "planned", {"plan": text})
    work.mkdir(parents=True, exist_ok=True)
    run = _Run(config, work, StageCache(work / "cache", enabled=not no_cache), progress)
    bug: Exception | None = None
    try:
        with _sigterm_as_interrupt(), on_sys_path(config.base_dir):
            run.execute()
    except KeyboardInterrupt as exc:
        run.status = "interrupted"
        run.exit_code = EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT
        what = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        run.messages.append(f"interrupted ({what}): finished stages are kept in the work dir; the repository is "
                            "untouched")
    except AccelserveError as exc:
        run.status, run.exit_code = "error", exc.exit_code
        run.messages.append(f"error: {exc}")
        run.error = exc
    except Exception as exc:  # a bug: still write what was done, then let the CLI show the traceback
        run.status, run.exit_code = "error", 3
        run.messages.append(f"internal error (a bug in accelserve): {type(exc).__name__}: {exc}")
        bug = exc
    finally:
        progress.close()
    from accelserve.pipeline import reports

    report = run.report()
    files = reports.write_all(report, work / "reports", json_path=json_path, junit_path=junit_path,
                              markdown_path=markdown_path, plot_path=plot_path)
    if bug is not None:
        raise bug
    if run.error is not None and run.exit_code == EXIT_USER_ERROR and not run.outcomes:
        raise run.error  # nothing was searched: a plain user error (the partial report is still on disk)
    return PipelineResult(run.exit_code, run.status, report, files)


class _Run:
    def __init__(self, config: PipelineConfig, work: Path, cache: StageCache, progress: Progress) -> None:
        self.config = config
        self.ctx = RunContext(config, cache, progress, work, package_versions())
        self.started = time.time()
        self.status, self.exit_code = "running", EXIT_GATE_FAILED
        self.error: AccelserveError | None = None
        self.messages: list[str] = []
        self.base: dict[str, Any] = {}
        self.outcomes: list[Outcome] = []
        self.winner: Outcome | None = None
        self.fallback = False
        self.gates: list[dict[str, Any]] = []
        self.loadtest: dict[str, Any] | None = None
        self.repository: dict[str, Any] | None = None
        self.budget_exhausted = False

    # ---------------------------------------------------------------------------------------------- the run
    def execute(self) -> None:
        cfg, ctx = self.config, self.ctx
        exported = export_stage(ctx)
        if "failed" in exported:
            raise ExportError(exported["failed"])
        base_path = str(Path(exported["_dir"]) / exported["model"])
        data = load_data(ctx, Path(base_path))
        self.base = {"key": exported["key"], "path": base_path, "precision": "fp32"}
        base_acc = accuracy_stage(ctx, self.base, data, "fp32")
        if "failed" in base_acc:
            raise InvalidInputError(f"evaluating the exported model failed: {base_acc['failed']}")
        self.base["metric"] = base_acc["metric"]

        deadline = self.started + cfg.search.budget_minutes * 60
        queue = parse_candidates(cfg.search)
        self._search(queue, data, deadline)
        if cfg.search.candidates == "auto":
            self._search(stacked(self.outcomes, cfg.search), data, deadline)

        built = [o for o in self.outcomes if o.status == "built"]
        if built:
            timing = timing_stage(ctx, self.base, built, data)
            if "failed" in timing:
                raise InvalidInputError(f"timing the candidates failed: {timing['failed']}")
            self._apply_timing(timing["report"], built)
        self._choose()
        if self.winner is None:
            self.status = "failed"
            return
        if cfg.loadtest is not None:
            self._loadtest()
        if all(g["passed"] for g in self.gates):
            self._write_repository()
            self.status, self.exit_code = "passed", EXIT_OK
        else:
            self.status = "failed"
            self.messages.append("a gate failed: the repository was not changed")

    def _search(self, candidates: list[Candidate], data: dict[str, Any], deadline: float) -> None:
        cfg = self.config.search
        for cand in candidates:
            out = Outcome(cand)
            self.outcomes.append(out)
            # only accuracy failures prune a branch: a pass that could not apply at one setting (lowrank at a
            # small ratio saving nothing) may well apply at another
            failed = [o.candidate for o in self.outcomes if o.status == "built" and not o.qualifies]
            parent = next((o for o in self.outcomes if o.candidate.label == cand.parent), None)
            if time.time() > deadline:
                out.status, out.reason = "not-tried", f"search budget of {cfg.budget_minutes:g} min used up"
                self.budget_exhausted = True
            elif parent is not None and parent is not out and not parent.qualifies:
                out.status, out.reason = "skipped", f"its parent {parent.candidate.label} already misses: {parent.missed()}"
            elif (worse := dominated_by_failure(cand, failed)) is not None:
                out.status, out.reason = "skipped", f"a milder variant, {worse.label}, already fails"
            else:
                self._build(out, data)
            if out.status in ("skipped", "not-tried"):
                self.ctx.progress.event(f"candidate {cand.label}: {out.status} ({out.reason})")

    def _build(self, out: Outcome, data: dict[str, Any]) -> None:
        ctx, cfg = self.ctx, self.config.search
        started = time.perf_counter()
        label = out.candidate.label
        model = self.base
        for step in out.candidate.steps:
            model = optimize_step(ctx, model, step, data, label)
            if "failed" in model:
                out.status, out.reason = "failed", f"{step.label}: {model['failed']}"
                out.seconds = time.perf_counter() - started
                ctx.progress.event(f"candidate {label}: FAILED ({out.reason})")
                return
        out.model_path, out.model_key = model["path"], model["key"]
        out.precision = model.get("precision") or "fp32"
        out.size_bytes = Path(model["path"]).stat().st_size
        ver = verify_stage(ctx, self.base, model, data, label, out.candidate.lossless)
        acc = accuracy_stage(ctx, model, data, label)
        for res, what in ((ver, "verification"), (acc, "evaluation")):
            if "failed" in res:
                out.status, out.reason = "failed", f"{what}: {res['failed']}"
                out.seconds = time.perf_counter() - started
                return
        out.status = "built"
        out.verification = {k: v for k, v in ver.items() if not k.startswith("_")}
        out.constraints["verification"] = {
            "passed": bool(ver["passed"]),
            "detail": ("outputs match FP32 within tolerance" if ver["strict"] else
                       f"same inputs/outputs, finite outputs (max abs error vs FP32 {ver['max_abs_error']:.3g})")
            if ver["passed"] else "; ".join(ver["problems"])}
        self._accuracy_constraints(out, acc["metric"])
        out.seconds = time.perf_counter() - started
        verdict = "meets the accuracy budget" if out.qualifies else f"misses: {out.missed()}"
        ctx.progress.event(f"candidate {label}: metric {out.metric:.4f} (drop {out.accuracy_drop:+.2f} points), {verdict}")

    def _accuracy_constraints(self, out: Outcome, metric: float) -> None:
        cfg = self.config.search
        out.metric = metric
        out.accuracy_drop = 100.0 * (self.base["metric"] - metric)
        ok = out.accuracy_drop <= cfg.max_accuracy_drop + 1e-9
        out.constraints["accuracy"] = {
            "passed": ok, "detail": f"drop {out.accuracy_drop:.2f} points {'<=' if ok else '>'} "
                                    f"{cfg.max_accuracy_drop:g} allowed ({self.base['metric']:.4f} -> {metric:.4f})"}
        if cfg.min_accuracy is not None:
            ok = metric >= cfg.min_accuracy
            out.constraints["min_accuracy"] = {
                "passed": ok, "detail": f"{metric:.4f} {'>=' if ok else '<'} {cfg.min_accuracy:g}"}

    def _apply_timing(self, report: dict[str, Any], built: list[Outcome]) -> None:
        cfg = self.config.search
        lat = report["base"]["latency"][0]
        self.base.update(latency_ms=lat["p50_ms"], throughput=lat["throughput"],
                         size_bytes=report["base"]["size"]["file_bytes"], evaluation=report)
        for out, ev in zip(built, report["candidates"]):
            cl = ev["latency"][0]
            out.latency_ms, out.throughput = cl["p50_ms"], cl["throughput"]
            out.speedup = (out.throughput / self.base["throughput"] if cfg.objective == "throughput"
                           else self.base["latency_ms"] / out.latency_ms)
            if cfg.min_speedup is not None:
                ok = out.speedup >= cfg.min_speedup
                out.constraints["min_speedup"] = {
                    "passed": ok, "detail": f"{out.speedup:.2f}x {'>=' if ok else '<'} {cfg.min_speedup:g}x vs FP32"}

    def _choose(self) -> None:
        cfg = self.config.search
        ranked = rank(self.outcomes, cfg.objective)
        if ranked:
            self.winner = ranked[0]
            self.gates.append({"name": "search: a candidate meets every constraint", "passed": True,
                               "detail": f"winner {self.winner.candidate.label}: {cfg.objective} "
                                         f"{self._objective_text(self.winner)}, {self.winner.speedup or 0:.2f}x FP32, "
                                         f"accuracy drop {self.winner.accuracy_drop:+.2f} points"})
            return
        missed = "; ".join(f"{o.candidate.label}: {o.missed()}" for o in self.outcomes) or "no candidate was tried"
        if cfg.fallback:
            fp32 = Outcome(Candidate((), origin="fp32"), status="built", model_path=self.base["path"],
                           model_key=self.base["key"], size_bytes=self.base.get("size_bytes"),
                           latency_ms=self.base.get("latency_ms"), throughput=self.base.get("throughput"), speedup=1.0)
            self._accuracy_constraints(fp32, self.base["metric"])
            if cfg.min_speedup is not None:
                ok = 1.0 >= cfg.min_speedup
                fp32.constraints["min_speedup"] = {"passed": ok, "detail": f"FP32 is 1.00x itself, "
                                                   f"{'>=' if ok else '<'} {cfg.min_speedup:g}x"}
            if fp32.qualifies:
                self.winner, self.fallback = fp32, True
                self.gates.append({"name": "search: a candidate meets every constraint", "passed": True,
                                   "detail": f"no candidate qualified ({missed}); FP32 fallback meets every gate"})
                return
            missed += f"; FP32 fallback: {fp32.missed()}"
        self.gates.append({"name": "search: a candidate meets every constraint", "passed": False,
                           "detail": f"no candidate qualifies: {missed}"})
        self.messages.append(f"no candidate qualifies: {missed}")

    def _objective_text(self, o: Outcome) -> str:
        if self.config.search.objective == "throughput":
            return f"{o.throughput or 0:.1f} samples/s at batch {self.config.search.batch_size}"
        return f"p50 {o.latency_ms or 0:.3f} ms at batch {self.config.search.batch_size}"

    def _loadtest(self) -> None:
        from accelserve.loadtest import gates as gate_mod
        from accelserve.loadtest.results import RunResult

        lt = self.config.loadtest
        assert lt is not None and self.winner is not None
        res = loadtest_stage(self.ctx, self.winner.model_path or "", self.winner.model_key or "")
        result = RunResult.from_dict(res["result"])
        baseline = None
        if lt.baseline:
            baseline = _read_baseline(self.config.path(lt.baseline))
        verdicts = gate_mod.evaluate(
            result, [gate_mod.Slo.parse(t) for t in lt.slo], max_error_rate=lt.max_error_rate, baseline=baseline,
            max_regression=gate_mod.parse_regression(lt.max_regression)) if result.steps else []
        complete = {"name": "loadtest: complete", "passed": bool(result.complete and result.steps),
                    "detail": "every step measured" if result.complete else f"stopped early: {result.abort_reason}"}
        self.gates.append(complete)
        self.gates += [{"name": f"loadtest: {g.name}", "passed": g.passed, "detail": g.detail} for g in verdicts]
        result.gates = [g.to_dict() for g in verdicts]
        self.loadtest = {"result": result.to_dict(), "cached": bool(res.get("_dir")) and
                         any(s["stage"] == "loadtest" and s["cached"] for s in self.ctx.stages)}
        for step in result.steps:
            self.ctx.progress.event(f"loadtest concurrency {step.level:g}: {step.metric('throughput'):.1f} infer/s, "
                                    f"p99 {step.metric('p99_ms'):.2f} ms, errors {step.metric('errors'):g}")

    def _write_repository(self) -> None:
        from accelserve.artifact import ModelArtifact
        from accelserve.triton.repository import MODEL_FILENAME, add_model, version_dirs

        r = self.config.repository
        assert self.winner is not None and self.winner.model_path
        repo = self.config.path(r.path)
        options = repo_options(self.config)
        plan = add_model(self.winner.model_path, repo, r.name, options, dry_run=True)
        versions = version_dirs(repo / r.name) if (repo / r.name).is_dir() else {}
        if versions and not plan.config_written:
            latest = versions[max(versions)] / MODEL_FILENAME
            if latest.is_file() and ModelArtifact(latest).sha256() == ModelArtifact(Path(self.winner.model_path)).sha256():
                self.repository = {"path": str(repo), "name": r.name, "version": max(versions), "written": False,
                                   "detail": f"version {max(versions)} already holds this model; nothing written"}
                self.ctx.progress.event(f"repository: {self.repository['detail']}")
                return
        added = add_model(self.winner.model_path, repo, r.name, options)
        self.repository = {"path": str(repo), "name": r.name, "version": added.version, "written": True,
                           "detail": f"added {r.name} version {added.version}"}
        self.ctx.progress.event(f"repository: added {r.name} version {added.version} to {repo}")

    # ---------------------------------------------------------------------------------------------- report
    def report(self) -> dict[str, Any]:
        from accelserve.passes.quantize_cpu import machine_info

        cfg = self.config
        try:
            machine = machine_info()
        except Exception as exc:  # the report must be written even if probing fails
            machine = {"error": str(exc)}
        finished = time.time()
        stamp = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "accelserve.pipeline.report",
            "status": self.status,
            "exit_code": self.exit_code,
            "config_file": cfg.source,
            "config": cfg.echo(),
            "work_dir": str(self.ctx.work_dir),
            "started": stamp(self.started),
            "finished": stamp(finished),
            "wall_seconds": round(finished - self.started, 3),
            "packages": {**self.ctx.versions, **package_versions(("torch", "tensorflow", "nvidia-pytriton", "locust"))},
            "machine": machine,
            "objective": cfg.search.objective,
            "batch_size": cfg.search.batch_size,
            "max_accuracy_drop": cfg.search.max_accuracy_drop,
            "base": {k: v for k, v in self.base.items() if k != "evaluation"},
            "candidates": [o.to_dict() for o in self.outcomes],
            "budget_exhausted": self.budget_exhausted,
            "winner": (self.winner.to_dict() | {"fallback": self.fallback}) if self.winner else None,
            "gates": self.gates,
            "loadtest": self.loadtest,
            "repository": self.repository,
            "stages": self.ctx.stages,
            "cached_stages": sum(1 for s in self.ctx.stages if s["cached"]),
            "messages": self.messages,
        }


def _read_baseline(path: Path) -> Any:
    import json

    from accelserve.loadtest.results import RunResult

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") == "accelserve.pipeline.report":
            if not data.get("loadtest"):
                raise InvalidInputError(f"loadtest.baseline {path} is a pipeline report without a load test")
            data = data["loadtest"]["result"]
        return RunResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"loadtest.baseline {path} is neither a pipeline report nor a load-test result: "
                                f"{exc}") from None
