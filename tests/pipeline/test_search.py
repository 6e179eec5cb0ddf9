"""Candidate generation from the passes' declared search spaces, early stop, ranking, Pareto front."""

from __future__ import annotations

from accelserve.pipeline.config import SearchSection
from accelserve.pipeline.search import (
    Candidate,
    Outcome,
    auto_level1,
    dominated_by_failure,
    pareto_front,
    parse_recipe_text,
    rank,
    space_points,
    stacked,
)


def test_space_points_follow_the_declared_search_space_least_aggressive_first() -> None:
    axes = space_points("prune-channels", SearchSection())
    # ChannelPruning.search_space = {ratio: [0.25, 0.5, 0.75], importance: [l2, activation]}; defaults collapse
    assert axes == [{"ratio": 0.25}, {}, {"importance": "activation"}, {"ratio": 0.75}]
    product = space_points("prune-channels", SearchSection(sweep="product"))
    assert len(product) == 6 and product[0]["ratio"] == 0.25
    # lowrank's ratio and energy exclude each other: the product's points are all invalid and dropped, the axes not
    assert space_points("lowrank", SearchSection(sweep="product")) == []
    assert {"energy": 0.9} in space_points("lowrank", SearchSection())
    assert space_points("int8", SearchSection(space={"int8": {"method": ["entropy"]}})) == [{"method": "entropy"}]


def test_auto_starts_with_simplify_and_builds_on_it() -> None:
    cands = auto_level1(SearchSection(passes=["int8", "fp16"], space={"int8": {"per_channel": [True, False]}}))
    assert [c.label for c in cands] == ["simplify", "simplify,int8", "simplify,int8(per_channel=false)", "simplify,fp16"]
    assert all(c.parent == "simplify" for c in cands[1:])


def test_a_more_aggressive_variant_of_a_failed_one_is_skipped() -> None:
    failed = parse_recipe_text("simplify,prune-channels(ratio=0.25)")
    assert dominated_by_failure(parse_recipe_text("simplify,prune-channels(ratio=0.5)"), [failed]) is failed
    assert dominated_by_failure(parse_recipe_text("simplify,prune-channels"), [failed]) is failed  # default 0.5
    assert dominated_by_failure(parse_recipe_text("simplify,prune-channels(ratio=0.25,importance=activation)"),
                                [failed]) is None  # another importance is another branch
    assert dominated_by_failure(parse_recipe_text("simplify,lowrank(ratio=0.5)"), [failed]) is None


def _outcome(label: str, origin: str, metric: float, throughput: float, ok: bool, parent: str | None = None) -> Outcome:
    cand = parse_recipe_text(label)
    cand = Candidate(cand.steps, origin=origin, parent=parent)
    return Outcome(cand, status="built", metric=metric, accuracy_drop=100 * (0.99 - metric), throughput=throughput,
                   constraints={"accuracy": {"passed": ok, "detail": ""}})


def test_stacking_uses_qualifying_structural_candidates_and_the_most_accurate_quantization() -> None:
    outs = [
        _outcome("simplify,int8", "auto", 0.985, 300, True, "simplify"),
        _outcome("simplify,int8(method=percentile)", "auto", 0.988, 290, True, "simplify"),
        _outcome("simplify,prune-channels(ratio=0.25)", "auto", 0.984, 200, True, "simplify"),
        _outcome("simplify,prune-channels", "auto", 0.95, 400, False, "simplify"),
    ]
    new = stacked(outs, SearchSection(passes=["int8", "prune-channels"]))
    assert [c.label for c in new] == ["simplify,prune-channels(ratio=0.25),int8(method=percentile)"]
    assert new[0].parent == "simplify,prune-channels(ratio=0.25)" and new[0].origin == "stacked"
    assert stacked(outs, SearchSection(stack=False)) == []
    # ranking: qualifying only, best objective first
    assert [o.candidate.label for o in rank(outs, "throughput")][:2] == ["simplify,int8",
                                                                         "simplify,int8(method=percentile)"]


def test_pareto_front() -> None:
    # (speedup, drop): (2, 1) and (1.5, 0) are on the front; (1.2, 0.5) is dominated by (1.5, 0)
    assert pareto_front([(2.0, 1.0), (1.5, 0.0), (1.2, 0.5), (2.0, 1.0)]) == [0, 1, 3]
