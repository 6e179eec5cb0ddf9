"""The serving-config search space: candidates, how one is written into a model config, and the two generators.

A :class:`Candidate` is one point: instance count, ONNX Runtime intra-op threads per instance (the backend
parameter ``intra_op_thread_count``, which the local stand-in reads too), ``max_batch_size``, dynamic batching
on/off, its preferred batch sizes and ``max_queue_delay_microseconds``. :func:`apply_candidate` writes it into a
copy of the model's config; everything else in the config is kept.

* ``brute``: the cross product of the axes' values (:func:`brute_candidates`), deduplicated (with dynamic
  batching off, its preferred sizes and delay do not matter).
* ``quick``: hill climbing over the axes' value indexes (:class:`HillClimb`), from the default config: measure
  the neighbours one index step away along each axis in turn, move to the first that beats home, stop when none
  does (or a home repeats). Model Analyzer's quick mode is the model (it weights a radius-3 neighbourhood); this is
  the simpler coordinate, first-improvement form, which measures fewer configs per move.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

#: the ONNX Runtime backend's parameter for intra-op threads (read by the stand-in as well)
INTRA_OP_PARAMETER = "intra_op_thread_count"


@dataclass(frozen=True)
class Candidate:
    instances: int
    threads: int | None  # None: leave the config's setting (the backend default)
    max_batch_size: int
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def normalized(self) -> Candidate:
        """The same serving behaviour, one spelling: batching settings cleared where they do not apply."""
        if self.max_batch_size == 0 or not self.dynamic_batching:
            return replace(self, dynamic_batching=False if self.max_batch_size == 0 else self.dynamic_batching,
                           preferred_batch_sizes=(), max_queue_delay_us=0)
        preferred = tuple(sorted({b for b in self.preferred_batch_sizes if b <= self.max_batch_size}))
        return replace(self, preferred_batch_sizes=preferred)

    def label(self) -> str:
        parts = [f"inst={self.instances}", f"thr={self.threads if self.threads is not None else 'default'}",
                 f"mbs={self.max_batch_size}"]
        if self.dynamic_batching:
            pref = ",".join(map(str, self.preferred_batch_sizes)) or "-"
            parts.append(f"db=on pref={pref} delay={self.max_queue_delay_us}us")
        else:
            parts.append("db=off")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return out


def candidate_of(config: mc.ModelConfig) -> Candidate:
    """The candidate a model config already is (its default point)."""
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    threads = None
    if INTRA_OP_PARAMETER in config.parameters:
        try:
            threads = int(config.parameters[INTRA_OP_PARAMETER].string_value)
        except ValueError:
            threads = None
    db = config.HasField("dynamic_batching")
    return Candidate(
        instances=instances, threads=threads, max_batch_size=int(config.max_batch_size), dynamic_batching=db,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size) if db else (),
        max_queue_delay_us=int(config.dynamic_batching.max_queue_delay_microseconds) if db else 0,
    ).normalized()


def apply_candidate(config: mc.ModelConfig, candidate: Candidate) -> mc.ModelConfig:
    """A copy of ``config`` set to ``candidate`` (one instance group of the first group's kind; the rest kept)."""
    new = mc.ModelConfig()
    new.CopyFrom(config)
    kind = config.instance_group[0].kind if config.instance_group else mc.ModelInstanceGroup.KIND_CPU
    del new.instance_group[:]
    group = new.instance_group.add(count=candidate.instances, kind=kind)
    if kind == mc.ModelInstanceGroup.KIND_GPU and config.instance_group and config.instance_group[0].gpus:
        group.gpus.extend(config.instance_group[0].gpus)
    if candidate.threads is not None:
        new.parameters[INTRA_OP_PARAMETER].string_value = str(candidate.threads)
    new.max_batch_size = candidate.max_batch_size
    if candidate.dynamic_batching and candidate.max_batch_size > 0:
        kept = mc.ModelDynamicBatching()
        kept.CopyFrom(config.dynamic_batching)
        new.dynamic_batching.CopyFrom(kept)
        del new.dynamic_batching.preferred_batch_size[:]
        new.dynamic_batching.preferred_batch_size.extend(candidate.preferred_batch_sizes)
        new.dynamic_batching.max_queue_delay_microseconds = candidate.max_queue_delay_us
    else:
        new.ClearField("dynamic_batching")
    return new


@dataclass(frozen=True)
class SearchSpace:
    """The values of each axis (each non-empty; a one-value axis is fixed)."""

    instances: tuple[int, ...]
    threads: tuple[int | None, ...]
    max_batch_sizes: tuple[int, ...]
    dynamic_batching: tuple[bool, ...]
    preferred_batch_sizes: tuple[tuple[int, ...], ...]
    max_queue_delays_us: tuple[int, ...]

    AXES = ("instances", "threads", "max_batch_sizes", "dynamic_batching", "preferred_batch_sizes",
            "max_queue_delays_us")

    def axis_values(self) -> list[tuple[Any, ...]]:
        return [tuple(getattr(self, a)) for a in self.AXES]

    def at(self, index: Sequence[int]) -> Candidate:
        v = [values[i] for values, i in zip(self.axis_values(), index, strict=True)]
        return Candidate(instances=v[0], threads=v[1], max_batch_size=v[2], dynamic_batching=v[3],
                         preferred_batch_sizes=tuple(v[4]), max_queue_delay_us=v[5]).normalized()

    def size(self) -> int:
        return len({c for c in brute_candidates(self)})

    def nearest_index(self, candidate: Candidate) -> tuple[int, ...]:
        """The grid point closest to ``candidate`` (per axis: equal value, else the nearest numeric one)."""
        target = [candidate.instances, candidate.threads, candidate.max_batch_size, candidate.dynamic_batching,
                  candidate.preferred_batch_sizes, candidate.max_queue_delay_us]
        index = []
        for values, want in zip(self.axis_values(), target, strict=True):
            if want in values:
                index.append(values.index(want))
            elif isinstance(want, (int, float)) and not isinstance(want, bool) and all(
                isinstance(v, int) for v in values
            ):
                index.append(min(range(len(values)), key=lambda i: abs(values[i] - want)))
            else:
                index.append(0)
        return tuple(index)


def brute_candidates(space: SearchSpace) -> Iterator[Candidate]:
    """Every distinct candidate of the cross product, in axis order."""
    seen: set[Candidate] = set()
    for index in itertools.product(*(range(len(v)) for v in space.axis_values())):
        candidate = space.at(index)
        if candidate not in seen:
            seen.add(candidate)
            yield candidate


class HillClimb:
    """Coordinate hill climbing over the space's indexes (first improvement). Use: ``home = hc.start(i0)``; take
    ``hc.neighbours()`` one by one, measuring each, and ``hc.move(index)`` to the first that beats home, then take
    the new home's neighbours; the climb ends when no neighbour beats home (or a move would revisit a home)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.sizes = [len(v) for v in space.axis_values()]
        self.home: tuple[int, ...] = tuple(0 for _ in self.sizes)
        self.visited_homes: list[tuple[int, ...]] = []

    def start(self, index: tuple[int, ...]) -> Candidate:
        self.home = index
        self.visited_homes = [index]
        return self.space.at(index)

    def neighbours(self) -> list[tuple[tuple[int, ...], Candidate]]:
        """Grid points one index step from home along one axis, whose candidate differs from home's."""
        home_candidate = self.space.at(self.home)
        out, seen = [], {home_candidate}
        for axis, size in enumerate(self.sizes):
            for delta in (-1, 1):
                i = self.home[axis] + delta
                if 0 <= i < size:
                    index = self.home[:axis] + (i,) + self.home[axis + 1:]
                    candidate = self.space.at(index)
                    if candidate not in seen:
                        seen.add(candidate)
                        out.append((index, candidate))
        return out

    def move(self, index: tuple[int, ...]) -> bool:
        """Make ``index`` the new home; False (and no move) when it was home before (a cycle: the climb ends)."""
        if index in self.visited_homes:
            return False
        self.home = index
        self.visited_homes.append(index)
        return True
