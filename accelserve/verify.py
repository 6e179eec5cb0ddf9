"""Numerical verification: run an ONNX model under ONNX Runtime and compare with a reference.

Per output: max absolute error, max relative error, cosine similarity, and the fraction of elements outside
``atol + rtol * |reference|``. Tolerances depend on precision; FP16 and INT8 defaults are deliberately looser
than FP32 (too-tight FP16 defaults are the commonest complaint about such checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError, VerificationError

Feeds = dict[str, np.ndarray]
Reference = Callable[[Feeds], Mapping[str, np.ndarray] | Sequence[np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """An output passes when cosine >= ``min_cosine`` and, if ``atol`` is set, every element is within
    ``atol + rtol * |reference|``. ``atol=None`` skips the element-wise check (INT8: only cosine is meaningful)."""

    atol: float | None
    rtol: float
    min_cosine: float


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999),
    "tf32": Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.9999),
    "fp16": Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999),
    "bf16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.995),
    "int8": Tolerance(atol=None, rtol=0.0, min_cosine=0.99),
}


def tolerance_for(precision: str, atol: float | None = None, rtol: float | None = None,
                  min_cosine: float | None = None) -> Tolerance:
    try:
        base = DEFAULT_TOLERANCES[precision.lower()]
    except KeyError:
        raise InvalidInputError(
            f"unknown precision '{precision}'", hint=f"use one of: {', '.join(DEFAULT_TOLERANCES)}"
        ) from None
    return Tolerance(
        atol=base.atol if atol is None else atol,
        rtol=base.rtol if rtol is None else rtol,
        min_cosine=base.min_cosine if min_cosine is None else min_cosine,
    )


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    cosine: float
    mismatch_fraction: float
    passed: bool
    sample: int = 0


@dataclass
class VerificationReport:
    model: str
    precision: str
    tolerance: Tolerance
    comparisons: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def worst(self) -> list[OutputComparison]:
        """One row per output: the worst sample by cosine, then max abs error."""
        by_name: dict[str, OutputComparison] = {}
        for c in self.comparisons:
            cur = by_name.get(c.name)
            if cur is None or (c.passed, c.cosine, -c.max_abs_error) < (cur.passed, cur.cosine, -cur.max_abs_error):
                by_name[c.name] = c
        return list(by_name.values())

    def table(self) -> str:
        tol = self.tolerance
        head = (
            f"verification of {self.model} ({self.precision}: atol={tol.atol if tol.atol is not None else '-'} "
            f"rtol={tol.rtol} min_cosine={tol.min_cosine}; {len({c.sample for c in self.comparisons})} input set(s))"
        )
        rows = [("output", "shape", "max_abs_err", "max_rel_err", "cosine", "mismatch", "result")]
        for c in self.worst():
            rows.append((
                c.name, "x".join(map(str, c.shape)) or "scalar", f"{c.max_abs_error:.3e}", f"{c.max_rel_error:.3e}",
                f"{c.cosine:.6f}", f"{100 * c.mismatch_fraction:.2f}%", "PASS" if c.passed else f"FAIL (input set {c.sample})",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "tolerance": asdict(self.tolerance),
            "passed": self.passed,
            "outputs": [asdict(c) for c in self.worst()],
        }

    def raise_if_failed(self) -> "VerificationReport":
        if not self.passed:
            raise VerificationError(
                "outputs are out of tolerance:\n" + self.table(),
                hint="inspect the export, or loosen tolerances with --atol/--rtol/--min-cosine if this is expected",
            )
        return self


def compare_arrays(name: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance, sample: int = 0) -> OutputComparison:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return OutputComparison(name, tuple(actual.shape), float("inf"), float("inf"), 0.0, 1.0, False, sample)
    if not np.issubdtype(expected.dtype, np.number) and expected.dtype != np.bool_:
        equal = bool(np.array_equal(actual, expected))
        return OutputComparison(name, tuple(actual.shape), 0.0 if equal else 1.0, 0.0, 1.0 if equal else 0.0,
                                0.0 if equal else 1.0, equal, sample)
    a = actual.astype(np.float64).ravel()
    e = expected.astype(np.float64).ravel()
    if a.size == 0:
        return OutputComparison(name, tuple(actual.shape), 0.0, 0.0, 1.0, 0.0, True, sample)
    finite = np.isfinite(a) & np.isfinite(e)
    same_nonfinite = bool(np.all((np.isfinite(a) == np.isfinite(e)) & (finite | (a == e) | (np.isnan(a) & np.isnan(e)))))
    diff = np.abs(a[finite] - e[finite])
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(e[finite]), 1e-12)
    max_rel = float(rel.max()) if rel.size else 0.0
    na, ne = np.linalg.norm(a[finite]), np.linalg.norm(e[finite])
    if na == 0 and ne == 0:
        cosine = 1.0
    elif na == 0 or ne == 0:
        cosine = 1.0 if max_abs <= (tol.atol or 0.0) else 0.0
    else:
        cosine = float(np.dot(a[finite], e[finite]) / (na * ne))
    if tol.atol is not None:
        bad = diff > tol.atol + tol.rtol * np.abs(e[finite])
        mismatch = float(bad.mean()) if bad.size else 0.0
        elementwise_ok = not bad.any()
    else:
        mismatch, elementwise_ok = 0.0, True
    passed = same_nonfinite and elementwise_ok and cosine >= tol.min_cosine
    return OutputComparison(name, tuple(actual.shape), max_abs, max_rel, cosine, mismatch, passed, sample)


def _as_named(outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(outputs, Mapping):
        return {k: np.asarray(v) for k, v in outputs.items()}
    values = [outputs] if isinstance(outputs, np.ndarray) else list(outputs)
    if len(values) != len(names):
        raise InvalidInputError(f"the reference returned {len(values)} outputs, the ONNX model has {len(names)}: {names}")
    return {n: np.asarray(v) for n, v in zip(names, values)}


def verify(
    model_path: str | Path,
    feeds: Sequence[Feeds],
    reference: Reference | Sequence[Mapping[str, np.ndarray]],
    *,
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
    threads: int | None = None,
    runtime: str = "onnxruntime",
) -> VerificationReport:
    """Compare the outputs of ``model_path`` run by ``runtime`` (a plugin of the ``accelserve.runtimes`` group:
    ``onnxruntime`` on the CPU by default; ``onnxruntime-cuda``, ``onnxruntime-tensorrt``, ``tensorrt`` on a GPU) on
    each feed with the reference.

    ``reference`` is a callable (e.g. the source framework's forward) returning outputs by name or in ONNX output
    order, or a list of expected output dicts, one per feed. Returns the report; call ``raise_if_failed()``
    to turn a failure into a :class:`VerificationError`.
    """
    from accelserve import plugins

    if not feeds:
        raise InvalidInputError("verification needs at least one input set")
    tol = tolerance or tolerance_for(precision)
    runtime_cls = plugins.load("runtimes", runtime)
    session = (runtime_cls() if isinstance(runtime_cls, type) else runtime_cls).load(model_path, threads=threads)
    names = [o.name for o in session.outputs]
    report = VerificationReport(model=str(model_path), precision=precision, tolerance=tol)
    for i, feed in enumerate(feeds):
        actual = session.run(dict(feed))
        expected_raw = reference(dict(feed)) if callable(reference) else reference[i]
        expected = _as_named(expected_raw, names)
        for name in names:
            if name not in expected:
                raise InvalidInputError(
                    f"the reference has no output '{name}' (it has {sorted(expected)})",
                    hint="pass output names that match the ONNX model's outputs",
                )
            report.comparisons.append(compare_arrays(name, actual[name], expected[name], tol, sample=i))
    return report
