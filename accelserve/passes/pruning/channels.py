"""``prune-channels``: structured channel pruning that physically removes output channels of Conv/Gemm/MatMul and
the matching input channels of every consumer, from the dependency analysis in
:mod:`accelserve.passes.pruning.dependency`; then least-squares reconstruction of the consumers
(:mod:`accelserve.passes.pruning.reconstruct`). Groups the analysis cannot prove safe stay as they are and are
reported with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
from pydantic import Field, field_validator

from accelserve.artifact import ModelArtifact
from accelserve.errors import InternalError, InvalidInputError, OptimizationError
from accelserve.passes.base import Pass, PassConfig, PassContext
from accelserve.passes.pruning import importance as imp
from accelserve.passes.pruning.data import BUDGET_HELP, Samples, Scorer, load_samples
from accelserve.passes.pruning.dependency import PruningPlan, analyze
from accelserve.passes.pruning.graph import GraphIndex, prepare, run, validate_and_save
from accelserve.passes.pruning.reconstruct import LayerFit, reconstruct
from accelserve.passes.pruning.schedule import budget_schedule
from accelserve.passes.pruning.surgery import emptied_tags, remove_channels, zero_consumer_inputs


def check_fraction(value: float, what: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}")
    return value


class ChannelPruningConfig(PassConfig):
    ratio: float = Field(0.5, description="fraction of the channels of each prunable group to remove, in [0, 1)")
    importance: Literal["l1", "l2", "activation"] = Field(
        "l2", description="channel score: weight L1/L2 norm, or activation energy into the consumers (needs data)")
    reconstruct: bool = Field(True, description="refit consumers by least squares on calibration data")
    round_to: int = Field(1, ge=1, description="keep a multiple of this many channels per group (e.g. 8)")
    nodes: list[str] = Field(default_factory=list, description="prune only the groups of these nodes (default all)")
    exclude_nodes: list[str] = Field(default_factory=list, description="never prune the groups of these nodes")
    node_ratios: dict[str, float] = Field(default_factory=dict, description="per-node ratio overrides")
    accuracy_budget: float | None = Field(None, ge=0.0, description="ratios then grow per group up to `ratio` while "
                                          "the error stays within this; " + BUDGET_HELP)
    labels: str | None = Field(None, description="labels (.npy/.npz) aligned with the calibration samples")
    metric: str | None = Field(None, description="MODULE:FN metric (outputs, labels) -> float; default top-1")
    max_samples: int = Field(512, ge=1, description="calibration samples used at most")
    max_rows: int = Field(20000, ge=16, description="rows per least-squares refit")
    ridge: float = Field(1e-3, ge=0.0, description="ridge regularization of the refit, relative to the mean energy")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        return check_fraction(v, "ratio")

    @field_validator("node_ratios")
    @classmethod
    def _node_ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for node, r in v.items():
            check_fraction(r, f"node_ratios['{node}']")
        return v


@dataclass
class PruneResult:
    model: onnx.ModelProto  #: the result (reconstructed when asked)
    plain: onnx.ModelProto  #: channels removed, before reconstruction
    choice: dict[int, list[int]]  #: group -> removed channel classes
    fits: list[LayerFit]


class ChannelPruner:
    """Analysis, scores and data for one model, so it can be pruned at many ratios (the schedule does that)."""

    def __init__(self, model: onnx.ModelProto, config: ChannelPruningConfig, samples: Samples) -> None:
        self.config = config
        self.model = model
        self.samples = samples
        index = GraphIndex(model)
        for option in ("nodes", "exclude_nodes"):
            index.check_node_names(getattr(config, option), option)
        index.check_node_names(config.node_ratios, "node_ratios")
        self.plan: PruningPlan = analyze(model, config.exclude_nodes)
        wanted = set(config.nodes)
        self.units = [g.index for g in self.plan.groups
                      if g.prunable and (not wanted or wanted & set(g.sources))]
        self.scores = imp.scores(model, self.plan, config.importance, samples.fit)
        self._class_of: dict[int, tuple[int, int]] = {}
        for g in self.plan.groups:
            for ci, ids in enumerate(g.channels):
                for i in ids.tolist():
                    self._class_of[i] = (g.index, ci)

    def group_ratio(self, gi: int) -> float:
        given = [self.config.node_ratios[s] for s in self.plan.groups[gi].sources if s in self.config.node_ratios]
        return max(given) if given else self.config.ratio

    def choose(self, ratios: dict[int, float]) -> dict[int, list[int]]:
        """Channel classes to remove per group: the lowest scores, keeping a multiple of ``round_to`` (and >= 1)."""
        choice: dict[int, list[int]] = {}
        for gi, ratio in ratios.items():
            n = self.plan.groups[gi].size
            keep = n - math.floor(ratio * n + 1e-9)
            keep = max(1, min(n, math.ceil(keep / self.config.round_to) * self.config.round_to))
            if keep < n:
                order = np.argsort(self.scores[gi], kind="stable")
                choice[gi] = sorted(order[: n - keep].tolist())
        # never empty a tensor (a Split part, a Concat input): give back its most important channel
        while True:
            removed = self.plan.removed_ids(choice)
            empty = emptied_tags(self.plan, removed)
            if not empty:
                return choice
            ids = empty[0][1].ids
            classes = {self._class_of[i] for i in ids[ids >= 0].tolist()}
            gi, ci = max(classes, key=lambda gc: self.scores[gc[0]][gc[1]])
            choice[gi].remove(ci)

    def prune(self, ratios: dict[int, float]) -> PruneResult:
        choice = self.choose(ratios)
        removed = self.plan.removed_ids(choice)
        plain = remove_channels(self.model, self.plan, removed)
        self.self_check(plain, removed)
        if not (self.config.reconstruct and removed.size):
            return PruneResult(plain, plain, choice, [])
        refit, fits = reconstruct(self.model, plain, self.plan, removed, self.samples.fit,
                                  ridge=self.config.ridge, max_rows=self.config.max_rows)
        return PruneResult(refit, plain, choice, fits)

    def self_check(self, pruned: onnx.ModelProto, removed: np.ndarray) -> None:
        """The pruned model must compute exactly what the original computes with the removed channels' outgoing
        weights zeroed; anything else is a bug in the analysis or the surgery."""
        if not removed.size:
            return
        batches = self.samples.held_out[:2]
        want = run(zero_consumer_inputs(self.model, self.plan, removed), batches)
        got = run(pruned, batches)
        for name, ref in want.items():
            scale = float(np.abs(ref).max()) if ref.size else 0.0
            if got[name].shape != ref.shape or not np.allclose(got[name], ref, rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
                err = float(np.abs(got[name] - ref).max()) if got[name].shape == ref.shape else float("inf")
                raise InternalError(
                    f"channel removal changed output '{name}' beyond removing the channels (max error {err:.3g})")


def _default_ratios(pruner: ChannelPruner) -> dict[int, float]:
    return {gi: pruner.group_ratio(gi) for gi in pruner.units}


class ChannelPruning(Pass[ChannelPruningConfig]):
    """Remove output channels (and the matching consumer inputs) of Conv/Gemm/MatMul layers."""

    name = "prune-channels"
    config_class = ChannelPruningConfig
    search_space: ClassVar[dict[str, list[Any]]] = {"ratio": [0.25, 0.5, 0.75], "importance": ["l2", "activation"]}

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        cfg = self.config
        source = prepare(model.load())
        need = None
        if cfg.reconstruct:
            need = "prune-channels with reconstruction (reconstruct=true)"
        if cfg.importance == "activation":
            need = "prune-channels with importance=activation"
        if cfg.accuracy_budget is not None:
            need = "prune-channels with accuracy_budget"
        try:
            samples = load_samples(source, context.calibration, need=need, max_samples=cfg.max_samples,
                                   labels=cfg.labels)
        except InvalidInputError as exc:
            if exc.hint and need and "reconstruct" in need:
                exc.hint += ", or --set reconstruct=false to prune without refitting"
            raise
        pruner = ChannelPruner(source, cfg, samples)
        if not pruner.units:
            among = f" among {', '.join(cfg.nodes)}" if cfg.nodes else ""
            kept = "; ".join(f"{', '.join(g.sources)}: {'; '.join(g.describe()['reasons'])}"  # type: ignore[arg-type]
                             for g in pruner.plan.groups if not cfg.nodes or set(cfg.nodes) & set(g.sources))
            raise OptimizationError(
                f"prune-channels found no channel group it can prune{among}"
                f": {kept or 'the model has no Conv/Gemm/MatMul with constant weights'}",
                hint="groups that reach a graph output, or pass through operators the analysis does not handle, stay "
                     "as they are; see docs (README: Pruning) for the patterns handled")
        scorer = Scorer(source, samples, cfg.metric)
        schedule = None
        if cfg.accuracy_budget is not None and pruner.units:
            steps = [cfg.ratio * k / 4 for k in range(1, 5)]
            schedule = budget_schedule(
                pruner.units, steps, lambda levels: pruner.prune(levels).model, scorer.error,
                cfg.accuracy_budget, context.log.append)
            ratios = dict(schedule.levels)
        else:
            ratios = _default_ratios(pruner)
        result = pruner.prune(ratios)
        checked = validate_and_save(result.model, source, output, what="prune-channels")
        report = self._report(source, checked, pruner, ratios, result, scorer)
        if schedule is not None:
            report["schedule"] = schedule.to_dict()
        context.report.update(report)
        context.log.extend(self._log(report, pruner, scorer))
        return model.derive(output, self.name, metadata={"prune-channels": {
            "groups_pruned": report["groups_pruned"], "parameters": report["parameters"]}})

    @staticmethod
    def _report(source: onnx.ModelProto, pruned: onnx.ModelProto, pruner: ChannelPruner, ratios: dict[int, float],
                result: PruneResult, scorer: Scorer) -> dict[str, Any]:
        from accelserve.evaluate.size import count_parameters

        groups = []
        for g in pruner.plan.groups:
            entry = g.describe()
            entry["removed"] = len(result.choice.get(g.index, []))
            entry["ratio"] = ratios.get(g.index, 0.0)
            groups.append(entry)
        held: dict[str, Any] = {"base": scorer.compare(pruner.model), "pruned": scorer.compare(pruned)}
        if result.fits:
            held["pruned_without_reconstruction"] = scorer.compare(result.plain)
        return {
            "groups": groups,
            "groups_pruned": sum(1 for g in groups if g["removed"]),
            "groups_kept": [{"group": g["group"], "sources": g["sources"], "reasons": g["reasons"]}
                            for g in groups if not g["prunable"]],
            "parameters": {"before": count_parameters(source)[0], "after": count_parameters(pruned)[0]},
            "flops_per_sample": {"before": pruner.samples.flops(source), "after": pruner.samples.flops(pruned)},
            "reconstruction": [f.to_dict() for f in result.fits],
            "held_out": {**held, "error_unit": scorer.error_kind, **pruner.samples.describe()},
            "importance": pruner.config.importance,
        }

    @staticmethod
    def _log(report: dict[str, Any], pruner: ChannelPruner, scorer: Scorer) -> list[str]:
        p, f = report["parameters"], report["flops_per_sample"]
        lines = [(
            f"pruned {report['groups_pruned']} of {len(report['groups'])} channel groups "
            f"(importance {report['importance']}): parameters {p['before']:,} -> {p['after']:,}, "
            f"FLOPs/sample {f['before']:,} -> {f['after']:,}"
        )]
        for g in report["groups_kept"]:
            lines.append(f"kept group {g['group']} ({', '.join(g['sources'])}): {'; '.join(g['reasons'])}")
        held = report["held_out"]
        if "pruned_without_reconstruction" in held:
            lines.append("before reconstruction: " + scorer.describe_line(held["base"],
                                                                          held["pruned_without_reconstruction"]))
        lines.append(scorer.describe_line(held["base"], held["pruned"]))
        return lines
