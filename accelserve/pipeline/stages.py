"""The pipeline's stages. Each calls library functions (exporters, ``optimize``, ``verify``, the evaluation harness,
the load-test runner), never the CLI, and stores its result in the stage cache under a key of everything it
depends on."""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import AccelserveError, InvalidInputError
from accelserve.pipeline.cache import StageCache, hash_dict, hash_file, hash_path, package_versions
from accelserve.pipeline.config import PipelineConfig, path_part
from accelserve.pipeline.progress import Progress
from accelserve.pipeline.search import Outcome, Step

VERIFY_FEEDS = 4


@dataclass
class RunContext:
    config: PipelineConfig
    cache: StageCache
    progress: Progress
    work_dir: Path
    versions: dict[str, str | None]
    stages: list[dict[str, Any]] = field(default_factory=list)
    memo: dict[str, dict[str, Any]] = field(default_factory=dict)  #: key -> result, within this run

    def record(self, stage: str, key: str, cached: bool, seconds: float, candidate: str | None = None,
               detail: str = "") -> None:
        self.stages.append({"stage": stage, "candidate": candidate, "key": key, "cached": cached,
                            "seconds": round(seconds, 3)})
        name = stage if candidate is None else f"{stage} [{candidate}]"
        self.progress.stage(name, seconds, cached, detail)

    def cached_stage(self, stage: str, key: str, build: Any, candidate: str | None = None,
                     detail: Any = None, cache_failures: bool = True, plain: bool = False) -> dict[str, Any]:
        """Return the cached result of ``stage`` under ``key``, or run ``build(staging_dir) -> result`` and store it.
        A user error inside ``build`` is stored as ``{"failed": message}`` (a known failure is not retried)."""
        if key in self.memo:
            return self.memo[key]
        hit = self.cache.get(stage, key)
        if hit is not None:
            self.record(stage, key, True, 0.0, candidate, detail(hit) if detail else "")
            self.memo[key] = hit
            return hit
        what = f"{stage}" + (f" [{candidate}]" if candidate else "")
        if plain:  # the stage prints its own progress lines
            self.progress.event(f"start {what}")
        else:
            self.progress.status(what)
        started = time.perf_counter()
        staging = self.cache.begin(stage, key)
        try:
            try:
                result = build(staging)
            except AccelserveError as exc:
                if not cache_failures:
                    raise
                result = {"failed": str(exc).splitlines()[0], "error": type(exc).__name__}
            result["_seconds"] = round(time.perf_counter() - started, 3)
            final = self.cache.commit(stage, key, staging, result)
        except BaseException:
            self.cache.abort(staging)
            raise
        result = dict(result, _dir=str(final))
        self.memo[key] = result
        self.record(stage, key, False, time.perf_counter() - started, candidate, detail(result) if detail else "")
        return result


def _source_hash(config: PipelineConfig) -> dict[str, Any]:
    """Bytes the model source depends on: its file (or module file, or SavedModel dir) and model.files."""
    m = config.model
    out: dict[str, Any] = {}
    part = path_part(m.source)
    if part is not None:
        out["source"] = hash_path(config.path(part))
    else:
        module = m.source.split(":", 1)[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise InvalidInputError(f"model.source: cannot find module '{module}' (looked in {config.base_dir} "
                                    "and on the Python path)")
        out["source"] = hash_file(spec.origin)
    out["files"] = [hash_path(config.path(f)) for f in m.files]
    return out


def export_stage(ctx: RunContext) -> dict[str, Any]:
    from accelserve.artifact import ModelArtifact

    cfg = ctx.config
    m = cfg.model
    fw = m.resolved_framework
    extra = {"torch": ("torch",), "tensorflow": ("tensorflow", "tf2onnx")}.get(fw, ())
    key = hash_dict({"stage": "export", "model": m.model_dump(mode="json"), "framework": fw,
                     "bytes": _source_hash(cfg), "versions": {**ctx.versions, **package_versions(extra)}})

    def build(staging: Path) -> dict[str, Any]:
        out = staging / "model.onnx"
        messages: list[str] = []
        if fw == "onnx":
            art = ModelArtifact.from_onnx(cfg.path(m.source), check=True)
            art.copy_to(staging, "model.onnx")
        else:
            part = path_part(m.source)
            source = str(cfg.path(part)) + (m.source[len(part):] if part else "") if part else m.source
            opts = {"opset": m.opset} if m.opset else {}
            if fw == "torch":
                from accelserve.exporters.torch_exporter import export_torch

                res = export_torch(source, None, out, inputs=m.inputs, **opts)
            else:
                from accelserve.exporters.tensorflow_exporter import export_tensorflow

                res = export_tensorflow(source, m.inputs or None, out, **opts)
            messages = list(res.messages)
        return {"model": "model.onnx", "messages": messages, "framework": fw}

    return {**ctx.cached_stage("export", key, build, cache_failures=False), "key": key}


def load_data(ctx: RunContext, base_model: Path) -> dict[str, Any]:
    """Calibration and evaluation data, validated against the exported model, with fingerprints."""
    from accelserve.calibration import load_calibration
    from accelserve.evaluate import load_labels

    cfg = ctx.config
    d = cfg.data

    def spec(text: str) -> str:
        part = path_part(text)
        return str(cfg.path(part)) + text[len(part):] if part else text

    started = time.perf_counter()
    calib = load_calibration(spec(d.calibration), base_model, count=d.calibration_count)
    evaluation = load_calibration(spec(d.evaluation), base_model)
    labels = load_labels(cfg.path(d.labels)) if d.labels else None
    samples = sum(next(iter(f.values())).shape[0] for f in evaluation.feeds())
    if labels is not None and len(labels) != samples:
        raise InvalidInputError(f"data.labels has {len(labels)} labels for {samples} evaluation samples",
                                hint="labels must be aligned with the samples of data.evaluation")
    if calib.is_random or evaluation.is_random:
        raise InvalidInputError("the pipeline needs real calibration and evaluation data")
    labels_fp = hash_dict(np.asarray(labels).tolist()) if labels is not None else None
    metric_fp = d.metric
    if d.metric and path_part(d.metric):
        metric_fp = d.metric + ":" + hash_file(cfg.path(path_part(d.metric)))
    ctx.progress.event(f"data: calibration {calib.describe().get('feeds')} feeds, evaluation {samples} samples "
                       f"({time.perf_counter() - started:.1f}s)")
    return {"calibration": calib, "evaluation": evaluation, "labels": labels,
            "calib_fp": calib.fingerprint(), "eval_fp": hash_dict([evaluation.fingerprint(), labels_fp, metric_fp])}


def optimize_step(ctx: RunContext, parent: dict[str, Any], step: Step, data: dict[str, Any],
                  label: str) -> dict[str, Any]:
    """One pass on the parent's model (keys chain: the parent's key is part of this one)."""
    from accelserve.optimize import load_pass_class, optimize

    cls = load_pass_class(step.name)
    full_config = cls.make_config(step.option_dict()).model_dump(mode="json")
    key = hash_dict({"stage": "optimize", "parent": parent["key"], "pass": step.name, "config": full_config,
                     "calibration": data["calib_fp"], "versions": ctx.versions})

    def build(staging: Path) -> dict[str, Any]:
        res = optimize(parent["path"], [step.name], staging / "model.onnx", options=step.option_dict(),
                       calibration=data["calibration"], evaluate=False, work_dir=staging)
        return {"model": "model.onnx", "precision": res.output.precision, "passes": [p.to_dict() for p in res.passes]}

    out = ctx.cached_stage("optimize", key, build, candidate=label)
    result = {**out, "key": key}
    if "failed" not in out:
        result["path"] = str(Path(out["_dir"]) / out["model"])
        if parent.get("precision") not in (None, "fp32") and out.get("precision") == "fp32":
            result["precision"] = parent["precision"]
    return result


def _io_signature(path: str) -> tuple[Any, Any]:
    from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

    s = OnnxRuntimeSession(path, threads=1)
    return ([(i.name, i.dtype) for i in s.inputs], [(o.name, o.dtype) for o in s.outputs])


def verify_stage(ctx: RunContext, base: dict[str, Any], model: dict[str, Any], data: dict[str, Any], label: str,
                 lossless: bool) -> dict[str, Any]:
    """Lossless recipes must match FP32 within tolerance; lossy ones must keep the I/O signature and produce finite
    outputs (their error is the accuracy stage's business), with the comparison recorded."""
    from accelserve.evaluate import run_model
    from accelserve.verify import verify

    strict = lossless and ctx.config.search.verify_lossless
    key = hash_dict({"stage": "verify", "model": model["key"], "base": base["key"], "calibration": data["calib_fp"],
                     "strict": strict, "versions": ctx.versions})

    def build(staging: Path) -> dict[str, Any]:
        feeds = data["calibration"].feeds()[:VERIFY_FEEDS]
        reference = run_model(base["path"], feeds)
        base_sig, sig = _io_signature(base["path"]), _io_signature(model["path"])
        problems = []
        if sig != base_sig:
            problems.append(f"inputs/outputs changed: {base_sig} -> {sig}")
        report = verify(model["path"], feeds, reference, precision=model.get("precision") or "fp32")
        outputs = run_model(model["path"], feeds)
        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for o in outputs for v in o.values()
                   if np.asarray(v).dtype.kind == "f"):
            problems.append("non-finite outputs")
        if strict and not report.passed:
            problems.append("outputs differ from FP32 beyond tolerance: " + report.table().splitlines()[-1])
        worst = max((c.max_abs_error for c in report.comparisons), default=0.0)
        return {"passed": not problems, "strict": strict, "problems": problems,
                "max_abs_error": float(worst), "within_tolerance": report.passed}

    return ctx.cached_stage("verify", key, build, candidate=label,
                            detail=lambda r: "ok" if r.get("passed") else f"FAILED {r.get('problems')}")


def accuracy_stage(ctx: RunContext, model: dict[str, Any], data: dict[str, Any], label: str) -> dict[str, Any]:
    from accelserve.evaluate import labelled_metric, run_model

    key = hash_dict({"stage": "accuracy", "model": model["key"], "evaluation": data["eval_fp"],
                     "versions": ctx.versions})

    def build(staging: Path) -> dict[str, Any]:
        outputs = run_model(model["path"], data["evaluation"].feeds())
        return {"metric": labelled_metric(outputs, data["labels"], ctx.config.data.metric)}

    return ctx.cached_stage("evaluate-accuracy", key, build, candidate=label,
                            detail=lambda r: f"metric {r['metric']:.4f}" if "metric" in r else r.get("failed", ""))


def timing_stage(ctx: RunContext, base: dict[str, Any], built: list[Outcome], data: dict[str, Any]) -> dict[str, Any]:
    """The evaluation harness on FP32 and every built candidate together: latency at batch_size timed interleaved,
    size, accuracy vs FP32 and on the labels."""
    from accelserve.evaluate import evaluate_models

    s = ctx.config.search
    key = hash_dict({"stage": "evaluate", "base": base["key"], "models": [(o.candidate.label, o.model_key) for o in built],
                     "evaluation": data["eval_fp"], "batch_size": s.batch_size, "threads": s.threads,
                     "seconds": s.timing_seconds, "versions": ctx.versions})

    def build(staging: Path) -> dict[str, Any]:
        report = evaluate_models(base["path"], [o.model_path for o in built], data["evaluation"],
                                 labels=data["labels"], metric=ctx.config.data.metric, batch_sizes=[s.batch_size],
                                 threads=s.threads, memory=False, names=[o.candidate.label for o in built],
                                 max_seconds=s.timing_seconds)
        (staging / "evaluation.md").write_text(report.markdown(), encoding="utf-8")
        return {"report": report.to_dict()}

    return ctx.cached_stage("evaluate-speed", key, build, detail=lambda r: f"{len(built) + 1} models timed together")


def loadtest_stage(ctx: RunContext, winner_path: str, winner_key: str) -> dict[str, Any]:
    """Serve the winner on the real tritonserver from a staged copy of the repository and load-test it."""
    from accelserve.loadtest.results import SweepSettings
    from accelserve.loadtest.runner import RequestOptions, run_loadtest
    from accelserve.triton.repository import add_model

    cfg = ctx.config
    lt = cfg.loadtest
    assert lt is not None
    r = cfg.repository
    # requests carry real samples: the calibration set (an .npz), so a new evaluation set re-runs evaluation only
    samples = path_part(cfg.data.calibration)
    data_file = str(cfg.path(samples)) if samples and samples.endswith(".npz") else None
    key = hash_dict({"stage": "loadtest", "model": winner_key, "requests": data_file and hash_file(data_file),
                     "repository": r.model_dump(mode="json"),
                     "loadtest": lt.model_dump(mode="json", exclude={"baseline", "slo", "max_regression",
                                                                     "max_error_rate", "cache"}),
                     "versions": {**ctx.versions, **package_versions(("nvidia-pytriton", "locust"))}})

    def build(staging: Path) -> dict[str, Any]:
        stage_repo = ctx.work_dir / "staged-repository"
        shutil.rmtree(stage_repo, ignore_errors=True)
        stage_repo.mkdir(parents=True)
        existing = cfg.path(r.path) / r.name
        if existing.is_dir():  # the model as it is now, so the new version is served with the merged config
            shutil.copytree(existing, stage_repo / r.name)
        try:
            added = add_model(winner_path, stage_repo, r.name, repo_options(cfg))
            settings = SweepSettings(mode="concurrency", levels=tuple(lt.concurrency), warmup_s=lt.warmup,
                                     fixed_duration_s=lt.duration)
            result = run_loadtest(str(stage_repo), r.name, settings, protocol=lt.protocol,
                                  request=RequestOptions(batch=lt.batch_size, data_file=data_file),
                                  work_dir=staging / "load")
        finally:
            shutil.rmtree(stage_repo, ignore_errors=True)
        return {"result": result.to_dict(), "served_version": added.version}

    if not lt.cache:
        ctx.memo.pop(key, None)
        enabled, ctx.cache.enabled = ctx.cache.enabled, False
        try:
            return ctx.cached_stage("loadtest", key, build, cache_failures=False, plain=True)
        finally:
            ctx.cache.enabled = enabled
    return ctx.cached_stage("loadtest", key, build, cache_failures=False, plain=True)


def repo_options(cfg: PipelineConfig) -> Any:
    from accelserve.triton.config import TritonModelOptions

    r = cfg.repository
    return TritonModelOptions(max_batch_size=r.max_batch_size, dynamic_batching=r.dynamic_batching,
                              instances=r.instances)
