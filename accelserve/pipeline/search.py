"""Candidates: recipes parsed from the config, or built from the passes' declared ``search_space`` (``auto``).

``auto`` works pass by pass (Olive's ``pass-by-pass`` order): ``simplify`` first, then each searched pass on top
of it, one variant per point of its search space; then, with ``stack``, every *structural* variant (pruning,
low-rank) that met the accuracy budget followed by the most accurate qualifying variant of each quantization pass.
Early stop: a branch whose accuracy already fails grows no children, and a variant that is only more aggressive
(a larger ``ratio``/``sparsity``) than a failed one is skipped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from accelserve.errors import AccelserveError, InvalidInputError

#: passes that change precision, not structure; stacked last
QUANTIZERS = ("int8", "int8-dynamic", "fp16")
#: passes whose output should match the input within float tolerance
LOSSLESS = ("simplify",)
#: search-space keys where a larger value is more aggressive (a failure at v skips the values above v)
MONOTONE_KEYS = ("ratio", "sparsity")


@dataclass(frozen=True)
class Step:
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options) + ")"

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class Candidate:
    steps: tuple[Step, ...]
    origin: str = "config"  #: config | auto | stacked
    parent: str | None = None  #: label of the candidate this one extends (auto)

    @property
    def label(self) -> str:
        return ",".join(s.label for s in self.steps) or "fp32"

    @property
    def lossless(self) -> bool:
        return all(s.name in LOSSLESS for s in self.steps)


@dataclass
class Outcome:
    """What happened to one candidate (filled in by the runner)."""

    candidate: Candidate
    status: str = "pending"  #: pending | built | failed | skipped | not-tried
    reason: str = ""
    model_path: str | None = None
    model_key: str | None = None
    precision: str = "fp32"
    size_bytes: int | None = None
    verification: dict[str, Any] | None = None
    metric: float | None = None
    accuracy_drop: float | None = None  #: points (100 x metric drop)
    latency_ms: float | None = None  #: p50 at batch_size
    throughput: float | None = None  #: samples/s at batch_size
    speedup: float | None = None  #: objective vs FP32 (>1 better)
    constraints: dict[str, dict[str, Any]] = field(default_factory=dict)  #: name -> {passed, detail}
    seconds: float = 0.0

    @property
    def qualifies(self) -> bool:
        return self.status == "built" and bool(self.constraints) and all(c["passed"] for c in self.constraints.values())

    def missed(self) -> str:
        if self.status != "built":
            return f"{self.status}: {self.reason}"
        bad = [f"{n} ({c['detail']})" for n, c in self.constraints.items() if not c["passed"]]
        return "; ".join(bad) or "-"

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.candidate.label,
            "steps": [{"pass": s.name, "options": s.option_dict()} for s in self.candidate.steps],
            "origin": self.candidate.origin,
            "parent": self.candidate.parent,
            "status": self.status,
            "reason": self.reason,
            "model": self.model_path,
            "model_key": self.model_key,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "verification": self.verification,
            "metric": self.metric,
            "accuracy_drop_points": self.accuracy_drop,
            "latency_p50_ms": self.latency_ms,
            "throughput": self.throughput,
            "speedup": self.speedup,
            "constraints": self.constraints,
            "verdict": "pass" if self.qualifies else "fail",
            "seconds": round(self.seconds, 3),
        }


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_STEP = re.compile(r"^\s*([A-Za-z0-9_\-:.]+)\s*(?:\((.*)\))?\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_step(text: str) -> Step:
    m = _STEP.match(text)
    if not m:
        raise InvalidInputError(f"'{text}' is not PASS or PASS(key=value,...)")
    opts: dict[str, Any] = {}
    for item in _split_top(m.group(2) or ""):
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInputError(f"'{text}': option '{item}' is not key=value")
        opts[key.strip().replace("-", "_")] = _value(raw.strip())
    return make_step(m.group(1), opts)


def make_step(name: str, options: dict[str, Any]) -> Step:
    """A step whose pass exists and whose options its typed config accepts (checked here, before any work)."""
    import difflib

    from accelserve import plugins
    from accelserve.optimize import load_pass_class

    known = plugins.names("passes")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        raise InvalidInputError(f"no pass named '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                                + f"; passes: {', '.join(sorted(known))}")
    cls = load_pass_class(name)
    cls.make_config(options)
    return Step(name, tuple(sorted(options.items())))


def parse_recipe_text(text: str) -> Candidate:
    steps = tuple(parse_step(p) for p in _split_top(text))
    if not steps:
        raise InvalidInputError("empty recipe")
    return Candidate(steps, origin="config")


def parse_candidates(search: Any) -> list[Candidate]:
    """Explicit recipes, or the first level of ``auto`` (the rest grows from results). Raises for bad recipes."""
    if search.candidates == "auto":
        return auto_level1(search)
    out, problems = [], []
    for text in search.candidates:
        try:
            out.append(parse_recipe_text(text))
        except AccelserveError as exc:
            problems.append(f"'{text}': {exc.message}")
    if problems:
        raise InvalidInputError("; ".join(problems))
    if not out:
        raise InvalidInputError("no candidates: give recipes or `auto`")
    return out


def space_points(name: str, search: Any) -> list[dict[str, Any]]:
    """The points of a pass's search space (config override, else the declared ``search_space``). Points the
    pass's typed config rejects (e.g. lowrank's ratio together with energy) are dropped, as Olive drops invalid
    conditional points."""
    from accelserve.optimize import load_pass_class

    cls = load_pass_class(name)
    space = search.space.get(name, cls.search_space)
    for key in space:
        if key not in cls.config_class.model_fields:
            raise InvalidInputError(f"search.space.{name}: '{key}' is not an option of pass '{name}'")
    if not space:
        return [{}]
    if search.sweep == "product":
        keys = list(space)
        raw = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    else:
        defaults = cls.config_class()
        raw = []
        for key, values in space.items():
            for v in values:
                raw.append({} if getattr(defaults, key) == v else {key: v})
    points: list[dict[str, Any]] = []
    for p in raw:
        try:
            cls.make_config(p)
        except InvalidInputError:
            continue
        if p not in points:
            points.append(p)
    # least aggressive first, so early stop can skip the rest
    defaults = cls.config_class()

    def level(p: dict[str, Any], k: str) -> float:
        v = p.get(k, getattr(defaults, k, None))
        if k == "ratio" and v is None:
            v = getattr(defaults, "effective_ratio", 0.0)
        return float(v) if isinstance(v, (int, float)) else 0.0

    return sorted(points, key=lambda p: tuple(level(p, k) for k in MONOTONE_KEYS))


def auto_level1(search: Any) -> list[Candidate]:
    simplify = make_step("simplify", {})
    out = [Candidate((simplify,), origin="auto")]
    for name in search.passes:
        if name == "simplify":
            continue
        for point in space_points(name, search):
            out.append(Candidate((simplify, make_step(name, point)), origin="auto", parent="simplify"))
    return out


def dominated_by_failure(cand: Candidate, failed: list[Candidate]) -> Candidate | None:
    """A failed candidate that differs from ``cand`` only by a smaller monotone key in its last step."""
    last = cand.steps[-1]
    mine = last.option_dict()
    for f in failed:
        if f.steps[:-1] != cand.steps[:-1] or f.steps[-1].name != last.name:
            continue
        theirs = f.steps[-1].option_dict()
        others_equal = all(mine.get(k) == theirs.get(k) for k in set(mine) | set(theirs) if k not in MONOTONE_KEYS)
        bigger = [k for k in MONOTONE_KEYS if k in mine or k in theirs]
        if others_equal and bigger and all(_num(mine.get(k)) >= _num(theirs.get(k)) for k in bigger) \
                and any(_num(mine.get(k)) > _num(theirs.get(k)) for k in bigger):
            return f
    return None


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.5  # a pass's default ratio


def stacked(outcomes: list[Outcome], search: Any) -> list[Candidate]:
    """Level 2 of ``auto``: each qualifying structural variant followed by each quantization pass's most accurate
    qualifying variant."""
    if not search.stack:
        return []
    level1 = [o for o in outcomes if o.candidate.origin == "auto" and len(o.candidate.steps) == 2]
    structural = [o for o in level1 if o.candidate.steps[-1].name not in QUANTIZERS and o.qualifies]
    best_quant: dict[str, Outcome] = {}
    for o in level1:
        name = o.candidate.steps[-1].name
        if name in QUANTIZERS and o.qualifies:
            cur = best_quant.get(name)
            if cur is None or (o.metric or 0) > (cur.metric or 0):
                best_quant[name] = o
    out = []
    for s in structural:
        for q in best_quant.values():
            out.append(Candidate(s.candidate.steps + (q.candidate.steps[-1],), origin="stacked",
                                 parent=s.candidate.label))
    return out


# --------------------------------------------------------------------------------------------------------------
# Ranking


def objective_value(o: Outcome, objective: str) -> float | None:
    """Higher is better: throughput, or minus latency."""
    if objective == "throughput":
        return o.throughput
    return -o.latency_ms if o.latency_ms is not None else None


def rank(outcomes: list[Outcome], objective: str) -> list[Outcome]:
    """Qualifying candidates, best first (ties: the smaller accuracy drop, then the shorter recipe)."""
    ok = [o for o in outcomes if o.qualifies and objective_value(o, objective) is not None]
    return sorted(ok, key=lambda o: (-(objective_value(o, objective) or 0.0), o.accuracy_drop or 0.0,
                                     len(o.candidate.steps)))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (speed: higher better, accuracy drop: lower better) no other point dominates."""
    front = []
    for i, (s, d) in enumerate(points):
        dominated = any((s2 >= s and d2 <= d) and (s2 > s or d2 < d) for j, (s2, d2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
